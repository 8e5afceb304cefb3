// Per-pixel math shared by the CPU and CUDA backends of dalimix's fused operator, so both compute the
// same numbers: the source position of an output pixel, the resampling filter, and the counter-based
// noise of random erasing. See docs/DESIGN.md, "The native operator".
#ifndef DALIMIX_NATIVE_FUSED_MATH_H_
#define DALIMIX_NATIVE_FUSED_MATH_H_

#include <cmath>
#include <cstdint>

#ifdef __CUDACC__
#define DMX_HD __host__ __device__ __forceinline__
#else
#define DMX_HD inline
#endif

namespace dalimix {

enum MixKind : int32_t { kMixNone = 0, kMixup = 1, kCutMix = 2 };
enum EraseMode : int32_t { kEraseConst = 0, kEraseRand = 1, kErasePixel = 2 };

constexpr int kMaxChannels = 4;
constexpr int kMaxEraseRegions = 8;

// Where output coordinate `o` samples the input: pixel centres aligned, as DALI's resize does.
DMX_HD float SourceCentre(int o, float scale) {
  return (static_cast<float>(o) + 0.5f) * scale - 0.5f;
}

// Radius of the filter in input pixels: the triangle's 1 (bilinear) or the cubic's 2 (bicubic);
// antialiasing a downscale widens it by the scale so that every input pixel contributes.
DMX_HD float FilterRadius(float scale, bool antialias, bool cubic = false) {
  const float s = (antialias && scale > 1.0f) ? scale : 1.0f;
  return cubic ? 2.0f * s : s;
}

// Keys' cubic convolution kernel with a = -0.5 (PIL's and DALI's bicubic), at distance `x` in taps.
DMX_HD float CubicKernel(float x) {
  const float a = -0.5f;
  x = fabsf(x);
  if (x < 1.0f) return ((a + 2.0f) * x - (a + 3.0f)) * x * x + 1.0f;
  if (x < 2.0f) return (((x - 5.0f) * x + 8.0f) * x - 4.0f) * a;
  return 0.0f;
}

// First input index of the filter window around `centre`.
DMX_HD int FirstTap(float centre, float radius) {
  return static_cast<int>(floorf(centre - radius)) + 1;
}

// Number of taps a window of `radius` can span (the same for every output pixel of one axis).
DMX_HD int TapCount(float radius) {
  return radius <= 1.0f ? 2 : static_cast<int>(ceilf(2.0f * radius)) + 1;
}

DMX_HD float TapWeight(int index, float centre, float radius, bool cubic = false) {
  if (cubic) return CubicKernel((static_cast<float>(index) - centre) / (0.5f * radius));
  float w = 1.0f - fabsf(static_cast<float>(index) - centre) / radius;
  return w > 0.0f ? w : 0.0f;
}

// A cubic resample of uint8 data overshoots the input's range: clip as an 8-bit image would.
DMX_HD float ClipLevel(float v) {
  return v < 0.0f ? 0.0f : (v > 255.0f ? 255.0f : v);
}

DMX_HD int Clamp(int v, int lo, int hi) {
  return v < lo ? lo : (v > hi ? hi : v);
}

// A 32-bit mix of three counters (a finaliser in the style of splitmix / murmur): the same inputs give
// the same bits on the CPU and the GPU, so erasing noise depends only on the seed DALI drew.
DMX_HD uint32_t Hash3(uint32_t a, uint32_t b, uint32_t c) {
  uint64_t x = (static_cast<uint64_t>(a) << 32) ^ (static_cast<uint64_t>(b) * 0x9E3779B97F4A7C15ull) ^
               (static_cast<uint64_t>(c) * 0xC2B2AE3D27D4EB4Full);
  x ^= x >> 30;
  x *= 0xBF58476D1CE4E5B9ull;
  x ^= x >> 27;
  x *= 0x94D049BB133111EBull;
  x ^= x >> 31;
  return static_cast<uint32_t>(x);
}

// A standard normal value for counter (stream, index) under `seed` (Box-Muller on two hashed uniforms).
DMX_HD float NormalAt(uint32_t seed, uint32_t stream, uint32_t index) {
  uint32_t h1 = Hash3(seed, stream, 2u * index);
  uint32_t h2 = Hash3(seed, stream, 2u * index + 1u);
  float u1 = (static_cast<float>(h1 >> 8) + 1.0f) * (1.0f / 16777217.0f);  // (0, 1]
  float u2 = static_cast<float>(h2 >> 8) * (1.0f / 16777216.0f);           // [0, 1)
  return sqrtf(-2.0f * logf(u1)) * cosf(6.28318530717958647692f * u2);
}

// Noise streams: the per-channel fill of region r uses stream r; per-pixel noise, indexed by the HWC
// offset of the output pixel, uses one stream for the whole image.
DMX_HD uint32_t RandStream(int region) { return static_cast<uint32_t>(region); }
DMX_HD uint32_t PixelStream() { return 1000u; }

}  // namespace dalimix

#endif  // DALIMIX_NATIVE_FUSED_MATH_H_
