// In-place optimizer updates, one thread per element (grid-stride), in f32 and f64, as the
// trainer's CPU ops (trainer/src/optim/fused.rs). The arithmetic uses round-to-nearest
// intrinsics, which nvcc never contracts into fused multiply-adds: each step rounds as on
// the CPU, in the same order.
//
//   ema         dst = a * dst + b * s        (s = src, or src^2 with square)
//   adamw       w = w * decay - lr * ((m / c1) / (sqrt(v / c2) + eps))
//   sgd_buffer  buf = mu * buf + (g + wd * w)
//   sgd_update  w = w - lr * d, d = g + wd * w (rule 0), (g + wd * w) + mu * buf (rule 1,
//               Nesterov) or buf (rule 2, momentum)
//
// Compiled to PTX by kernels-cuda/build.rs; loaded through candle's get_or_load_custom_func.

#include <stddef.h>

namespace {

__device__ __forceinline__ float add(float a, float b) { return __fadd_rn(a, b); }
__device__ __forceinline__ float sub(float a, float b) { return __fsub_rn(a, b); }
__device__ __forceinline__ float mul(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ float div(float a, float b) { return __fdiv_rn(a, b); }
__device__ __forceinline__ float sqrt_rn(float a) { return __fsqrt_rn(a); }
__device__ __forceinline__ double add(double a, double b) { return __dadd_rn(a, b); }
__device__ __forceinline__ double sub(double a, double b) { return __dsub_rn(a, b); }
__device__ __forceinline__ double mul(double a, double b) { return __dmul_rn(a, b); }
__device__ __forceinline__ double div(double a, double b) { return __ddiv_rn(a, b); }
__device__ __forceinline__ double sqrt_rn(double a) { return __dsqrt_rn(a); }

#define GRID_STRIDE(i, n)                                                                 \
  for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < (n);                 \
       i += (size_t)blockDim.x * gridDim.x)

template <typename T>
__device__ void ema(T *dst, const T *src, size_t n, T a, T b, int square) {
  GRID_STRIDE(i, n) {
    const T g = src[i];
    dst[i] = add(mul(a, dst[i]), mul(b, square ? mul(g, g) : g));
  }
}

template <typename T>
__device__ void adamw(T *w, const T *m, const T *v, size_t n, T decay, T lr, T c1, T c2, T eps) {
  GRID_STRIDE(i, n) {
    const T step = div(div(m[i], c1), add(sqrt_rn(div(v[i], c2)), eps));
    w[i] = sub(mul(w[i], decay), mul(lr, step));
  }
}

template <typename T>
__device__ void sgd_buffer(T *buf, const T *g, const T *w, size_t n, T mu, T wd) {
  GRID_STRIDE(i, n) { buf[i] = add(mul(mu, buf[i]), add(g[i], mul(wd, w[i]))); }
}

template <typename T>
__device__ void sgd_update(T *w, const T *g, const T *buf, size_t n, T lr, T mu, T wd, int rule) {
  GRID_STRIDE(i, n) {
    const T wi = w[i];
    T d;
    if (rule == 0) {
      d = add(g[i], mul(wd, wi));
    } else if (rule == 1) {
      d = add(add(g[i], mul(wd, wi)), mul(mu, buf[i]));
    } else {
      d = buf[i];
    }
    w[i] = sub(wi, mul(lr, d));
  }
}

}  // namespace

#define OPTIM_KERNELS(SUFFIX, T)                                                                 \
  extern "C" __global__ void optim_ema_##SUFFIX(T *dst, const T *src, size_t n, T a, T b,        \
                                                int square) {                                    \
    ema<T>(dst, src, n, a, b, square);                                                           \
  }                                                                                              \
  extern "C" __global__ void optim_adamw_##SUFFIX(T *w, const T *m, const T *v, size_t n,        \
                                                  T decay, T lr, T c1, T c2, T eps) {            \
    adamw<T>(w, m, v, n, decay, lr, c1, c2, eps);                                                \
  }                                                                                              \
  extern "C" __global__ void optim_sgd_buffer_##SUFFIX(T *buf, const T *g, const T *w, size_t n, \
                                                       T mu, T wd) {                             \
    sgd_buffer<T>(buf, g, w, n, mu, wd);                                                         \
  }                                                                                              \
  extern "C" __global__ void optim_sgd_update_##SUFFIX(T *w, const T *g, const T *buf, size_t n, \
                                                       T lr, T mu, T wd, int rule) {             \
    sgd_update<T>(w, g, buf, n, lr, mu, wd, rule);                                               \
  }

OPTIM_KERNELS(f32, float)
OPTIM_KERNELS(f64, double)
