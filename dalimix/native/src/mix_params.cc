// dalimix.mix_params: a batch's random draws -> partners, mixing kinds, lam, CutMix boxes and exact soft
// targets. The native twin of dalimix/ops/mix_params.py (same double-precision arithmetic, so both give
// identical targets); it is compiled with -ffp-contract=off for that reason.
#include <array>
#include <cmath>
#include <string>
#include <vector>

#include "dali/pipeline/operator/checkpointing/stateless_operator.h"
#include "dali/pipeline/operator/operator.h"
#include "fused_args.h"

namespace dalimix {

using dali::CPUBackend;
using dali::OutputDesc;
using dali::TensorListShape;
using dali::Workspace;

namespace {

// Columns of the per-sample uniform draw (as in mix_params.py).
enum { kApply, kSwitch, kCentreY, kCentreX, kMinMaxH, kMinMaxW, kNumUniforms };

double Scalar(const dali::TensorList<CPUBackend> &tl, int i, int64_t k = 0) {
  const void *p = tl.raw_tensor(i);
  switch (tl.type()) {
    case DALI_BOOL: return static_cast<const bool *>(p)[k];
    case DALI_UINT8: return static_cast<const uint8_t *>(p)[k];
    case DALI_INT32: return static_cast<const int32_t *>(p)[k];
    case DALI_UINT32: return static_cast<const uint32_t *>(p)[k];
    case DALI_INT64: return static_cast<double>(static_cast<const int64_t *>(p)[k]);
    case DALI_UINT64: return static_cast<double>(static_cast<const uint64_t *>(p)[k]);
    case DALI_INT16: return static_cast<const int16_t *>(p)[k];
    case DALI_FLOAT: return static_cast<const float *>(p)[k];
    case DALI_FLOAT64: return static_cast<const double *>(p)[k];
    default: DALI_FAIL(dali::make_string("dalimix.mix_params: unsupported input type ", tl.type()));
  }
}

int64_t Clip(int64_t v, int64_t lo, int64_t hi) { return v < lo ? lo : (v > hi ? hi : v); }

}  // namespace

class MixParamsCPU : public dali::StatelessOperator<CPUBackend> {
 public:
  explicit MixParamsCPU(const dali::OpSpec &spec) : dali::StatelessOperator<CPUBackend>(spec) {
    mode_ = spec.GetArgument<std::string>("mode");
    DALI_ENFORCE(mode_ == "batch" || mode_ == "pair" || mode_ == "elem",
                 "dalimix.mix_params: `mode` must be \"batch\", \"pair\" or \"elem\"");
    prob_ = spec.GetArgument<float>("prob");
    switch_prob_ = spec.GetArgument<float>("switch_prob");
    mixup_on_ = spec.GetArgument<bool>("mixup");
    cutmix_on_ = spec.GetArgument<bool>("cutmix");
    minmax_ = spec.GetRepeatedArgument<float>("cutmix_minmax");
    DALI_ENFORCE(minmax_.empty() || minmax_.size() == 2, "dalimix.mix_params: `cutmix_minmax` needs 2 values");
    correct_lam_ = spec.GetArgument<bool>("correct_lam");
    on_value_ = spec.GetArgument<float>("on_value");
    off_value_ = spec.GetArgument<float>("off_value");
    num_classes_ = spec.GetArgument<int>("num_classes");
    DALI_ENFORCE(num_classes_ >= 1, "dalimix.mix_params: `num_classes` must be >= 1");
    size_ = spec.GetRepeatedArgument<int>("size");
    shape_layout_ = spec.GetArgument<std::string>("shape_layout");
  }

 protected:
  bool SetupImpl(std::vector<OutputDesc> &output_desc, const Workspace &ws) override {
    int n = ws.GetInputBatchSize(0);
    output_desc.resize(5);
    for (int k = 0; k < 3; k++) output_desc[k].shape = dali::uniform_list_shape(n, dali::TensorShape<>{});
    output_desc[0].type = DALI_INT32;
    output_desc[1].type = DALI_INT32;
    output_desc[2].type = DALI_FLOAT;
    output_desc[3].shape = dali::uniform_list_shape(n, dali::TensorShape<>{4});
    output_desc[3].type = DALI_INT32;
    output_desc[4].shape = dali::uniform_list_shape(n, dali::TensorShape<>{num_classes_});
    output_desc[4].type = DALI_FLOAT;
    return true;
  }

  void RunImpl(Workspace &ws) override {
    const auto &labels = ws.Input<CPUBackend>(0);
    const auto &uniforms = ws.Input<CPUBackend>(1);
    const auto &lam_mixup = ws.Input<CPUBackend>(2);
    const auto &lam_cutmix = ws.Input<CPUBackend>(3);
    const auto &enabled = ws.Input<CPUBackend>(4);
    const int n = labels.num_samples();
    if (n == 0) return;
    int64_t height, width;
    ImageSize(ws, n, height, width);
    const bool mixing = (mixup_on_ || cutmix_on_) && prob_ > 0.0f;

    std::vector<int32_t> partner(n), kind(n);
    std::vector<double> lam(n, 1.0);
    std::vector<std::array<int32_t, 4>> box(n, {0, 0, 0, 0});
    for (int i = 0; i < n; i++) {
      int src = mode_ == "batch" ? 0 : (mode_ == "pair" ? std::min(i, n - 1 - i) : i);
      DALI_ENFORCE(uniforms.tensor_shape(src).num_elements() == kNumUniforms,
                   "dalimix.mix_params: `uniforms` needs 6 values per sample");
      double u[kNumUniforms];
      for (int k = 0; k < kNumUniforms; k++) u[k] = Scalar(uniforms, src, k);
      partner[i] = n - 1 - i;
      bool apply = Scalar(enabled, src) != 0.0 && static_cast<float>(u[kApply]) < prob_ && mixing;
      bool use_cut = (mixup_on_ && cutmix_on_) ? static_cast<float>(u[kSwitch]) < switch_prob_ : cutmix_on_;
      kind[i] = apply ? (use_cut ? 2 : 1) : 0;
      if (partner[i] == i) kind[i] = 0;
      if (kind[i] == 0) continue;
      lam[i] = use_cut ? Scalar(lam_cutmix, src) : Scalar(lam_mixup, src);
      if (kind[i] == 2) {
        box[i] = CutMixBox(lam[i], u, height, width);
        double area = static_cast<double>(box[i][2] - box[i][0]) * static_cast<double>(box[i][3] - box[i][1]);
        if (correct_lam_ || !minmax_.empty()) lam[i] = 1.0 - area / static_cast<double>(height * width);
      }
    }

    auto &out_partner = ws.Output<CPUBackend>(0);
    auto &out_kind = ws.Output<CPUBackend>(1);
    auto &out_lam = ws.Output<CPUBackend>(2);
    auto &out_box = ws.Output<CPUBackend>(3);
    auto &out_targets = ws.Output<CPUBackend>(4);
    const float off = off_value_, on = on_value_;
    std::vector<int64_t> label(n);
    for (int i = 0; i < n; i++) {
      double v = Scalar(labels, i);
      DALI_ENFORCE(v >= 0 && v < num_classes_, dali::make_string(
          "label ", static_cast<int64_t>(v), " is out of range for num_classes=", num_classes_));
      label[i] = static_cast<int64_t>(v);
    }
    for (int i = 0; i < n; i++) {
      *out_partner.mutable_tensor<int32_t>(i) = partner[i];
      *out_kind.mutable_tensor<int32_t>(i) = kind[i];
      const float l = static_cast<float>(lam[i]);
      *out_lam.mutable_tensor<float>(i) = l;
      int32_t *b = out_box.mutable_tensor<int32_t>(i);
      for (int k = 0; k < 4; k++) b[k] = box[i][k];
      // Same float32 arithmetic as NumPy's lam * own + (1 - lam) * partner's.
      float *t = out_targets.mutable_tensor<float>(i);
      const float rest = 1.0f - l;
      for (int c = 0; c < num_classes_; c++) {
        float own = c == label[i] ? on : off;
        float other = c == label[partner[i]] ? on : off;
        float a = l * own;
        float b2 = rest * other;
        t[c] = a + b2;
      }
    }
  }

 private:
  void ImageSize(const Workspace &ws, int n, int64_t &height, int64_t &width) const {
    if (!size_.empty()) {
      height = size_[0];
      width = size_[1];
      return;
    }
    DALI_ENFORCE(ws.NumInput() > 5, "dalimix.mix_params: give `size` or the images' shapes as input 5");
    const auto &shapes = ws.Input<CPUBackend>(5);
    auto first = [&](int i, int k) { return static_cast<int64_t>(Scalar(shapes, i, k)); };
    DALI_ENFORCE(shapes.tensor_shape(0).num_elements() == 3, dali::make_string(
        "mix: images must be 3-D (", shape_layout_, "), got ", shapes.tensor_shape(0).num_elements(), "-D"));
    for (int i = 1; i < n; i++) {
      for (int k = 0; k < 3; k++) {
        DALI_ENFORCE(first(i, k) == first(0, k), dali::make_string(
            "mix: images must share one shape per batch, got [", first(0, 0), ", ", first(0, 1), ", ",
            first(0, 2), "] and [", first(i, 0), ", ", first(i, 1), ", ", first(i, 2), "]"));
      }
    }
    bool chw = shape_layout_ == "CHW";
    height = first(0, chw ? 1 : 0);
    width = first(0, chw ? 2 : 1);
  }

  // As timm draws them: sides int(H * sqrt(1 - lam)) around a uniform centre, edges at
  // centre - cut // 2 and centre + (cut + 1) // 2, clipped; or minmax sides placed inside the image.
  std::array<int32_t, 4> CutMixBox(double lam, const double *u, int64_t h, int64_t w) const {
    if (!minmax_.empty()) {
      int64_t lo_h = static_cast<int64_t>(h * static_cast<double>(minmax_[0]));
      int64_t hi_h = static_cast<int64_t>(h * static_cast<double>(minmax_[1]));
      int64_t lo_w = static_cast<int64_t>(w * static_cast<double>(minmax_[0]));
      int64_t hi_w = static_cast<int64_t>(w * static_cast<double>(minmax_[1]));
      int64_t ch = lo_h + static_cast<int64_t>(std::floor(u[kMinMaxH] * std::max<int64_t>(hi_h - lo_h, 0)));
      int64_t cw = lo_w + static_cast<int64_t>(std::floor(u[kMinMaxW] * std::max<int64_t>(hi_w - lo_w, 0)));
      ch = Clip(ch, 0, h);
      cw = Clip(cw, 0, w);
      int64_t y0 = std::min(static_cast<int64_t>(std::floor(u[kCentreY] * (h - ch + 1))), h - ch);
      int64_t x0 = std::min(static_cast<int64_t>(std::floor(u[kCentreX] * (w - cw + 1))), w - cw);
      return {static_cast<int32_t>(y0), static_cast<int32_t>(x0), static_cast<int32_t>(y0 + ch),
              static_cast<int32_t>(x0 + cw)};
    }
    double ratio = std::sqrt(std::min(std::max(1.0 - lam, 0.0), 1.0));
    int64_t cut_h = static_cast<int64_t>(h * ratio);
    int64_t cut_w = static_cast<int64_t>(w * ratio);
    int64_t cy = std::min(static_cast<int64_t>(std::floor(u[kCentreY] * h)), h - 1);
    int64_t cx = std::min(static_cast<int64_t>(std::floor(u[kCentreX] * w)), w - 1);
    return {static_cast<int32_t>(Clip(cy - cut_h / 2, 0, h)), static_cast<int32_t>(Clip(cx - cut_w / 2, 0, w)),
            static_cast<int32_t>(Clip(cy + (cut_h + 1) / 2, 0, h)),
            static_cast<int32_t>(Clip(cx + (cut_w + 1) / 2, 0, w))};
  }

  std::string mode_;
  // Thresholds are the smallest float32 >= the probability, so that comparing a float32 draw with them
  // decides exactly as comparing it with the float64 probability does.
  float prob_, switch_prob_;
  bool mixup_on_, cutmix_on_;
  std::vector<float> minmax_;
  bool correct_lam_;
  float on_value_, off_value_;
  int num_classes_;
  std::vector<int> size_;
  std::string shape_layout_;
};

}  // namespace dalimix

namespace dali {

DALI_SCHEMA(dalimix__MixParams)
    .DocStr(R"(mixup / CutMix parameters of a batch from DALI's random draws (timm's semantics).

Inputs: labels, uniforms (6 per sample: apply, switch, box centre y, x, minmax sides h, w), lam drawn for
mixup, lam drawn for CutMix, enabled; optionally the images' shapes (when `size` is not given).
Outputs: partner (the batch reversed), kind (0 none, 1 mixup, 2 CutMix), lam (the own label's weight and
the own image's share), box (y0, x0, y1, x1) and soft targets [num_classes].)")
    .NumInput(5, 6)
    .NumOutput(5)
    .AddOptionalArg("mode", "\"batch\", \"pair\" or \"elem\": what shares one draw.", "batch")
    .AddOptionalArg("prob", "Chance to mix (a draw mixes when below it).", 1.0f)
    .AddOptionalArg("switch_prob", "Chance of CutMix rather than mixup when both are on.", 0.5f)
    .AddOptionalArg("mixup", "mixup on.", true)
    .AddOptionalArg("cutmix", "CutMix on.", true)
    .AddOptionalArg<float>("cutmix_minmax", "(min, max) box sides as fractions of the image.",
                           std::vector<float>{})
    .AddOptionalArg("correct_lam", "CutMix lam is the pasted area after clipping.", true)
    .AddOptionalArg("on_value", "Target of the label (1 - eps + eps / K with label smoothing eps).", 1.0f)
    .AddOptionalArg("off_value", "Target of the other classes (eps / K).", 0.0f)
    .AddOptionalArg("num_classes", "Number of classes.", 1000)
    .AddOptionalArg<int>("size", "Image (height, width); empty: read input 5.", std::vector<int>{})
    .AddOptionalArg("shape_layout", "Layout of the shapes in input 5: \"HWC\" or \"CHW\".", "HWC");

DALI_REGISTER_OPERATOR(dalimix__MixParams, ::dalimix::MixParamsCPU, CPU);

}  // namespace dali
