// Train-mode 2-d batch normalisation of contiguous (n, c, hw) f32 inputs, as circulant-model's
// CPU ops, with the statistics kept on the device as a (2, c) buffer [mean; biased var]:
//
//   stats     bn_partial_sums (STATS) + bn_finish_stats
//   forward   y = (x - mean) * gamma / sqrt(var + eps) + beta                     (bn_forward)
//   backward  dbeta = sum dy, dgamma = sum dy * xhat, xhat = (x - mean) / sqrt(var + eps),
//             dx = gamma / sqrt(var + eps) * (dy - dbeta / M - xhat * dgamma / M), M = n * hw
//             bn_partial_sums (GRAD) + bn_finish_grads + bn_backward_dx
//
// Per-channel sums: a grid of (c, splits) blocks, each reducing a fixed slice of the channel's
// M values (f32 per thread, f64 across the block in a fixed tree), then one thread per channel
// adds the splits in order. Deterministic. The statistics are shifted by the channel's first
// value for a stable one-pass variance, as on the CPU.
//
// Compiled to PTX by kernels-cuda/build.rs; loaded through candle's get_or_load_custom_func.

#include <stddef.h>

constexpr int BN_THREADS = 256;

namespace {

// partial[(ch * splits + split) * 2 + {0, 1}] = this block's (s1, s2) over its slice:
// STATS (b unused): s1 = sum (a - shift), s2 = sum (a - shift)^2, shift = a[ch * hw];
// GRAD (a = dy, b = x): s1 = sum a, s2 = sum a * (b - mean[ch]).
template <bool GRAD>
__device__ void partial_sums(const float *a, const float *b, const float *mean, double *partial,
                             unsigned n, unsigned c, unsigned hw) {
  __shared__ double sh1[BN_THREADS];
  __shared__ double sh2[BN_THREADS];
  const unsigned ch = blockIdx.x;
  const unsigned split = blockIdx.y;
  const unsigned splits = gridDim.y;
  const unsigned count = n * hw;
  const unsigned per = (count + splits - 1) / splits;
  const unsigned start = split * per;
  const unsigned end = min(start + per, count);
  const float shift = GRAD ? mean[ch] : a[(size_t)ch * hw];
  float t1 = 0.0f, t2 = 0.0f;
  for (unsigned e = start + threadIdx.x; e < end; e += blockDim.x) {
    const unsigned ni = e / hw;
    const size_t off = ((size_t)ni * c + ch) * hw + (e - ni * hw);
    if (GRAD) {
      const float u = a[off];
      t1 += u;
      t2 += u * (b[off] - shift);
    } else {
      const float d = a[off] - shift;
      t1 += d;
      t2 += d * d;
    }
  }
  sh1[threadIdx.x] = t1;
  sh2[threadIdx.x] = t2;
  __syncthreads();
  for (unsigned stride = BN_THREADS / 2; stride > 0; stride >>= 1) {
    if (threadIdx.x < stride) {
      sh1[threadIdx.x] += sh1[threadIdx.x + stride];
      sh2[threadIdx.x] += sh2[threadIdx.x + stride];
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    double *out = partial + ((size_t)ch * splits + split) * 2;
    out[0] = sh1[0];
    out[1] = sh2[0];
  }
}

// The splits of channel ch added in order.
__device__ __forceinline__ void channel_total(const double *partial, unsigned ch, unsigned splits,
                                              double *s1, double *s2) {
  double u = 0.0, v = 0.0;
  for (unsigned k = 0; k < splits; ++k) {
    u += partial[((size_t)ch * splits + k) * 2];
    v += partial[((size_t)ch * splits + k) * 2 + 1];
  }
  *s1 = u;
  *s2 = v;
}

}  // namespace

// Launched with blockDim.x == BN_THREADS, grid (c, splits).
extern "C" __global__ void bn_partial_stats_f32(const float *x, double *partial, unsigned n,
                                                unsigned c, unsigned hw) {
  partial_sums<false>(x, nullptr, nullptr, partial, n, c, hw);
}

// Launched with blockDim.x == BN_THREADS, grid (c, splits); stats = [mean (c); var (c)].
extern "C" __global__ void bn_partial_grads_f32(const float *dy, const float *x,
                                                const float *stats, double *partial, unsigned n,
                                                unsigned c, unsigned hw) {
  partial_sums<true>(dy, x, stats, partial, n, c, hw);
}

// stats = [mean (c); biased var (c)] from the shifted sums; one thread per channel.
extern "C" __global__ void bn_finish_stats_f32(const float *x, const double *partial,
                                               float *stats, unsigned n, unsigned c, unsigned hw,
                                               unsigned splits) {
  const unsigned ch = blockIdx.x * blockDim.x + threadIdx.x;
  if (ch >= c) return;
  double s, ss;
  channel_total(partial, ch, splits, &s, &ss);
  const double count = (double)n * hw;
  const double m = s / count;
  const double var = fmax(ss / count - m * m, 0.0);
  stats[ch] = (float)((double)x[(size_t)ch * hw] + m);
  stats[c + ch] = (float)var;
}

// Per channel: grads[0..c] = dgamma, grads[c..2c] = dbeta, and the coefficients of dx,
// coef[3ch..3ch+3] = (gamma * inv_std, dbeta / M, dgamma * inv_std / M). One thread per channel.
extern "C" __global__ void bn_finish_grads_f32(const double *partial, const float *stats,
                                               const float *gamma, float *grads, float *coef,
                                               unsigned n, unsigned c, unsigned hw,
                                               unsigned splits, double eps) {
  const unsigned ch = blockIdx.x * blockDim.x + threadIdx.x;
  if (ch >= c) return;
  double dbeta, sx;
  channel_total(partial, ch, splits, &dbeta, &sx);
  const double count = (double)n * hw;
  const double inv_std = 1.0 / sqrt((double)stats[c + ch] + eps);
  const double dgamma = sx * inv_std;
  grads[ch] = (float)dgamma;
  grads[c + ch] = (float)dbeta;
  coef[3 * ch] = (float)((double)gamma[ch] * inv_std);
  coef[3 * ch + 1] = (float)(dbeta / count);
  coef[3 * ch + 2] = (float)(dgamma * inv_std / count);
}

// y = (x - mean) * gamma / sqrt(var + eps) + beta; one thread per element.
extern "C" __global__ void bn_forward_f32(const float *x, const float *stats, const float *gamma,
                                          const float *beta, float *y, size_t total, unsigned c,
                                          unsigned hw, float eps) {
  const size_t step = (size_t)blockDim.x * gridDim.x;
  for (size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x; idx < total; idx += step) {
    const unsigned ch = (unsigned)((idx / hw) % c);
    const float scale = gamma[ch] / sqrtf(stats[c + ch] + eps);
    y[idx] = (x[idx] - stats[ch]) * scale + beta[ch];
  }
}

// dx = k * (dy - b - (x - mean) * a) with (k, b, a) = coef[3ch..]; one thread per element.
extern "C" __global__ void bn_backward_dx_f32(const float *x, const float *dy, const float *stats,
                                              const float *coef, float *dx, size_t total,
                                              unsigned c, unsigned hw) {
  const size_t step = (size_t)blockDim.x * gridDim.x;
  for (size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x; idx < total; idx += step) {
    const unsigned ch = (unsigned)((idx / hw) % c);
    const float *k = coef + 3 * (size_t)ch;
    dx[idx] = k[0] * (dy[idx] - k[1] - (x[idx] - stats[ch]) * k[2]);
  }
}
