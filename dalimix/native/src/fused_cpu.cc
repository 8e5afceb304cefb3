// dalimix.resample_mix on the CPU: one pass from a decoded crop to the training tensor.
//
// For every output row: resample the row of the own image (vertical then horizontal triangle filter),
// mix it with the partner's row (mixup blend or CutMix paste), flip, normalise, erase and store. Mutual
// partners are processed together so that each image of the batch is resampled exactly once.
#include <algorithm>
#include <cstring>
#include <type_traits>
#include <vector>

#include "dali/core/float16.h"
#include "dali/pipeline/operator/checkpointing/stateless_operator.h"
#include "dali/pipeline/operator/operator.h"
#include "fused_args.h"
#include "resample_cpu.h"

namespace dalimix {

using dali::CPUBackend;
using dali::OutputDesc;
using dali::TensorListShape;
using dali::Workspace;

// The float16 type written: the compiler's own where it has one (hardware conversion, vectorisable),
// else DALI's software float16. Both are IEEE half precision, rounded to nearest.
#ifdef __FLT16_MANT_DIG__
using Half = _Float16;
#else
using Half = dali::float16;
#endif
static_assert(sizeof(Half) == 2, "half precision must take 2 bytes");

template <typename Out>
inline Out StoreAs(float v);
template <>
inline float StoreAs<float>(float v) { return v; }
template <>
inline Half StoreAs<Half>(float v) { return static_cast<Half>(v); }
template <>
inline uint8_t StoreAs<uint8_t>(float v) {
  v = std::nearbyint(v);
  return static_cast<uint8_t>(v < 0.0f ? 0.0f : (v > 255.0f ? 255.0f : v));
}

// Scratch rows of one worker thread.
struct RowScratch {
  std::vector<float> tmp, own, other, mixed;
};

class ResampleMixCPU : public FusedOperatorBase<CPUBackend> {
 public:
  using FusedOperatorBase<CPUBackend>::FusedOperatorBase;

 protected:
  void RunImpl(Workspace &ws) override {
    const auto &in = ws.Input<CPUBackend>(0);
    auto &out = ws.Output<CPUBackend>(0);
    out.SetLayout(opt_.out_chw ? "CHW" : "HWC");
    if (in.type() == DALI_UINT8) RunTyped<uint8_t>(ws);
    else RunTyped<float>(ws);
  }

 private:
  template <typename In>
  void RunTyped(Workspace &ws) {
    switch (plan_.dtype) {
      case DALI_FLOAT16: RunAll<In, Half>(ws); break;
      case DALI_UINT8: RunAll<In, uint8_t>(ws); break;
      default: RunAll<In, float>(ws); break;
    }
  }

  template <typename In, typename Out>
  void RunAll(Workspace &ws) {
    const auto &in = ws.Input<CPUBackend>(0);
    auto &out = ws.Output<CPUBackend>(0);
    const int n = in.num_samples();
    std::vector<Source<In>> src(n);
    for (int i = 0; i < n; i++) {
      auto s = in.tensor_shape(i);
      Source<In> &S = src[i];
      S.data = in.template tensor<In>(i);
      S.chw = plan_.chw_in;
      S.clip = plan_.params[i].cubic && std::is_same<In, uint8_t>::value;
      InputHWC(s, plan_.chw_in, S.h, S.w, S.c);
    }
    // Tables per (image, output size) pair actually needed: the own size of each output sample.
    for (int i = 0; i < n; i++) {
      int oh = OutH(i), ow = OutW(i);
      src[i].ty.Build(src[i].h, oh, opt_.antialias, plan_.params[i].cubic);
      src[i].tx.Build(src[i].w, ow, opt_.antialias, plan_.params[i].cubic);
    }
    auto &pool = ws.GetThreadPool();
    std::vector<char> queued(n, 0);
    for (int i = 0; i < n; i++) {
      if (queued[i]) continue;
      int j = plan_.params[i].partner;
      bool mutual = j != i && plan_.params[j].partner == i && !queued[j] && OutH(i) == OutH(j) &&
                    OutW(i) == OutW(j) && plan_.params[i].cubic == plan_.params[j].cubic;
      queued[i] = 1;
      if (mutual) queued[j] = 1;
      int64_t cost = static_cast<int64_t>(src[i].h) * src[i].w * (mutual ? 2 : 1);
      pool.AddWork([&, i, j, mutual](int) {
        if (mutual) Pair<In, Out>(src, out, i, j);
        else Single<In, Out>(src, out, i);
      }, cost);
    }
    pool.RunAll();
  }

  int OutH(int i) const { return plan_.OutH(i); }
  int OutW(int i) const { return plan_.OutW(i); }

  // Samples i and j are each other's partner: resample both rows once, write both outputs.
  template <typename In, typename Out>
  void Pair(const std::vector<Source<In>> &src, dali::TensorList<CPUBackend> &out, int i, int j) {
    thread_local RowScratch s;
    const int oh = OutH(i), ow = OutW(i), c = src[i].c;
    s.own.resize(static_cast<size_t>(ow) * c + 1);
    s.other.resize(static_cast<size_t>(ow) * c + 1);
    s.mixed.resize(static_cast<size_t>(ow) * c + 1);
    Out *oi = static_cast<Out *>(out.raw_mutable_tensor(i));
    Out *oj = static_cast<Out *>(out.raw_mutable_tensor(j));
    for (int y = 0; y < oh; y++) {
      src[i].Row(y, s.own.data(), s.tmp);
      src[j].Row(y, s.other.data(), s.tmp);
      if (opt_.erase_before) {
        EraseBefore(plan_.params[i], y, ow, c, s.own.data());
        EraseBefore(plan_.params[j], y, ow, c, s.other.data());
      }
      WriteRow(oi, plan_.params[i], y, oh, ow, c, s.own.data(), s.other.data(), s.mixed.data());
      WriteRow(oj, plan_.params[j], y, oh, ow, c, s.other.data(), s.own.data(), s.mixed.data());
    }
  }

  template <typename In, typename Out>
  void Single(const std::vector<Source<In>> &src, dali::TensorList<CPUBackend> &out, int i) {
    thread_local RowScratch s;
    const SampleParams &p = plan_.params[i];
    const int oh = OutH(i), ow = OutW(i), c = src[i].c;
    s.own.resize(static_cast<size_t>(ow) * c + 1);
    s.other.resize(static_cast<size_t>(ow) * c + 1);
    s.mixed.resize(static_cast<size_t>(ow) * c + 1);
    // The partner is resampled to this sample's output size with its own tables.
    Source<In> partner = src[p.partner];
    bool need_partner = p.kind != kMixNone;
    if (need_partner && (OutH(p.partner) != oh || OutW(p.partner) != ow || plan_.params[p.partner].cubic != p.cubic)) {
      partner.ty.Build(partner.h, oh, opt_.antialias, p.cubic);
      partner.tx.Build(partner.w, ow, opt_.antialias, p.cubic);
      partner.clip = p.cubic && std::is_same<In, uint8_t>::value;
    }
    DALI_ENFORCE(!need_partner || partner.c == c, "dalimix.resample_mix: partners differ in channels");
    Out *o = static_cast<Out *>(out.raw_mutable_tensor(i));
    for (int y = 0; y < oh; y++) {
      src[i].Row(y, s.own.data(), s.tmp);
      bool row_needs = p.kind == kMixup || (p.kind == kCutMix && y >= p.box[0] && y < p.box[2]);
      if (need_partner && row_needs) partner.Row(y, s.other.data(), s.tmp);
      if (opt_.erase_before) {
        EraseBefore(p, y, ow, c, s.own.data());
        if (need_partner && row_needs) EraseBefore(plan_.params[p.partner], y, ow, c, s.other.data());
      }
      WriteRow(o, p, y, oh, ow, c, s.own.data(), s.other.data(), s.mixed.data());
    }
  }

  // With `erase_before`: normalise row `y` of an image (unflipped, HWC) and erase its own regions there,
  // before it is mixed (fills as on the GPU: `EraseFill`, indexed by the unflipped pixel).
  // The row is normalised whole, then each region's span filled in order (the last region listed wins, as
  // EraseRegionAt says).
  void EraseBefore(const SampleParams &p, int y, int ow, int c, float *row) const {
    float mean[kMaxChannels], inv[kMaxChannels];
    for (int ch = 0; ch < c; ch++) mean[ch] = Mean(ch), inv[ch] = InvStd(ch);
    for (int x = 0; x < ow; x++)
      for (int ch = 0; ch < c; ch++) row[x * c + ch] = (row[x * c + ch] - mean[ch]) * inv[ch];
    for (int r = 0; r < p.num_erase; r++) {
      const int *e = p.erase[r];
      if (y < e[0] || y >= e[2]) continue;
      for (int x = std::max(e[1], 0); x < std::min(e[3], ow); x++)
        for (int ch = 0; ch < c; ch++) row[x * c + ch] = EraseFill(opt_.erase_mode, p.seed, r, y, x, ow, c, ch);
    }
  }

  float Mean(int ch) const { return opt_.mean.size() == 1 ? opt_.mean[0] : opt_.mean[ch]; }
  float InvStd(int ch) const { return opt_.inv_std.size() == 1 ? opt_.inv_std[0] : opt_.inv_std[ch]; }

  // Mix, flip, normalise, erase and store output row `y` of one sample (rows already normalised and
  // erased with `erase_before`: mix, flip and store).
  template <typename Out>
  void WriteRow(Out *out, const SampleParams &p, int y, int oh, int ow, int c, const float *own,
                const float *other, float *mixed) const {
    const float *v = own;
    if (p.kind == kMixup) {
      const float a = p.weight, b = 1.0f - p.weight;
      const int len = ow * c;
      for (int j = 0; j < len; j++) mixed[j] = a * own[j] + b * other[j];
      v = mixed;
    } else if (p.kind == kCutMix && y >= p.box[0] && y < p.box[2] && p.box[3] > p.box[1]) {
      std::copy(own, own + ow * c, mixed);
      int x0 = std::max(p.box[1], 0), x1 = std::min(p.box[3], ow);
      if (x1 > x0) std::copy(other + x0 * c, other + x1 * c, mixed + x0 * c);
      v = mixed;
    }
    float mean[kMaxChannels], inv[kMaxChannels];
    for (int ch = 0; ch < c; ch++) {
      mean[ch] = opt_.erase_before ? 0.0f : Mean(ch);
      inv[ch] = opt_.erase_before ? 1.0f : InvStd(ch);
    }
    const int64_t plane = static_cast<int64_t>(oh) * ow;
    if (!opt_.out_chw) {
      Out *o = out + static_cast<int64_t>(y) * ow * c;
      if (c == 3) {
        const float m0 = mean[0], m1 = mean[1], m2 = mean[2], i0 = inv[0], i1 = inv[1], i2 = inv[2];
        for (int x = 0; x < ow; x++) {
          const float *s = v + 3 * (p.mirror ? ow - 1 - x : x);
          o[3 * x] = StoreAs<Out>((s[0] - m0) * i0);
          o[3 * x + 1] = StoreAs<Out>((s[1] - m1) * i1);
          o[3 * x + 2] = StoreAs<Out>((s[2] - m2) * i2);
        }
      } else {
        for (int x = 0; x < ow; x++) {
          const float *s = v + c * (p.mirror ? ow - 1 - x : x);
          for (int ch = 0; ch < c; ch++) o[c * x + ch] = StoreAs<Out>((s[ch] - mean[ch]) * inv[ch]);
        }
      }
    } else {
      for (int ch = 0; ch < c; ch++) {
        Out *o = out + ch * plane + static_cast<int64_t>(y) * ow;
        const float m = mean[ch], iv = inv[ch];
        if (p.mirror) {
          for (int x = 0; x < ow; x++) o[x] = StoreAs<Out>((v[c * (ow - 1 - x) + ch] - m) * iv);
        } else {
          for (int x = 0; x < ow; x++) o[x] = StoreAs<Out>((v[c * x + ch] - m) * iv);
        }
      }
    }
    for (int r = 0; r < (opt_.erase_before ? 0 : p.num_erase); r++) {
      const int *e = p.erase[r];
      if (y < e[0] || y >= e[2]) continue;
      int x0 = std::max(e[1], 0), x1 = std::min(e[3], ow);
      for (int x = x0; x < x1; x++) {
        for (int ch = 0; ch < c; ch++) {
          float fill = 0.0f;
          if (opt_.erase_mode == kEraseRand) {
            fill = NormalAt(p.seed, RandStream(r), static_cast<uint32_t>(ch));
          } else if (opt_.erase_mode == kErasePixel) {
            fill = NormalAt(p.seed, PixelStream(),
                            static_cast<uint32_t>((static_cast<int64_t>(y) * ow + x) * c + ch));
          }
          int64_t at = opt_.out_chw ? ch * plane + static_cast<int64_t>(y) * ow + x
                                    : (static_cast<int64_t>(y) * ow + x) * c + ch;
          out[at] = StoreAs<Out>(fill);
        }
      }
    }
  }

};

}  // namespace dalimix

namespace dali {

DALI_SCHEMA(dalimix__ResampleMix)
    .DocStr(R"(Resample, mix, flip, normalise and erase a batch of images in one pass.

Per output pixel: a triangle-filter resample of the sample's image to `size` (bilinear, centre-aligned as
DALI's linear resize; antialiased downscaling with `antialias`), then mixup (blend with `partner`
resampled the same way, own share `weight`) or CutMix (the partner's pixel inside `box`), then a
horizontal flip (`mirror`), then `(v - mean) / std`, then random erasing of the `erase` regions, stored
as `dtype` in `output_layout`.)")
    .NumInput(1)
    .NumOutput(1)
    .AddOptionalArg<int>("size", "Output (height, width); empty: each image's own size.", std::vector<int>{})
    .AddOptionalArg("antialias", "Antialias downscaling (a filter widened by the scale).", false)
    .AddOptionalArg("interp", "Resampling filter per sample: 1 bilinear (triangle), 2 bicubic (Keys, a = -0.5; "
                    "uint8 input clipped to 0..255 as an 8-bit image is).", 1, true)
    .AddOptionalArg("partner", "Index in the batch of the sample mixed in (-1: none).", -1, true)
    .AddOptionalArg("kind", "0 none, 1 mixup, 2 CutMix.", 0, true)
    .AddOptionalArg("weight", "Share of the own image in a mixup blend.", 1.0f, true)
    .AddOptionalArg<int>("box", "CutMix region (y0, x0, y1, x1) taken from the partner.",
                         std::vector<int>{0, 0, 0, 0}, true)
    .AddOptionalArg("mirror", "Flip horizontally (after mixing).", 0, true)
    .AddOptionalArg<float>("mean", "Subtracted per channel (one value or one per channel).",
                           std::vector<float>{0.0f})
    .AddOptionalArg<float>("std", "Divided per channel (one value or one per channel).",
                           std::vector<float>{1.0f})
    .AddOptionalTypeArg("dtype", "Output type: FLOAT, FLOAT16 or UINT8 (rounded to nearest); default: the "
                        "input's type.")
    .AddOptionalArg("output_layout", "\"CHW\" or \"HWC\".", "CHW")
    .AddOptionalArg("input_layout", "\"HWC\" or \"CHW\"; empty: the input's layout, else HWC.", "")
    .AddOptionalArg<int>("erase", "Up to 8 regions (y0, x0, y1, x1) per sample, in output coordinates, "
                         "filled after normalisation; empty regions are skipped.", std::vector<int>{}, true)
    .AddOptionalArg("erase_mode", "0: fill 0; 1: one normal value per region and channel; 2: normal noise "
                    "per pixel.", 0)
    .AddOptionalArg("erase_seed", "Per-sample seed of the erasing noise.", 0, true)
    .AddOptionalArg("erase_before", "Erase each image's own regions (in its unflipped coordinates) before it is "
                    "mixed, as DeiT and torchvision do; default: erase the mixed output, as timm's train.py does.",
                    false);

DALI_REGISTER_OPERATOR(dalimix__ResampleMix, ::dalimix::ResampleMixCPU, CPU);

}  // namespace dali
