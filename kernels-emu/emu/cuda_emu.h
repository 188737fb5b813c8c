// The CUDA C names kernels-cuda's kernels use, for compiling them as C++ on the CPU
// (kernels-emu/build.rs passes this header with -include). A launch (runtime.cpp) runs the
// blocks one after another; within a block the threads run one after another, or as OS threads
// meeting at __syncthreads() for kernels that use it. __shared__ arrays become function
// statics: shared by the block's threads, reused by the next block, as on a GPU.
#pragma once

#include <math.h>
#include <stddef.h>
#include <stdint.h>

struct dim3 {
  unsigned x, y, z;
};
struct float2 {
  float x, y;
};
struct double2 {
  double x, y;
};
inline float2 make_float2(float x, float y) { return {x, y}; }
inline double2 make_double2(double x, double y) { return {x, y}; }

namespace emu {
extern thread_local dim3 thread_idx;
extern thread_local dim3 block_idx;
extern dim3 block_dim;
extern dim3 grid_dim;
void sync_threads();
}  // namespace emu

#define threadIdx (::emu::thread_idx)
#define blockIdx (::emu::block_idx)
#define blockDim (::emu::block_dim)
#define gridDim (::emu::grid_dim)
#define __syncthreads() ::emu::sync_threads()
#define __global__
#define __device__
#define __forceinline__ inline
#define __shared__ static

template <typename T>
inline T min(T a, T b) {
  return b < a ? b : a;
}

// Round-to-nearest arithmetic: plain operations, built with -ffp-contract=off (no fused
// multiply-adds), as nvcc builds these intrinsics.
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fsqrt_rn(float a) { return sqrtf(a); }
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __dsub_rn(double a, double b) { return a - b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline double __ddiv_rn(double a, double b) { return a / b; }
inline double __dsqrt_rn(double a) { return sqrt(a); }
