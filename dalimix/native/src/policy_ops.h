// The ops of dalimix's per-sample policies, with Pillow's arithmetic (what timm and torchvision call: PIL
// 13's Geometry.c, Blend.c, Filter.c, BoxBlur.c, Convert.c and ImageOps), as __host__ __device__ functions
// of one output value: the CPU operator runs them in loops over each image, the CUDA kernels one thread
// per value. uint8 RGB, HWC, square images of side S. Op codes as in dalimix/ops/policy/program.py.
#ifndef DALIMIX_NATIVE_POLICY_OPS_H_
#define DALIMIX_NATIVE_POLICY_OPS_H_

#include <cstdint>

#include "fused_math.h"

namespace dalimix {

enum PolicyOp : int32_t {
  kOpIdentity = 0, kOpAutoContrast = 1, kOpEqualize = 2, kOpInvert = 3, kOpPosterize = 4, kOpSolarize = 5,
  kOpSolarizeAdd = 6, kOpBrightness = 7, kOpColor = 8, kOpContrast = 9, kOpSharpness = 10, kOpAffine = 11,
  kOpGrayscale = 12, kOpBlur = 13, kOpHue = 14
};
constexpr int kNumParams = 8;
constexpr int kMaxLayers = 16;

// Pillow is built without fused multiply-add: keep every product and sum separately rounded.
#ifdef __CUDA_ARCH__
#define DMX_FMUL(a, b) __fmul_rn((a), (b))
#define DMX_FADD(a, b) __fadd_rn((a), (b))
#define DMX_DMUL(a, b) __dmul_rn((a), (b))
#define DMX_DADD(a, b) __dadd_rn((a), (b))
#else
#define DMX_FMUL(a, b) ((a) * (b))
#define DMX_FADD(a, b) ((a) + (b))
#define DMX_DMUL(a, b) ((a) * (b))
#define DMX_DADD(a, b) ((a) + (b))
#endif

// Which ops need an image's histograms (per channel, and of its L) before their lookup table is known.
DMX_HD bool NeedsHistogram(int op) { return op == kOpAutoContrast || op == kOpEqualize || op == kOpContrast; }
// Ops that are a per-channel lookup table.
DMX_HD bool IsPointOp(int op) {
  return op == kOpAutoContrast || op == kOpEqualize || op == kOpInvert || op == kOpPosterize || op == kOpSolarize ||
         op == kOpSolarizeAdd || op == kOpBrightness || op == kOpContrast;
}

// PIL's L of an RGB pixel (ITU-R 601, fixed point, rounded).
DMX_HD int Luma(int r, int g, int b) {
  return static_cast<int>((19595u * r + 38470u * g + 7471u * b + 0x8000u) >> 16);
}

// Image.blend(im1, im2, alpha) for one value: float arithmetic, truncated; clipped only when alpha leaves [0, 1].
DMX_HD int Blend(int in1, int in2, float alpha) {
  const float t = DMX_FADD(static_cast<float>(in1), DMX_FMUL(alpha, static_cast<float>(in2 - in1)));
  if (alpha >= 0.0f && alpha <= 1.0f) return static_cast<int>(t);
  return t <= 0.0f ? 0 : (t >= 255.0f ? 255 : static_cast<int>(t));
}

DMX_HD int Clip8(int v) { return v < 0 ? 0 : (v > 255 ? 255 : v); }

// Contrast's grey level: int(mean of the L histogram + 0.5).
DMX_HD int MeanLevel(const int *lhist) {
  long long sum = 0, count = 0;
  for (int i = 0; i < 256; i++) {
    sum += static_cast<long long>(i) * lhist[i];
    count += lhist[i];
  }
  if (count == 0) return 0;
  return static_cast<int>(static_cast<double>(sum) / static_cast<double>(count) + 0.5);
}

// Entry `i` of the lookup table of a point op, for one channel with histogram `hist` (Image.point clips).
DMX_HD int LutEntry(int op, const double *p, int i, const int *hist, int mean_level) {
  switch (op) {
    case kOpAutoContrast: {
      int lo = 0, hi = 255;
      while (lo < 256 && hist[lo] == 0) lo++;
      while (hi >= 0 && hist[hi] == 0) hi--;
      if (hi <= lo) return i;
      const double scale = 255.0 / (hi - lo);
      const double offset = -lo * scale;
      return Clip8(static_cast<int>(DMX_DADD(DMX_DMUL(static_cast<double>(i), scale), offset)));
    }
    case kOpEqualize: {
      long long total = 0, last = 0, nonzero = 0, below = 0;
      for (int j = 0; j < 256; j++) {
        if (hist[j]) {
          total += hist[j];
          last = hist[j];
          nonzero++;
        }
        if (j < i) below += hist[j];
      }
      if (nonzero <= 1) return i;
      const long long step = (total - last) / 255;
      if (step == 0) return i;
      return Clip8(static_cast<int>((step / 2 + below) / step));
    }
    case kOpInvert: return 255 - i;
    case kOpPosterize: {
      const int bits = static_cast<int>(p[0]);
      return bits <= 0 ? 0 : (i & (0xFF << (8 - bits)) & 0xFF);
    }
    case kOpSolarize: return static_cast<double>(i) < p[0] ? i : 255 - i;
    case kOpSolarizeAdd: {
      const int add = static_cast<int>(p[0]), thresh = static_cast<int>(p[1]);
      return i < thresh ? (i + add > 255 ? 255 : i + add) : i;
    }
    case kOpBrightness: return Blend(0, i, static_cast<float>(p[0]));
    case kOpContrast: return Blend(mean_level, i, static_cast<float>(p[0]));
    default: return i;
  }
}

// ---- geometry: Image.transform(AFFINE) with BILINEAR / BICUBIC, and Image.rotate's exact fast paths ----

DMX_HD int ClipIndex(int v, int n) { return v < 0 ? 0 : (v >= n ? n - 1 : v); }

DMX_HD int FloorToInt(double v) { return v < 0 ? static_cast<int>(floor(v)) : static_cast<int>(v); }

// Geometry.c's BICUBIC (cubic convolution, a = -1).
DMX_HD double Bicubic1D(double v1, double v2, double v3, double v4, double d) {
  const double p1 = v2;
  const double p2 = DMX_DADD(-v1, v3);
  const double p3 = DMX_DADD(DMX_DADD(DMX_DMUL(2.0, DMX_DADD(v1, -v2)), v3), -v4);
  const double p4 = DMX_DADD(DMX_DADD(DMX_DADD(-v1, v2), -v3), v4);
  return DMX_DADD(p1, DMX_DMUL(d, DMX_DADD(p2, DMX_DMUL(d, DMX_DADD(p3, DMX_DMUL(d, p4))))));
}

// Output pixel (y, x) (3 channels into `out`) of an affine transform of `src` (S x S, 3 channels): `p` holds
// PIL's data (output -> input), the interpolation (1 bilinear, 2 bicubic) and, for a rotation, its angle.
DMX_HD void AffinePixel(const uint8_t *src, int S, const double *p, const uint8_t *fill, int y, int x, uint8_t *out) {
  const double angle = p[7];
  if (angle == angle) {  // a rotation: PIL's exact paths for multiples of 90 degrees
    double a = fmod(angle, 360.0);
    if (a < 0.0) a += 360.0;
    int sy = -1, sx = -1;
    if (a == 0.0) sy = y, sx = x;
    else if (a == 180.0) sy = S - 1 - y, sx = S - 1 - x;
    else if (a == 90.0) sy = x, sx = S - 1 - y;
    else if (a == 270.0) sy = S - 1 - x, sx = y;
    if (sy >= 0) {
      for (int ch = 0; ch < 3; ch++) out[ch] = src[(sy * S + sx) * 3 + ch];
      return;
    }
  }
  const double xs = x + 0.5, ys = y + 0.5;
  double xx = DMX_DADD(DMX_DADD(DMX_DMUL(p[0], xs), DMX_DMUL(p[1], ys)), p[2]);
  double yy = DMX_DADD(DMX_DADD(DMX_DMUL(p[3], xs), DMX_DMUL(p[4], ys)), p[5]);
  if (xx < 0 || xx >= S || yy < 0 || yy >= S) {
    for (int ch = 0; ch < 3; ch++) out[ch] = fill[ch];
    return;
  }
  xx -= 0.5;
  yy -= 0.5;
  int xi = FloorToInt(xx), yi = FloorToInt(yy);
  const double dx = xx - xi, dy = yy - yi;
  for (int ch = 0; ch < 3; ch++) {
    auto at = [&](int r, int c) { return static_cast<double>(src[(ClipIndex(r, S) * S + ClipIndex(c, S)) * 3 + ch]); };
    if (static_cast<int>(p[6]) != 2) {  // bilinear
      const double v1 = DMX_DADD(at(yi, xi), DMX_DMUL(DMX_DADD(at(yi, xi + 1), -at(yi, xi)), dx));
      double v2 = v1;
      if (yi + 1 >= 0 && yi + 1 < S) v2 = DMX_DADD(at(yi + 1, xi), DMX_DMUL(DMX_DADD(at(yi + 1, xi + 1), -at(yi + 1, xi)), dx));
      out[ch] = static_cast<uint8_t>(static_cast<int>(DMX_DADD(v1, DMX_DMUL(DMX_DADD(v2, -v1), dy))));
      continue;
    }
    const int x0 = xi - 1, y0 = yi - 1;
    double rows[4];
    for (int k = 0; k < 4; k++) {
      const int r = y0 + k;
      if (k > 0 && (r < 0 || r >= S)) {
        rows[k] = rows[k - 1];
        continue;
      }
      rows[k] = Bicubic1D(at(r, x0), at(r, x0 + 1), at(r, x0 + 2), at(r, x0 + 3), dx);
    }
    const double v = Bicubic1D(rows[0], rows[1], rows[2], rows[3], dy);
    out[ch] = static_cast<uint8_t>(v <= 0.0 ? 0 : (v >= 255.0 ? 255 : static_cast<int>(v)));
  }
}

// ---- colour: HSV as Convert.c computes it, torchvision's adjust_hue ----

DMX_HD void RgbToHsv(int r, int g, int b, int &H, int &S, int &V) {
  const int maxc = r > g ? (r > b ? r : b) : (g > b ? g : b);
  const int minc = r < g ? (r < b ? r : b) : (g < b ? g : b);
  V = maxc;
  if (minc == maxc) {
    H = S = 0;
    return;
  }
  const float cr = static_cast<float>(maxc - minc);
  const float s = cr / static_cast<float>(maxc);
  const float rc = static_cast<float>(maxc - r) / cr, gc = static_cast<float>(maxc - g) / cr;
  const float bc = static_cast<float>(maxc - b) / cr;
  float h;
  if (r == maxc) h = bc - gc;
  else if (g == maxc) h = static_cast<float>(DMX_DADD(DMX_DADD(2.0, static_cast<double>(rc)), -static_cast<double>(bc)));
  else h = static_cast<float>(DMX_DADD(DMX_DADD(4.0, static_cast<double>(gc)), -static_cast<double>(rc)));
  h = static_cast<float>(fmod(DMX_DADD(static_cast<double>(h) / 6.0, 1.0), 1.0));
  const int hi = static_cast<int>(DMX_DMUL(static_cast<double>(h), 255.0));
  const int si = static_cast<int>(DMX_DMUL(static_cast<double>(s), 255.0));
  H = Clip8(hi);
  S = Clip8(si);
}

DMX_HD int RoundHalfAway(double v) { return static_cast<int>(v < 0 ? -floor(-v + 0.5) : floor(v + 0.5)); }

DMX_HD void HsvToRgb(int h, int s, int v, int &r, int &g, int &b) {
  if (s == 0) {
    r = g = b = v;
    return;
  }
  const double h6 = DMX_DMUL(static_cast<double>(h), 6.0) / 255.0;
  const int i = static_cast<int>(floor(h6));
  const float f = static_cast<float>(DMX_DADD(h6, -static_cast<double>(i)));
  const float fs = static_cast<float>(static_cast<double>(s) / 255.0);
  const int p = Clip8(RoundHalfAway(DMX_DMUL(static_cast<double>(v), DMX_DADD(1.0, -static_cast<double>(fs)))));
  const int q = Clip8(RoundHalfAway(DMX_DMUL(static_cast<double>(v), DMX_DADD(1.0, -static_cast<double>(DMX_FMUL(fs, f))))));
  const int t = Clip8(RoundHalfAway(DMX_DMUL(static_cast<double>(v),
      DMX_DADD(1.0, -DMX_DMUL(static_cast<double>(fs), DMX_DADD(1.0, -static_cast<double>(f)))))));
  switch (i % 6) {
    case 0: r = v; g = t; b = p; break;
    case 1: r = q; g = v; b = p; break;
    case 2: r = p; g = v; b = t; break;
    case 3: r = p; g = q; b = v; break;
    case 4: r = t; g = p; b = v; break;
    default: r = v; g = p; b = q; break;
  }
}

// ---- one output pixel of a pixel op (the ops that are not lookup tables, blur aside) ----

DMX_HD void PixelValues(int op, const double *p, const uint8_t *src, int S, const uint8_t *fill, int y, int x,
                        uint8_t *out) {
  const uint8_t *px = src + (y * S + x) * 3;
  switch (op) {
    case kOpColor: {
      const int l = Luma(px[0], px[1], px[2]);
      for (int ch = 0; ch < 3; ch++) out[ch] = static_cast<uint8_t>(Blend(l, px[ch], static_cast<float>(p[0])));
      return;
    }
    case kOpGrayscale: {
      const int l = Luma(px[0], px[1], px[2]);
      out[0] = out[1] = out[2] = static_cast<uint8_t>(l);
      return;
    }
    case kOpSharpness: {
      const bool interior = S >= 3 && y > 0 && y < S - 1 && x > 0 && x < S - 1;
      for (int ch = 0; ch < 3; ch++) {
        int smooth = px[ch];  // Filter.c copies the border rows and columns (and images under 3 x 3)
        if (interior) {
          int sum = 5 * px[ch];
          for (int dy = -1; dy <= 1; dy++)
            for (int dx = -1; dx <= 1; dx++)
              if (dy || dx) sum += src[((y + dy) * S + x + dx) * 3 + ch];
          smooth = (2 * sum + 13) / 26;
        }
        out[ch] = static_cast<uint8_t>(Blend(smooth, px[ch], static_cast<float>(p[0])));
      }
      return;
    }
    case kOpAffine: AffinePixel(src, S, p, fill, y, x, out); return;
    case kOpHue: {
      int H, Sa, V, r, g, b;
      RgbToHsv(px[0], px[1], px[2], H, Sa, V);
      const int shift = static_cast<int>(static_cast<unsigned>(static_cast<int>(DMX_DMUL(p[0], 255.0))) & 0xFFu);
      HsvToRgb((H + shift) & 0xFF, Sa, V, r, g, b);
      out[0] = static_cast<uint8_t>(r);
      out[1] = static_cast<uint8_t>(g);
      out[2] = static_cast<uint8_t>(b);
      return;
    }
    default:
      for (int ch = 0; ch < 3; ch++) out[ch] = px[ch];
  }
}

// ---- GaussianBlur: 3 extended box-blur passes per axis (BoxBlur.c) ----

// PIL's box radius for a Gaussian of `radius` over `passes` passes (_gaussian_blur_radius).
DMX_HD float BoxRadius(float radius, int passes) {
  const float sigma2 = DMX_FMUL(radius, radius) / static_cast<float>(passes);
  const float L = static_cast<float>(sqrt(DMX_DADD(DMX_DMUL(12.0, static_cast<double>(sigma2)), 1.0)));
  const float l = static_cast<float>(floor(DMX_DADD(static_cast<double>(L), -1.0) / 2.0));
  float a = DMX_FMUL(DMX_FADD(DMX_FMUL(2.0f, l), 1.0f), DMX_FADD(DMX_FMUL(l, DMX_FADD(l, 1.0f)), -DMX_FMUL(3.0f, sigma2)));
  a = a / DMX_FMUL(6.0f, DMX_FADD(sigma2, -DMX_FMUL(DMX_FADD(l, 1.0f), DMX_FADD(l, 1.0f))));
  return DMX_FADD(l, a);
}

// Output value `i` of one box-blur pass along a line of `n` values (`at(k)` reads value k, edges replicated).
template <typename At>
DMX_HD int BoxBlurValue(At at, int n, int i, float R) {
  const int r = static_cast<int>(R);
  const uint32_t ww = static_cast<uint32_t>(16777216.0f / DMX_FADD(DMX_FMUL(R, 2.0f), 1.0f));
  const uint32_t fw = ((1u << 24) - static_cast<uint32_t>(2 * r + 1) * ww) / 2;
  uint32_t acc = 0;
  for (int k = -r; k <= r; k++) acc += at(ClipIndex(i + k, n));
  const uint32_t bulk = acc * ww + (at(ClipIndex(i - r - 1, n)) + at(ClipIndex(i + r + 1, n))) * fw;
  return static_cast<int>((bulk + (1u << 23)) >> 24);
}

// ---- the resize to the crop (and the flip) before the program ----

// Two selects rather than nested ones, so that a loop of it vectorises (the same values).
DMX_HD uint8_t Round8(float v) {
  float r = rintf(v);
  r = r < 0.0f ? 0.0f : r;
  r = r > 255.0f ? 255.0f : r;
  return static_cast<uint8_t>(static_cast<int>(r));
}

}  // namespace dalimix

#endif  // DALIMIX_NATIVE_POLICY_OPS_H_
