// One output pixel of dalimix's fused operator, as the CUDA kernel computes it: resample the own image
// (and the partner's) at the pixel, mix, normalise, erase, store. `__host__ __device__`, so the same code
// runs in the kernel and in the CPU library's emulator of the launch (fused_gpu_emulator.cc), which the
// CPU test suite checks against the NumPy reference on every run. See docs/DESIGN.md.
#ifndef DALIMIX_NATIVE_FUSED_PIXEL_H_
#define DALIMIX_NATIVE_FUSED_PIXEL_H_

#include <cstdint>

#include "fused_math.h"

namespace dalimix {

// Per-sample parameters of one output sample: what `SampleParams` holds, as the pixel code reads it.
struct PixelParams {
  int partner = 0;
  int kind = kMixNone;
  float weight = 1.0f;
  int box[4] = {0, 0, 0, 0};
  bool mirror = false;
  int num_erase = 0;
  int erase[kMaxEraseRegions][4] = {};
  uint32_t seed = 0;
  bool cubic = false;  // Keys' cubic instead of the triangle; uint8 input clipped to 0..255
};

// Where one output sample reads from and writes to (device pointers on the GPU).
struct PixelSample {
  const void *in = nullptr;
  const void *partner_in = nullptr;
  int h = 0, w = 0, c = 0;     // own input size and channels
  int ph = 0, pw = 0;          // partner's input size (channels: equal when mixed, checked at setup)
  int oh = 0, ow = 0;          // output size
  void *out = nullptr;
  PixelParams p;
};

// What holds for the whole batch.
struct PixelLaunch {
  float mean[kMaxChannels];
  float inv_std[kMaxChannels];
  bool chw_in = false, chw_out = true, antialias = false;
  bool erase_before = false;   // each sample's regions erase its own image before mixing (else the output)
  int erase_mode = kEraseConst;
};

// Thread-block shape of the launch (the emulator walks the same grid).
constexpr int kBlockX = 32;
constexpr int kBlockY = 8;

template <typename In>
DMX_HD float LoadAt(const In *img, int64_t at) {
  return static_cast<float>(img[at]);
}

// Channel values of `img` (h x w, `c` channels) resampled at output pixel (oy, ox) of an oh x ow image.
template <typename In>
DMX_HD void ResampleAt(const In *img, int h, int w, int c, bool chw, int oh, int ow, int oy, int ox, bool antialias,
                       float *v, bool cubic = false) {
  const int64_t plane = static_cast<int64_t>(h) * w;
  if (h == oh && w == ow) {  // the identity: crop-sized input (after a per-sample policy), one load
    for (int ch = 0; ch < c; ch++) {
      v[ch] = LoadAt(img, chw ? ch * plane + static_cast<int64_t>(oy) * w + ox
                              : (static_cast<int64_t>(oy) * w + ox) * c + ch);
    }
    return;
  }
  const float sy = static_cast<float>(h) / oh, sx = static_cast<float>(w) / ow;
  const float cy = SourceCentre(oy, sy), cx = SourceCentre(ox, sx);
  const float ry = FilterRadius(sy, antialias, cubic), rx = FilterRadius(sx, antialias, cubic);
  const int fy = FirstTap(cy, ry), fx = FirstTap(cx, rx);
  const int ky = TapCount(ry), kx = TapCount(rx);
  float sum_x = 0.0f;
  for (int t = 0; t < kx; t++) sum_x += TapWeight(fx + t, cx, rx, cubic);
  float sum_y = 0.0f;
  float acc[kMaxChannels] = {0.0f, 0.0f, 0.0f, 0.0f};
  for (int ty = 0; ty < ky; ty++) {
    const float wy = TapWeight(fy + ty, cy, ry, cubic);
    if (wy == 0.0f) continue;
    sum_y += wy;
    const int y = Clamp(fy + ty, 0, h - 1);
    float racc[kMaxChannels] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (int tx = 0; tx < kx; tx++) {
      const float wx = TapWeight(fx + tx, cx, rx, cubic);
      if (wx == 0.0f) continue;
      const int x = Clamp(fx + tx, 0, w - 1);
      for (int ch = 0; ch < c; ch++) {
        const int64_t at = chw ? ch * plane + static_cast<int64_t>(y) * w + x : (static_cast<int64_t>(y) * w + x) * c + ch;
        racc[ch] += wx * LoadAt(img, at);
      }
    }
    for (int ch = 0; ch < c; ch++) acc[ch] += wy * racc[ch];
  }
  const float norm = 1.0f / (sum_x * sum_y);
  const bool clip = cubic && sizeof(In) == 1;
  for (int ch = 0; ch < c; ch++) v[ch] = clip ? ClipLevel(acc[ch] * norm) : acc[ch] * norm;
}

// The erase region of `p` (the last one listed) covering (y, x), or -1.
DMX_HD int EraseRegionAt(const PixelParams &p, int y, int x) {
  int region = -1;
  for (int r = 0; r < p.num_erase; r++) {
    const int *e = p.erase[r];
    if (y >= e[0] && y < e[2] && x >= e[1] && x < e[3]) region = r;
  }
  return region;
}

// The fill of channel `ch` at pixel (y, x) of region `region` of a sample with seed `seed` (normalised space).
DMX_HD float EraseFill(int mode, uint32_t seed, int region, int y, int x, int ow, int c, int ch) {
  if (mode == kEraseRand) return NormalAt(seed, RandStream(region), static_cast<uint32_t>(ch));
  if (mode == kErasePixel) {
    return NormalAt(seed, PixelStream(), static_cast<uint32_t>((static_cast<int64_t>(y) * ow + x) * c + ch));
  }
  return 0.0f;
}

// Normalised values of sample `p`'s input at unflipped output pixel (oy, ex), its own regions erased
// (re_order "before_mix": each image erased before it is mixed).
template <typename In>
DMX_HD void ErasedSource(const void *img, int h, int w, int c, const PixelParams &p, const PixelLaunch &L, int oh,
                         int ow, int oy, int ex, bool cubic, float *v) {
  ResampleAt(static_cast<const In *>(img), h, w, c, L.chw_in, oh, ow, oy, ex, L.antialias, v, cubic);
  const int region = EraseRegionAt(p, oy, ex);
  for (int ch = 0; ch < c; ch++) {
    v[ch] = region >= 0 ? EraseFill(L.erase_mode, p.seed, region, oy, ex, ow, c, ch)
                        : (v[ch] - L.mean[ch]) * L.inv_std[ch];
  }
}

template <typename Out>
DMX_HD Out StoreValue(float v);
template <>
DMX_HD float StoreValue<float>(float v) { return v; }
template <>
DMX_HD uint8_t StoreValue<uint8_t>(float v) {
  const float r = rintf(v);  // to nearest, ties to even
  return static_cast<uint8_t>(r < 0.0f ? 0.0f : (r > 255.0f ? 255.0f : r));
}
// The half-precision specialisation is each side's own (CUDA __half, the host's _Float16): both IEEE
// binary16, rounded to nearest even.

// Output pixel (oy, ox) of sample `i`: what one GPU thread computes.
template <typename In, typename Out>
DMX_HD void FusedPixel(const PixelSample *samples, int i, const PixelLaunch &L, int oy, int ox) {
  const PixelSample &s = samples[i];
  if (ox >= s.ow || oy >= s.oh) return;
  const PixelParams &p = s.p;
  const int c = s.c;
  Out *out = static_cast<Out *>(s.out);
  const int64_t plane = static_cast<int64_t>(s.oh) * s.ow;
  const int64_t pixel = static_cast<int64_t>(oy) * s.ow + ox;
  if (!L.erase_before) {
    const int region = EraseRegionAt(p, oy, ox);  // output coordinates: the last region wins
    if (region >= 0) {
      for (int ch = 0; ch < c; ch++) {
        out[L.chw_out ? ch * plane + pixel : pixel * c + ch] =
            StoreValue<Out>(EraseFill(L.erase_mode, p.seed, region, oy, ox, s.ow, c, ch));
      }
      return;
    }
  }
  const int ex = p.mirror ? s.ow - 1 - ox : ox;  // the flip comes last: mixing sees unflipped images
  const bool pasted = p.kind == kCutMix && oy >= p.box[0] && oy < p.box[2] && ex >= p.box[1] && ex < p.box[3];
  float v[kMaxChannels];
  if (L.erase_before) {
    const PixelParams &q = samples[p.partner].p;
    if (pasted) {
      ErasedSource<In>(s.partner_in, s.ph, s.pw, c, q, L, s.oh, s.ow, oy, ex, p.cubic, v);
    } else {
      ErasedSource<In>(s.in, s.h, s.w, c, p, L, s.oh, s.ow, oy, ex, p.cubic, v);
      if (p.kind == kMixup) {
        float b[kMaxChannels];
        ErasedSource<In>(s.partner_in, s.ph, s.pw, c, q, L, s.oh, s.ow, oy, ex, p.cubic, b);
        for (int ch = 0; ch < c; ch++) v[ch] = p.weight * v[ch] + (1.0f - p.weight) * b[ch];
      }
    }
    for (int ch = 0; ch < c; ch++) out[L.chw_out ? ch * plane + pixel : pixel * c + ch] = StoreValue<Out>(v[ch]);
    return;
  }
  if (pasted) {
    ResampleAt(static_cast<const In *>(s.partner_in), s.ph, s.pw, c, L.chw_in, s.oh, s.ow, oy, ex, L.antialias, v, p.cubic);
  } else {
    ResampleAt(static_cast<const In *>(s.in), s.h, s.w, c, L.chw_in, s.oh, s.ow, oy, ex, L.antialias, v, p.cubic);
    if (p.kind == kMixup) {
      float q[kMaxChannels];
      ResampleAt(static_cast<const In *>(s.partner_in), s.ph, s.pw, c, L.chw_in, s.oh, s.ow, oy, ex, L.antialias, q, p.cubic);
      const float a = p.weight, b = 1.0f - p.weight;
      for (int ch = 0; ch < c; ch++) v[ch] = a * v[ch] + b * q[ch];
    }
  }
  for (int ch = 0; ch < c; ch++) {
    out[L.chw_out ? ch * plane + pixel : pixel * c + ch] = StoreValue<Out>((v[ch] - L.mean[ch]) * L.inv_std[ch]);
  }
}

}  // namespace dalimix

#endif  // DALIMIX_NATIVE_FUSED_PIXEL_H_
