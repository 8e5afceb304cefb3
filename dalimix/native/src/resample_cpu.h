// The CPU's resampling of an image, a row at a time: per-axis filter taps (triangle or Keys' cubic,
// widened by the scale with antialias), a vertical pass over the input rows, then a horizontal pass.
// Shared by the fused operator and the policy operator's resize to the crop. Host code only.
#ifndef DALIMIX_NATIVE_RESAMPLE_CPU_H_
#define DALIMIX_NATIVE_RESAMPLE_CPU_H_

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "fused_math.h"

namespace dalimix {

// Filter taps of one axis: for each output index, `k` clamped input indices and normalised weights.
struct AxisTaps {
  int k = 0;
  std::vector<int> idx;
  std::vector<float> w;
  int lo = 0, hi = 0;  // range of input indices used, [lo, hi]

  void Build(int n_in, int n_out, bool antialias, bool cubic = false) {
    float scale = static_cast<float>(n_in) / static_cast<float>(n_out);
    float radius = FilterRadius(scale, antialias, cubic);
    k = TapCount(radius);
    idx.assign(static_cast<size_t>(n_out) * k, 0);
    w.assign(static_cast<size_t>(n_out) * k, 0.0f);
    lo = n_in - 1;
    hi = 0;
    for (int o = 0; o < n_out; o++) {
      float c = SourceCentre(o, scale);
      int first = FirstTap(c, radius);
      float sum = 0.0f;
      for (int t = 0; t < k; t++) {
        float wt = TapWeight(first + t, c, radius, cubic);
        int i = Clamp(first + t, 0, n_in - 1);
        idx[o * k + t] = i;
        w[o * k + t] = wt;
        sum += wt;
        if (wt != 0.0f) {
          lo = std::min(lo, i);
          hi = std::max(hi, i);
        }
      }
      for (int t = 0; t < k; t++) w[o * k + t] /= sum;
    }
    if (lo > hi) lo = hi = 0;
  }
};

// Four floats in one SIMD register (GCC / clang vector extension; SSE on x86-64, NEON on ARM).
typedef float V4 __attribute__((vector_size(16)));

// One input image and its resampling tables.
template <typename In>
struct Source {
  const In *data = nullptr;
  int h = 0, w = 0, c = 0;
  bool chw = false;
  bool clip = false;  // cubic on uint8: clip each resampled value to 0..255
  AxisTaps ty, tx;

  // Output row `oy` (HWC order, `out_w * c` floats) into `row`; `tmp` holds the vertical pass.
  void Row(int oy, float *row, std::vector<float> &tmp) const {
    const int out_w = static_cast<int>(tx.idx.size()) / tx.k;
    const int out_h = static_cast<int>(ty.idx.size()) / ty.k;
    if (out_w == w && out_h == h) {  // the identity (crop-sized input after a per-sample policy): convert
      if (!chw) {
        const In *r = data + static_cast<int64_t>(oy) * w * c;
        for (int j = 0; j < w * c; j++) row[j] = static_cast<float>(r[j]);
      } else {
        const int64_t plane = static_cast<int64_t>(h) * w;
        for (int ch = 0; ch < c; ch++)
          for (int x = 0; x < w; x++) row[x * c + ch] = static_cast<float>(data[ch * plane + static_cast<int64_t>(oy) * w + x]);
      }
      return;
    }
    const int k = ty.k;
    const int *iy = &ty.idx[oy * k];
    const float *wy = &ty.w[oy * k];
    const int x0 = tx.lo, xn = tx.hi - tx.lo + 1;
    tmp.resize(static_cast<size_t>(w) * c + 1);
    float *t = tmp.data() + static_cast<size_t>(x0) * c;
    if (!chw) {
      const int64_t stride = static_cast<int64_t>(w) * c;
      const In *r0 = data + iy[0] * stride + static_cast<int64_t>(x0) * c;
      const int len = xn * c;
      if (k == 2) {
        const In *r1 = data + iy[1] * stride + static_cast<int64_t>(x0) * c;
        const float w0 = wy[0], w1 = wy[1];
        if (w1 == 0.0f) {
          for (int j = 0; j < len; j++) t[j] = static_cast<float>(r0[j]);
        } else {
          for (int j = 0; j < len; j++) t[j] = w0 * static_cast<float>(r0[j]) + w1 * static_cast<float>(r1[j]);
        }
      } else {
        for (int j = 0; j < len; j++) t[j] = wy[0] * static_cast<float>(r0[j]);
        for (int q = 1; q < k; q++) {
          if (wy[q] == 0.0f) continue;
          const In *rq = data + iy[q] * stride + static_cast<int64_t>(x0) * c;
          const float wq = wy[q];
          for (int j = 0; j < len; j++) t[j] += wq * static_cast<float>(rq[j]);
        }
      }
    } else {
      const int64_t plane = static_cast<int64_t>(h) * w;
      for (int ch = 0; ch < c; ch++) {
        for (int x = 0; x < xn; x++) {
          float acc = 0.0f;
          for (int q = 0; q < k; q++)
            acc += wy[q] * static_cast<float>(data[ch * plane + static_cast<int64_t>(iy[q]) * w + x0 + x]);
          t[x * c + ch] = acc;
        }
      }
    }
    const float *tb = tmp.data();
    const int kx = tx.k;
    if (kx == 2 && c == 3) {
      // Four lanes per pixel (RGB and one lane of the next pixel, overwritten by the next store): two loads,
      // a multiply and an FMA per output pixel instead of six of each. `tmp` and `row` carry one float
      // of padding for the last pixel.
      for (int ox = 0; ox < out_w; ox++) {
        V4 a, b;
        std::memcpy(&a, tb + tx.idx[2 * ox] * 3, sizeof(V4));
        std::memcpy(&b, tb + tx.idx[2 * ox + 1] * 3, sizeof(V4));
        V4 v = a * tx.w[2 * ox] + b * tx.w[2 * ox + 1];
        std::memcpy(row + 3 * ox, &v, sizeof(V4));
      }
      return;
    }
    if (c == 3) {
      // The same four-lane form for any tap count: each lane adds its channel's products in tap order, as
      // the scalar loop below does, so the values are the same.
      for (int ox = 0; ox < out_w; ox++) {
        const int *ix = &tx.idx[ox * kx];
        const float *wx = &tx.w[ox * kx];
        V4 acc = {0.0f, 0.0f, 0.0f, 0.0f};
        for (int q = 0; q < kx; q++) {
          V4 a;
          std::memcpy(&a, tb + ix[q] * 3, sizeof(V4));
          acc += a * wx[q];
        }
        std::memcpy(row + 3 * ox, &acc, sizeof(V4));
      }
      if (clip)
        for (int j = 0; j < out_w * 3; j++) row[j] = ClipLevel(row[j]);
      return;
    }
    for (int ox = 0; ox < out_w; ox++) {
      for (int ch = 0; ch < c; ch++) {
        float acc = 0.0f;
        for (int q = 0; q < kx; q++) acc += tx.w[ox * kx + q] * tb[tx.idx[ox * kx + q] * c + ch];
        row[ox * c + ch] = clip ? ClipLevel(acc) : acc;
      }
    }
  }
};

}  // namespace dalimix

#endif  // DALIMIX_NATIVE_RESAMPLE_CPU_H_
