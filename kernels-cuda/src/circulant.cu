// Per-frequency contractions of the (block-)circulant projection, on half spectra of length
// nf = b/2 + 1 produced by cuFFT's R2C / D2Z transforms (row-major, frequency fastest).
//
//   forward  y^[n,i,f] = scale * sum_j        r^[i,j,f]  x^[n,j,f]
//   dx       dx^[n,j,f] = scale * sum_i conj(r^[i,j,f]) g^[n,i,f]
//   dr       dr^[i,j,f] = scale * sum_n conj(x^[n,j,f]) g^[n,i,f]
//
// `scale` folds in the 1/b of the unnormalised inverse transform. The imaginary parts of the
// real bins (DC, and Nyquist when b is even) are set to exactly 0, as a Hermitian half
// spectrum must have them.
//
// Compiled to PTX by kernels-cuda/build.rs; loaded through candle's get_or_load_custom_func.

#include <stddef.h>

namespace {

__device__ __forceinline__ float2 make_complex(float re, float im) { return make_float2(re, im); }
__device__ __forceinline__ double2 make_complex(double re, double im) { return make_double2(re, im); }

__device__ __forceinline__ bool is_real_bin(size_t f, size_t b) { return f == 0 || 2 * f == b; }

// y^[n,i,f] = scale * sum_j w[i,j,f] a[n,j,f]; one thread per output, frequency fastest.
template <typename R, typename C>
__device__ void contract(const C *a, const C *w, C *out, size_t n, size_t p, size_t q, size_t nf,
                         size_t b, R scale) {
  const size_t total = n * p * nf;
  const size_t step = (size_t)blockDim.x * gridDim.x;
  for (size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x; idx < total; idx += step) {
    const size_t f = idx % nf;
    const size_t t = idx / nf;
    const size_t i = t % p;
    const size_t nn = t / p;
    const C *ap = a + nn * q * nf + f;
    const C *wp = w + i * q * nf + f;
    R re = 0, im = 0;
    for (size_t j = 0; j < q; ++j) {
      const C x = ap[j * nf];
      const C r = wp[j * nf];
      re += r.x * x.x - r.y * x.y;
      im += r.x * x.y + r.y * x.x;
    }
    if (is_real_bin(f, b)) im = 0;
    out[idx] = make_complex(re * scale, im * scale);
  }
}

// dx^[n,j,f] = scale * sum_i conj(w[i,j,f]) g[n,i,f]; one thread per output.
template <typename R, typename C>
__device__ void contract_dx(const C *g, const C *w, C *out, size_t n, size_t p, size_t q,
                            size_t nf, size_t b, R scale) {
  const size_t total = n * q * nf;
  const size_t step = (size_t)blockDim.x * gridDim.x;
  for (size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x; idx < total; idx += step) {
    const size_t f = idx % nf;
    const size_t t = idx / nf;
    const size_t j = t % q;
    const size_t nn = t / q;
    const C *gp = g + nn * p * nf + f;
    const C *wp = w + j * nf + f;
    R re = 0, im = 0;
    for (size_t i = 0; i < p; ++i) {
      const C gg = gp[i * nf];
      const C r = wp[i * q * nf];
      re += r.x * gg.x + r.y * gg.y;
      im += r.x * gg.y - r.y * gg.x;
    }
    if (is_real_bin(f, b)) im = 0;
    out[idx] = make_complex(re * scale, im * scale);
  }
}

// Block shape of contract_dr: DR_F frequencies x DR_N batch lanes.
constexpr int DR_F = 32;
constexpr int DR_N = 8;

// dr^[i,j,f] = scale * sum_n conj(a[n,j,f]) g[n,i,f]. The batch sum is split over DR_N lanes
// and reduced in shared memory in a fixed order (deterministic). grid = (ceil(nf/DR_F), <= p*q).
template <typename R, typename C>
__device__ void contract_dr(const C *a, const C *g, C *out, size_t n, size_t p, size_t q,
                            size_t nf, size_t b, R scale) {
  __shared__ R sre[DR_N][DR_F];
  __shared__ R sim[DR_N][DR_F];
  const int tx = threadIdx.x;
  const int ty = threadIdx.y;
  const size_t f = (size_t)blockIdx.x * DR_F + tx;
  for (size_t ij = blockIdx.y; ij < p * q; ij += gridDim.y) {
    const size_t i = ij / q;
    const size_t j = ij % q;
    R re = 0, im = 0;
    if (f < nf) {
      for (size_t nn = ty; nn < n; nn += DR_N) {
        const C x = a[(nn * q + j) * nf + f];
        const C gg = g[(nn * p + i) * nf + f];
        re += x.x * gg.x + x.y * gg.y;
        im += x.x * gg.y - x.y * gg.x;
      }
    }
    sre[ty][tx] = re;
    sim[ty][tx] = im;
    __syncthreads();
    if (ty == 0 && f < nf) {
      R sr = 0, si = 0;
      for (int k = 0; k < DR_N; ++k) {
        sr += sre[k][tx];
        si += sim[k][tx];
      }
      if (is_real_bin(f, b)) si = 0;
      out[ij * nf + f] = make_complex(sr * scale, si * scale);
    }
    __syncthreads();
  }
}

// Length-1 "transforms" (cuFFT is not asked for them): the spectrum is the value itself.
template <typename R, typename C>
__device__ void real_to_complex(const R *in, C *out, size_t count) {
  const size_t step = (size_t)blockDim.x * gridDim.x;
  for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < count; i += step) {
    out[i] = make_complex(in[i], (R)0);
  }
}

template <typename R, typename C>
__device__ void complex_to_real(const C *in, R *out, size_t count) {
  const size_t step = (size_t)blockDim.x * gridDim.x;
  for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < count; i += step) {
    out[i] = in[i].x;
  }
}

}  // namespace

#define CIRCULANT_KERNELS(SUFFIX, R, C)                                                          \
  extern "C" __global__ void circ_contract_##SUFFIX(const C *a, const C *w, C *out, size_t n,    \
                                                    size_t p, size_t q, size_t nf, size_t b,     \
                                                    R scale) {                                   \
    contract<R, C>(a, w, out, n, p, q, nf, b, scale);                                            \
  }                                                                                              \
  extern "C" __global__ void circ_contract_dx_##SUFFIX(const C *g, const C *w, C *out, size_t n, \
                                                       size_t p, size_t q, size_t nf, size_t b,  \
                                                       R scale) {                                \
    contract_dx<R, C>(g, w, out, n, p, q, nf, b, scale);                                         \
  }                                                                                              \
  extern "C" __global__ void circ_contract_dr_##SUFFIX(const C *a, const C *g, C *out, size_t n, \
                                                       size_t p, size_t q, size_t nf, size_t b,  \
                                                       R scale) {                                \
    contract_dr<R, C>(a, g, out, n, p, q, nf, b, scale);                                         \
  }                                                                                              \
  extern "C" __global__ void circ_r2c_len1_##SUFFIX(const R *in, C *out, size_t count) {         \
    real_to_complex<R, C>(in, out, count);                                                       \
  }                                                                                              \
  extern "C" __global__ void circ_c2r_len1_##SUFFIX(const C *in, R *out, size_t count) {         \
    complex_to_real<R, C>(in, out, count);                                                       \
  }

CIRCULANT_KERNELS(f32, float, float2)
CIRCULANT_KERNELS(f64, double, double2)
