// The CPU operator's layer steps over one image, row by row: the same arithmetic as the per-pixel bodies of
// policy_apply.h / policy_ops.h (so the same values), without the grid emulation's per-pixel overhead.
// Lookup-table ops as one pass over the bytes, the affine ops with each pixel's taps found once and its three
// channels computed side by side (four-lane double vectors: each lane runs the scalar code's operations in
// its order), histograms in one pass. Host code only.
#ifndef DALIMIX_NATIVE_POLICY_CPU_H_
#define DALIMIX_NATIVE_POLICY_CPU_H_

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "policy_apply.h"

namespace dalimix {

typedef double D4 __attribute__((vector_size(32)));

inline D4 Splat(double v) { return D4{v, v, v, v}; }

inline D4 PixelD4(const uint8_t *src, int S, int r, int c) {
  const uint8_t *p = src + (static_cast<int64_t>(r) * S + c) * 3;
  return D4{static_cast<double>(p[0]), static_cast<double>(p[1]), static_cast<double>(p[2]), 0.0};
}

// The image as one four-lane double per pixel, so a bicubic tap is one load.
inline const D4 *WidenedImage(const uint8_t *src, int S) {
  thread_local std::vector<D4> wide;
  wide.resize(static_cast<size_t>(S) * S);
  for (int64_t i = 0; i < static_cast<int64_t>(S) * S; i++) wide[i] = PixelD4(src, S, 0, static_cast<int>(i));
  return wide.data();
}

// Bicubic1D (policy_ops.h) on three channels at once.
inline D4 Bicubic1D4(D4 v1, D4 v2, D4 v3, D4 v4, double d) {
  const D4 dd = Splat(d);
  const D4 p1 = v2;
  const D4 p2 = -v1 + v3;
  const D4 p3 = ((Splat(2.0) * (v1 + -v2)) + v3) + -v4;
  const D4 p4 = ((-v1 + v2) + -v3) + v4;
  return p1 + dd * (p2 + dd * (p3 + dd * p4));
}

// Whether AffinePixel takes a rotation's exact transpose for these parameters (then the per-pixel path).
inline bool IsTransposeRotation(const double *p) {
  const double angle = p[7];
  if (angle != angle) return false;
  double a = std::fmod(angle, 360.0);
  if (a < 0.0) a += 360.0;
  return a == 0.0 || a == 90.0 || a == 180.0 || a == 270.0;
}

// AffinePixel over the whole image (not for IsTransposeRotation's cases).
inline void AffineImage(const uint8_t *src, int S, const double *p, const uint8_t *fill, uint8_t *dst) {
  const bool cubic = static_cast<int>(p[6]) == 2;
  const D4 *wide = cubic ? WidenedImage(src, S) : nullptr;
  for (int y = 0; y < S; y++) {
    for (int x = 0; x < S; x++) {
      uint8_t *out = dst + (static_cast<int64_t>(y) * S + x) * 3;
      const double xs = x + 0.5, ys = y + 0.5;
      double xx = p[0] * xs + p[1] * ys + p[2];
      double yy = p[3] * xs + p[4] * ys + p[5];
      if (xx < 0 || xx >= S || yy < 0 || yy >= S) {
        out[0] = fill[0], out[1] = fill[1], out[2] = fill[2];
        continue;
      }
      xx -= 0.5;
      yy -= 0.5;
      const int xi = FloorToInt(xx), yi = FloorToInt(yy);
      const double dx = xx - xi, dy = yy - yi;
      D4 v;
      if (!cubic) {
        const int c0 = ClipIndex(xi, S), c1 = ClipIndex(xi + 1, S), r0 = ClipIndex(yi, S);
        const D4 a0 = PixelD4(src, S, r0, c0);
        const D4 v1 = a0 + (PixelD4(src, S, r0, c1) + -a0) * Splat(dx);
        D4 v2 = v1;
        if (yi + 1 >= 0 && yi + 1 < S) {
          const D4 b0 = PixelD4(src, S, yi + 1, c0);
          v2 = b0 + (PixelD4(src, S, yi + 1, c1) + -b0) * Splat(dx);
        }
        v = v1 + (v2 + -v1) * Splat(dy);
        for (int ch = 0; ch < 3; ch++) out[ch] = static_cast<uint8_t>(static_cast<int>(v[ch]));
        continue;
      }
      const int x0 = xi - 1, y0 = yi - 1;
      const int c[4] = {ClipIndex(x0, S), ClipIndex(x0 + 1, S), ClipIndex(x0 + 2, S), ClipIndex(x0 + 3, S)};
      // A zero fraction leaves the cubic at its second value (p1 + 0 * finite): shears and translations
      // along one axis need one row of four taps, not four.
      auto row = [&](int r) {
        const D4 *w = wide + static_cast<int64_t>(r) * S;
        return dx == 0.0 ? w[c[1]] : Bicubic1D4(w[c[0]], w[c[1]], w[c[2]], w[c[3]], dx);
      };
      if (dy == 0.0) {
        v = row(yi < 0 || yi >= S ? ClipIndex(y0, S) : yi);  // rows[1], which repeats rows[0] off the image
      } else {
        D4 rows[4];
        for (int k = 0; k < 4; k++) {
          const int r = y0 + k;
          rows[k] = k > 0 && (r < 0 || r >= S) ? rows[k - 1] : row(ClipIndex(r, S));
        }
        v = Bicubic1D4(rows[0], rows[1], rows[2], rows[3], dy);
      }
      for (int ch = 0; ch < 3; ch++)
        out[ch] = static_cast<uint8_t>(v[ch] <= 0.0 ? 0 : (v[ch] >= 255.0 ? 255 : static_cast<int>(v[ch])));
    }
  }
}

// Layer l of sample s on `src` -> `dst` (S x S x 3), `lut` its lookup tables where the op is one.
inline void ApplyLayerImage(const ProgramSample &s, int l, const uint8_t *src, uint8_t *dst, int S,
                            const uint8_t *fill, const uint8_t *lut) {
  const int op = s.ops[l];
  const int64_t n = static_cast<int64_t>(S) * S;
  if (IsPointOp(op)) {
    for (int64_t i = 0; i < n; i++)
      for (int ch = 0; ch < 3; ch++) dst[3 * i + ch] = lut[ch * 256 + src[3 * i + ch]];
    return;
  }
  if (op == kOpIdentity || op == kOpBlur) {
    std::memcpy(dst, src, static_cast<size_t>(n) * 3);
    return;
  }
  if (op == kOpAffine && !IsTransposeRotation(s.params[l])) {
    AffineImage(src, S, s.params[l], fill, dst);
    return;
  }
  for (int y = 0; y < S; y++)
    for (int x = 0; x < S; x++) PixelValues(op, s.params[l], src, S, fill, y, x, dst + (static_cast<int64_t>(y) * S + x) * 3);
}

// The R, G, B and L histograms of an S x S x 3 image in one pass (`hist`: 4 x 256, zeroed here).
inline void HistogramsImage(const uint8_t *img, int S, int *hist) {
  std::memset(hist, 0, sizeof(int) * 4 * 256);
  const int64_t n = static_cast<int64_t>(S) * S;
  for (int64_t i = 0; i < n; i++) {
    const uint8_t *px = img + 3 * i;
    hist[px[0]]++;
    hist[256 + px[1]]++;
    hist[512 + px[2]]++;
    hist[768 + Luma(px[0], px[1], px[2])]++;
  }
}

}  // namespace dalimix

#endif  // DALIMIX_NATIVE_POLICY_CPU_H_
