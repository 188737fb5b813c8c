// Dropout masks drawn on the device, equal bit for bit to circulant-model's CPU masks: element i
// is kept (set to `scale`) when the high 32 bits of mix(seed + (i + 1) * GOLDEN) (SplitMix64's
// output i) are >= `threshold`, and zeroed otherwise.
//
// Compiled to PTX by kernels-cuda/build.rs; loaded through candle's get_or_load_custom_func.

#include <stddef.h>
#include <stdint.h>

namespace {

constexpr uint64_t GOLDEN = 0x9e3779b97f4a7c15ull;

// SplitMix64's finaliser of z + GOLDEN (circulant-model's init::mix).
__device__ __forceinline__ uint64_t mix(uint64_t z) {
  z += GOLDEN;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

}  // namespace

extern "C" __global__ void dropout_mask_f32(float *out, size_t n, uint64_t seed,
                                            uint32_t threshold, float scale) {
  const size_t stride = (size_t)gridDim.x * blockDim.x;
  for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
    const uint32_t u = (uint32_t)(mix(seed + (uint64_t)i * GOLDEN) >> 32);
    out[i] = u >= threshold ? scale : 0.0f;
  }
}
