// dalimix.apply_program's GPU launch structure, shared by the CUDA operator and the CPU library's emulator of
// it: the per-sample descriptors, the kernels' bodies as __host__ __device__ functions of their block and
// thread indices, and the sequence of launches a batch takes (resize + flip, then per layer: histograms,
// lookup tables, the per-pixel apply, the box-blur passes; then the copy out). An `Exec` launches a body
// over a grid: on the GPU as a kernel, in the emulator as loops over every block and thread.
#ifndef DALIMIX_NATIVE_POLICY_APPLY_H_
#define DALIMIX_NATIVE_POLICY_APPLY_H_

#include <cstdint>

#include "fused_pixel.h"
#include "policy_ops.h"

namespace dalimix {

// One sample of a batch: its decoded crop, where it goes, and its program.
struct ProgramSample {
  const uint8_t *in = nullptr;
  int h = 0, w = 0;
  uint8_t *out = nullptr;
  bool mirror = false;
  bool cubic = false;
  int layers = 0;
  int ops[kMaxLayers] = {};
  double params[kMaxLayers][kNumParams] = {};
};

// The batch: side S of the output, and the device buffers the launches work in (uniform stride S*S*3).
struct ProgramBatch {
  int n = 0, S = 0, layers = 0;
  bool antialias = false;
  uint8_t fill[3] = {0, 0, 0};
  const ProgramSample *samples = nullptr;  // device copy on the GPU
  uint8_t *buf[3] = {nullptr, nullptr, nullptr};
  int *hist = nullptr;     // [n][4][256]: R, G, B, then L
  uint8_t *lut = nullptr;  // [n][3][256]
};

constexpr int kTileX = 32, kTileY = 8;

DMX_HD uint8_t *Image(const ProgramBatch &b, int buffer, int i) {
  return b.buf[buffer] + static_cast<int64_t>(i) * b.S * b.S * 3;
}

// Grid (tiles_x, tiles_y, n), block (kTileX, kTileY): the pixel (y, x) of sample z resized and flipped.
DMX_HD void ResizeBody(const ProgramBatch &b, int buffer, int z, int y, int x) {
  if (x >= b.S || y >= b.S) return;
  const ProgramSample &s = b.samples[z];
  const int ex = s.mirror ? b.S - 1 - x : x;
  float v[kMaxChannels];
  ResampleAt(s.in, s.h, s.w, 3, false, b.S, b.S, y, ex, b.antialias, v, s.cubic);
  uint8_t *dst = Image(b, buffer, z) + (y * b.S + x) * 3;
  for (int ch = 0; ch < 3; ch++) dst[ch] = Round8(v[ch]);
}

// Grid (n, 4), block 256: thread t counts the values of plane `k` (R, G, B or L) of sample z it is given,
// `add(bin)` adding one to the plane's histogram (an atomic on the GPU). Only where layer `l` needs it.
template <typename Add>
DMX_HD void HistBody(const ProgramBatch &b, int buffer, int l, int z, int k, int t, int threads, Add add) {
  if (!NeedsHistogram(b.samples[z].ops[l])) return;
  const uint8_t *img = Image(b, buffer, z);
  const int count = b.S * b.S;
  for (int p = t; p < count; p += threads) {
    const uint8_t *px = img + p * 3;
    add(k < 3 ? px[k] : Luma(px[0], px[1], px[2]));
  }
}

// Grid (n), block 768: entry (channel t / 256, value t % 256) of sample z's lookup table for layer l.
DMX_HD void LutBody(const ProgramBatch &b, int l, int z, int t) {
  const ProgramSample &s = b.samples[z];
  const int op = s.ops[l];
  if (!IsPointOp(op)) return;
  const int ch = t / 256, v = t % 256;
  const int *hist = b.hist + static_cast<int64_t>(z) * 4 * 256;
  const int mean = op == kOpContrast ? MeanLevel(hist + 3 * 256) : 0;
  b.lut[(static_cast<int64_t>(z) * 3 + ch) * 256 + v] = static_cast<uint8_t>(LutEntry(op, s.params[l], v, hist + ch * 256, mean));
}

// Grid (tiles_x, tiles_y, n), block (kTileX, kTileY): pixel (y, x) of sample z after layer l (`src` -> `dst`).
DMX_HD void ApplyBody(const ProgramBatch &b, int src, int dst, int l, int z, int y, int x) {
  if (x >= b.S || y >= b.S) return;
  const ProgramSample &s = b.samples[z];
  const int op = s.ops[l];
  const uint8_t *in = Image(b, src, z);
  uint8_t *out = Image(b, dst, z) + (y * b.S + x) * 3;
  const uint8_t *px = in + (y * b.S + x) * 3;
  if (IsPointOp(op)) {
    const uint8_t *lut = b.lut + static_cast<int64_t>(z) * 3 * 256;
    for (int ch = 0; ch < 3; ch++) out[ch] = lut[ch * 256 + px[ch]];
  } else if (op == kOpIdentity || op == kOpBlur) {
    for (int ch = 0; ch < 3; ch++) out[ch] = px[ch];
  } else {
    PixelValues(op, s.params[l], in, b.S, b.fill, y, x, out);
  }
}

// Grid (tiles_x, tiles_y, n): one box-blur pass of layer l's blur samples, along rows (`horizontal`) or
// columns, `src` -> `dst`.
DMX_HD void BlurBody(const ProgramBatch &b, int src, int dst, int l, bool horizontal, int z, int y, int x) {
  if (x >= b.S || y >= b.S) return;
  const ProgramSample &s = b.samples[z];
  if (s.ops[l] != kOpBlur) return;
  const float R = BoxRadius(static_cast<float>(s.params[l][0]), 3);
  const uint8_t *in = Image(b, src, z);
  uint8_t *out = Image(b, dst, z) + (y * b.S + x) * 3;
  const int S = b.S;
  for (int ch = 0; ch < 3; ch++) {
    if (R == 0.0f) {
      out[ch] = in[(y * S + x) * 3 + ch];
    } else if (horizontal) {
      out[ch] = static_cast<uint8_t>(BoxBlurValue([&](int k) { return static_cast<uint32_t>(in[(y * S + k) * 3 + ch]); },
                                                  S, x, R));
    } else {
      out[ch] = static_cast<uint8_t>(BoxBlurValue([&](int k) { return static_cast<uint32_t>(in[(k * S + x) * 3 + ch]); },
                                                  S, y, R));
    }
  }
}

// Grid (tiles_x, tiles_y, n): the result into the sample's output.
DMX_HD void CopyOutBody(const ProgramBatch &b, int buffer, int z, int y, int x) {
  if (x >= b.S || y >= b.S) return;
  const uint8_t *in = Image(b, buffer, z) + (y * b.S + x) * 3;
  uint8_t *out = b.samples[z].out + (y * b.S + x) * 3;
  for (int ch = 0; ch < 3; ch++) out[ch] = in[ch];
}

// What each layer needs launched, read on the host from the programs.
struct LayerNeeds {
  bool hist = false, lut = false, apply = false, blur = false;
};

inline LayerNeeds NeedsOf(const ProgramSample *host, int n, int l) {
  LayerNeeds need;
  for (int i = 0; i < n; i++) {
    const int op = host[i].ops[l];
    need.hist |= NeedsHistogram(op);
    need.lut |= IsPointOp(op);
    need.apply |= op != kOpIdentity && op != kOpBlur;
    need.blur |= op == kOpBlur;
  }
  return need;
}

// The launches of a batch, in order. `exec` provides Resize, Hist, Lut, Apply, Blur and CopyOut, each given
// the batch and the body's arguments; `host` are the programs as the host sees them.
template <typename Exec>
void RunPrograms(Exec &exec, const ProgramBatch &b, const ProgramSample *host) {
  int cur = 0;
  exec.Resize(b, cur);
  for (int l = 0; l < b.layers; l++) {
    const LayerNeeds need = NeedsOf(host, b.n, l);
    if (!need.apply && !need.blur) continue;  // an identity layer for every sample
    if (need.hist) exec.Hist(b, cur, l);
    if (need.lut) exec.Lut(b, l);
    const int next = cur == 0 ? 1 : 0;
    exec.Apply(b, cur, next, l);
    if (need.blur) {
      // Three passes along rows, then three along columns (BoxBlur.c): six, so the result is back in `next`.
      int from = next, to = 2;
      for (int pass = 0; pass < 6; pass++) {
        exec.Blur(b, from, to, l, pass < 3);
        const int t = from;
        from = to;
        to = t;
      }
    }
    cur = next;
  }
  exec.CopyOut(b, cur);
}

}  // namespace dalimix

#endif  // DALIMIX_NATIVE_POLICY_APPLY_H_
