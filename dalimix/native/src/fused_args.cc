// Reading the fused operator's arguments: per-sample argument inputs of any numeric type, checked and
// converted once per batch.
#include "fused_args.h"

#include <cstring>

namespace dalimix {

using dali::TensorList;
using dali::CPUBackend;

namespace {

// Element `k` of sample `i` of a CPU tensor list, converted to double whatever its numeric type.
double ValueAt(const TensorList<CPUBackend> &tl, int i, int64_t k) {
  const void *p = tl.raw_tensor(i);
  switch (tl.type()) {
    case DALI_BOOL: return static_cast<const bool *>(p)[k];
    case DALI_UINT8: return static_cast<const uint8_t *>(p)[k];
    case DALI_INT8: return static_cast<const int8_t *>(p)[k];
    case DALI_UINT16: return static_cast<const uint16_t *>(p)[k];
    case DALI_INT16: return static_cast<const int16_t *>(p)[k];
    case DALI_UINT32: return static_cast<const uint32_t *>(p)[k];
    case DALI_INT32: return static_cast<const int32_t *>(p)[k];
    case DALI_UINT64: return static_cast<double>(static_cast<const uint64_t *>(p)[k]);
    case DALI_INT64: return static_cast<double>(static_cast<const int64_t *>(p)[k]);
    case DALI_FLOAT: return static_cast<const float *>(p)[k];
    case DALI_FLOAT64: return static_cast<const double *>(p)[k];
    default:
      DALI_FAIL(dali::make_string("dalimix: unsupported argument type ", tl.type()));
  }
}

// Per-sample values of argument `name` with `count` elements each; `fallback` when not given.
std::vector<double> PerSample(const dali::OpSpec &spec, const dali::Workspace &ws, const std::string &name,
                              int n, int count, const std::vector<double> &fallback, bool variable = false) {
  std::vector<double> out;
  if (spec.HasTensorArgument(name)) {
    const auto &tl = ws.ArgumentInput(name);
    DALI_ENFORCE(tl.num_samples() == n, dali::make_string("dalimix: argument `", name, "` has ",
                 tl.num_samples(), " samples for a batch of ", n));
    out.resize(static_cast<size_t>(n) * count, 0.0);
    for (int i = 0; i < n; i++) {
      int64_t vol = tl.tensor_shape(i).num_elements();
      DALI_ENFORCE(variable ? vol <= count && vol % 4 == 0 : vol == count,
                   dali::make_string("dalimix: argument `", name, "` must have ", count,
                                     variable ? " or fewer (a multiple of 4)" : "",
                                     " values per sample, got ", vol));
      for (int64_t k = 0; k < vol; k++) out[static_cast<size_t>(i) * count + k] = ValueAt(tl, i, k);
    }
    return out;
  }
  out.reserve(static_cast<size_t>(n) * count);
  for (int i = 0; i < n; i++) out.insert(out.end(), fallback.begin(), fallback.end());
  return out;
}

}  // namespace

FusedOptions ReadFusedOptions(const dali::OpSpec &spec) {
  FusedOptions o;
  auto size = spec.GetRepeatedArgument<int>("size");
  DALI_ENFORCE(size.empty() || (size.size() == 2 && size[0] > 0 && size[1] > 0),
               "dalimix: `size` must be empty or (height, width) > 0");
  if (!size.empty()) {
    o.out_h = size[0];
    o.out_w = size[1];
  }
  o.antialias = spec.GetArgument<bool>("antialias");
  std::string layout = spec.GetArgument<std::string>("output_layout");
  DALI_ENFORCE(layout == "CHW" || layout == "HWC",
               dali::make_string("dalimix: `output_layout` must be \"CHW\" or \"HWC\", got \"", layout, "\""));
  o.out_chw = layout == "CHW";
  if (!spec.TryGetArgument(o.dtype, "dtype")) o.dtype = DALI_NO_TYPE;  // the input's type
  DALI_ENFORCE(o.dtype == DALI_NO_TYPE || o.dtype == DALI_FLOAT || o.dtype == DALI_FLOAT16 ||
               o.dtype == DALI_UINT8, "dalimix: `dtype` must be FLOAT, FLOAT16 or UINT8");
  o.mean = spec.GetRepeatedArgument<float>("mean");
  auto stddev = spec.GetRepeatedArgument<float>("std");
  DALI_ENFORCE(!o.mean.empty() && !stddev.empty() && o.mean.size() <= kMaxChannels &&
               stddev.size() <= kMaxChannels, "dalimix: `mean` and `std` need 1 to 4 values");
  for (float s : stddev) {
    DALI_ENFORCE(s > 0.0f, "dalimix: `std` values must be > 0");
    o.inv_std.push_back(1.0f / s);
  }
  o.erase_mode = spec.GetArgument<int>("erase_mode");
  DALI_ENFORCE(o.erase_mode >= kEraseConst && o.erase_mode <= kErasePixel,
               "dalimix: `erase_mode` must be 0 (const), 1 (rand) or 2 (pixel)");
  o.erase_before = spec.GetArgument<bool>("erase_before");
  o.input_layout = spec.GetArgument<std::string>("input_layout");
  DALI_ENFORCE(o.input_layout.empty() || o.input_layout == "HWC" || o.input_layout == "CHW",
               "dalimix: `input_layout` must be \"\", \"HWC\" or \"CHW\"");
  return o;
}

std::vector<SampleParams> ReadSampleParams(const dali::OpSpec &spec, const dali::Workspace &ws, int n) {
  auto partner = PerSample(spec, ws, "partner", n, 1, {-1.0});
  auto kind = PerSample(spec, ws, "kind", n, 1, {0.0});
  auto weight = PerSample(spec, ws, "weight", n, 1, {1.0});
  auto box = PerSample(spec, ws, "box", n, 4, {0.0, 0.0, 0.0, 0.0});
  auto mirror = PerSample(spec, ws, "mirror", n, 1, {0.0});
  auto seed = PerSample(spec, ws, "erase_seed", n, 1, {0.0});
  const double fixed_interp = spec.HasTensorArgument("interp") ? 1.0 : spec.GetArgument<int>("interp");
  auto interp = PerSample(spec, ws, "interp", n, 1, {fixed_interp});
  auto erase = PerSample(spec, ws, "erase", n, 4 * kMaxEraseRegions,
                         std::vector<double>(4 * kMaxEraseRegions, 0.0), true);
  std::vector<SampleParams> out(n);
  for (int i = 0; i < n; i++) {
    SampleParams &p = out[i];
    p.partner = partner[i] < 0 ? i : static_cast<int>(partner[i]);
    DALI_ENFORCE(p.partner < n, dali::make_string("dalimix: `partner` of sample ", i, " is ", p.partner,
                                                  ", outside the batch of ", n));
    p.kind = static_cast<int>(kind[i]);
    DALI_ENFORCE(p.kind >= kMixNone && p.kind <= kCutMix,
                 dali::make_string("dalimix: `kind` must be 0, 1 or 2, got ", p.kind));
    if (p.partner == i) p.kind = kMixNone;
    p.weight = static_cast<float>(weight[i]);
    for (int k = 0; k < 4; k++) p.box[k] = static_cast<int>(box[4 * i + k]);
    p.mirror = mirror[i] != 0.0;
    p.seed = static_cast<uint32_t>(static_cast<int64_t>(seed[i]));
    DALI_ENFORCE(interp[i] == 1.0 || interp[i] == 2.0, dali::make_string(
        "dalimix: `interp` must be 1 (bilinear) or 2 (bicubic), sample ", i, " has ", interp[i]));
    p.cubic = interp[i] == 2.0;
    for (int r = 0; r < kMaxEraseRegions; r++) {
      const double *e = &erase[(static_cast<size_t>(i) * kMaxEraseRegions + r) * 4];
      if (e[2] > e[0] && e[3] > e[1]) {
        for (int k = 0; k < 4; k++) p.erase[p.num_erase][k] = static_cast<int>(e[k]);
        p.num_erase++;
      }
    }
  }
  return out;
}

namespace {

bool InputIsCHW(const FusedOptions &opt, const dali::TensorLayout &layout) {
  if (!opt.input_layout.empty()) return opt.input_layout == "CHW";
  if (layout.empty() || layout == "HWC") return false;
  if (layout == "CHW") return true;
  DALI_FAIL(dali::make_string("dalimix.resample_mix: images must be laid out HWC or CHW, got \"",
                              layout.str(), "\""));
}

}  // namespace

void PlanFused(const dali::OpSpec &spec, const dali::Workspace &ws, const FusedOptions &opt, FusedPlan &plan) {
  const auto &shape = ws.GetInputShape(0);
  const int n = shape.num_samples();
  DALI_ENFORCE(shape.sample_dim() == 3, dali::make_string(
      "dalimix.resample_mix: images must be 3-D (HWC or CHW), got ", shape.sample_dim(), "-D"));
  auto type = ws.GetInputDataType(0);
  DALI_ENFORCE(type == DALI_UINT8 || type == DALI_FLOAT,
               "dalimix.resample_mix: images must be uint8 or float32");
  plan.chw_in = InputIsCHW(opt, ws.GetInputLayout(0));
  plan.dtype = opt.dtype == DALI_NO_TYPE ? type : opt.dtype;
  plan.params = ReadSampleParams(spec, ws, n);
  plan.out_shape.resize(n, 3);
  plan.out_hw.resize(2 * n);
  for (int i = 0; i < n; i++) {
    auto s = shape.tensor_shape(i);
    int h, w, c;
    InputHWC(s, plan.chw_in, h, w, c);
    DALI_ENFORCE(c >= 1 && c <= kMaxChannels, dali::make_string(
        "dalimix.resample_mix: images must have 1 to 4 channels, sample ", i, " has ", c));
    DALI_ENFORCE(opt.mean.size() == 1 || static_cast<int>(opt.mean.size()) == c,
                 "dalimix.resample_mix: `mean` needs one value or one per channel");
    DALI_ENFORCE(opt.inv_std.size() == 1 || static_cast<int>(opt.inv_std.size()) == c,
                 "dalimix.resample_mix: `std` needs one value or one per channel");
    DALI_ENFORCE(h > 0 && w > 0, dali::make_string("dalimix.resample_mix: sample ", i, " is empty"));
    const SampleParams &p = plan.params[i];
    if (p.kind != kMixNone) {
      auto ps = shape.tensor_shape(p.partner);
      int ph, pw, pc;
      InputHWC(ps, plan.chw_in, ph, pw, pc);
      DALI_ENFORCE(pc == c, dali::make_string("dalimix.resample_mix: samples ", i, " and ", p.partner,
                                              " are mixed but have ", c, " and ", pc, " channels"));
      DALI_ENFORCE(opt.out_h || ps == s, dali::make_string(
          "mix: images must share one shape per batch, got ", s, " and ", ps));
    }
    int oh = opt.out_h ? opt.out_h : h, ow = opt.out_w ? opt.out_w : w;
    plan.out_hw[2 * i] = oh;
    plan.out_hw[2 * i + 1] = ow;
    if (opt.out_chw) plan.out_shape.set_tensor_shape(i, {c, oh, ow});
    else plan.out_shape.set_tensor_shape(i, {oh, ow, c});
  }
}

}  // namespace dalimix
