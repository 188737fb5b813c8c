// Max pooling of contiguous (planes, h, w) f32 inputs with a k x k window and stride s (no
// padding, output (planes, oh, ow) with oh = (h - k) / s + 1), as circulant-model's CPU op:
// each window's value and gradient belong to its FIRST maximum in row-major order (a later
// value wins only if strictly greater). With `relu` the output is max(value, 0) and the
// gradient passes only where the maximum is > 0.
//
// The backward gathers: one thread per input element sums, in row-major output order, the
// gradients of the windows whose first maximum it is. No atomics, so results are
// deterministic and equal to the CPU op's (same additions in the same order).
//
// Compiled to PTX by kernels-cuda/build.rs; loaded through candle's get_or_load_custom_func.

#include <stddef.h>

namespace {

// Index within the plane of the first maximum of output (i, j)'s window.
__device__ __forceinline__ size_t window_argmax(const float *plane, size_t w, size_t i, size_t j,
                                                size_t k, size_t s) {
  size_t best = i * s * w + j * s;
  float best_v = plane[best];
  for (size_t di = 0; di < k; ++di) {
    const size_t row = (i * s + di) * w + j * s;
    for (size_t dj = 0; dj < k; ++dj) {
      const float v = plane[row + dj];
      if (v > best_v) {
        best_v = v;
        best = row + dj;
      }
    }
  }
  return best;
}

// First window index (along one dim) that covers position r: the smallest i with
// i * s + k - 1 >= r.
__device__ __forceinline__ size_t first_window(size_t r, size_t k, size_t s) {
  return r + s >= k ? (r + s - k) / s : 0;
}

}  // namespace

// y[p, i, j] = max over the window (floored at 0 with relu); one thread per output.
extern "C" __global__ void max_pool_fwd_f32(const float *x, float *y, size_t planes, size_t h,
                                            size_t w, size_t oh, size_t ow, size_t k, size_t s,
                                            int relu) {
  const size_t total = planes * oh * ow;
  const size_t step = (size_t)blockDim.x * gridDim.x;
  // Rust's f32::max and fmaxf both return the other operand for a NaN, as the CPU op.
  const float floor = relu ? 0.0f : -INFINITY;
  for (size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x; idx < total; idx += step) {
    const size_t j = idx % ow;
    const size_t t = idx / ow;
    const size_t i = t % oh;
    const float *plane = x + (t / oh) * h * w;
    y[idx] = fmaxf(plane[window_argmax(plane, w, i, j, k, s)], floor);
  }
}

// dx[p, r, c] = sum of gy over the windows whose first maximum is (r, c); one thread per input.
extern "C" __global__ void max_pool_bwd_f32(const float *x, const float *gy, float *dx,
                                            size_t planes, size_t h, size_t w, size_t oh,
                                            size_t ow, size_t k, size_t s, int relu) {
  const size_t total = planes * h * w;
  const size_t step = (size_t)blockDim.x * gridDim.x;
  for (size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x; idx < total; idx += step) {
    const size_t c = idx % w;
    const size_t t = idx / w;
    const size_t r = t % h;
    const size_t p = t / h;
    const float *plane = x + p * h * w;
    const size_t local = r * w + c;
    float acc = 0.0f;
    if (!relu || plane[local] > 0.0f) {
      const float *g = gy + p * oh * ow;
      const size_t i_hi = min(r / s, oh - 1);
      const size_t j_hi = min(c / s, ow - 1);
      for (size_t i = first_window(r, k, s); i <= i_hi; ++i) {
        for (size_t j = first_window(c, k, s); j <= j_hi; ++j) {
          if (window_argmax(plane, w, i, j, k, s) == local) acc += g[i * ow + j];
        }
      }
    }
    dx[idx] = acc;
  }
}
