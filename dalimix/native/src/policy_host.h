// Reading dalimix.apply_program's arguments and inputs into per-sample programs (both backends). Host code.
#ifndef DALIMIX_NATIVE_POLICY_HOST_H_
#define DALIMIX_NATIVE_POLICY_HOST_H_

#include <algorithm>
#include <vector>

#include "dali/pipeline/operator/operator.h"
#include "policy_apply.h"

namespace dalimix {

struct ProgramOptions {
  int S = 0;
  bool antialias = false;
  uint8_t fill[3] = {0, 0, 0};
};

// A per-sample scalar argument input of any integer type (e.g. a coin flip) as an int.
inline int ScalarAt(const dali::Workspace &ws, const char *name, int i) {
  const auto &t = ws.ArgumentInput(name);
  const void *p = t.raw_tensor(i);
  switch (t.type()) {
    case DALI_BOOL: return *static_cast<const bool *>(p);
    case DALI_UINT8: return *static_cast<const uint8_t *>(p);
    case DALI_INT8: return *static_cast<const int8_t *>(p);
    case DALI_INT16: return *static_cast<const int16_t *>(p);
    case DALI_UINT16: return *static_cast<const uint16_t *>(p);
    case DALI_INT32: return *static_cast<const int32_t *>(p);
    case DALI_UINT32: return static_cast<int>(*static_cast<const uint32_t *>(p));
    case DALI_INT64: return static_cast<int>(*static_cast<const int64_t *>(p));
    case DALI_FLOAT: return static_cast<int>(*static_cast<const float *>(p));
    default: DALI_FAIL(dali::make_string("dalimix.apply_program: `", name, "` must be a number per sample"));
  }
}

inline ProgramOptions ReadOptions(const dali::OpSpec &spec) {
  ProgramOptions o;
  auto size = spec.GetRepeatedArgument<int>("size");
  DALI_ENFORCE(size.size() == 2 && size[0] == size[1] && size[0] > 0,
               "dalimix.apply_program: `size` must be (S, S), S > 0");
  o.S = size[0];
  o.antialias = spec.GetArgument<bool>("antialias");
  auto fill = spec.GetRepeatedArgument<float>("fill");
  DALI_ENFORCE(fill.size() == 3, "dalimix.apply_program: `fill` takes 3 values (R, G, B)");
  for (int c = 0; c < 3; c++) o.fill[c] = static_cast<uint8_t>(std::min(255.0f, std::max(0.0f, fill[c])));
  return o;
}

// Each sample's program and options from the operator's inputs (CPU: ops int32 [L], params float64 [L, 8]).
template <typename Backend>
std::vector<ProgramSample> ReadSamples(const dali::OpSpec &spec, const dali::Workspace &ws, int &layers) {
  const auto &images = ws.Input<Backend>(0);
  const auto &ops = ws.Input<dali::CPUBackend>(1);
  const auto &params = ws.Input<dali::CPUBackend>(2);
  const int n = images.num_samples();
  DALI_ENFORCE(ops.num_samples() == n && params.num_samples() == n,
               "dalimix.apply_program: `ops` and `params` need one program per image");
  DALI_ENFORCE(ops.type() == DALI_INT32 && params.type() == DALI_FLOAT64,
               "dalimix.apply_program: `ops` must be int32 and `params` float64 (from dalimix.policy_program)");
  std::vector<ProgramSample> out(n);
  layers = 0;
  const int default_interp = spec.HasTensorArgument("interp") ? 1 : spec.GetArgument<int>("interp");
  for (int i = 0; i < n; i++) {
    ProgramSample &s = out[i];
    const auto shape = images.tensor_shape(i);
    DALI_ENFORCE(shape.sample_dim() == 3 && shape[2] == 3, dali::make_string(
        "dalimix.apply_program: images must be uint8 HWC with 3 channels, sample ", i, " has shape ", shape));
    s.h = static_cast<int>(shape[0]);
    s.w = static_cast<int>(shape[1]);
    s.layers = static_cast<int>(ops.tensor_shape(i).num_elements());
    DALI_ENFORCE(s.layers <= kMaxLayers && params.tensor_shape(i).num_elements() == s.layers * kNumParams,
                 dali::make_string("dalimix.apply_program: sample ", i, " has a program of ", s.layers, " layers (at "
                                   "most ", kMaxLayers, ") with ", params.tensor_shape(i).num_elements(), " params"));
    layers = std::max(layers, s.layers);
    const int32_t *o = ops.tensor<int32_t>(i);
    const double *p = params.tensor<double>(i);
    for (int l = 0; l < s.layers; l++) {
      DALI_ENFORCE(o[l] >= kOpIdentity && o[l] <= kOpHue, dali::make_string("dalimix.apply_program: unknown op ", o[l]));
      s.ops[l] = o[l];
      for (int k = 0; k < kNumParams; k++) s.params[l][k] = p[l * kNumParams + k];
    }
  }
  const bool has_mirror = spec.HasTensorArgument("mirror"), has_interp = spec.HasTensorArgument("interp");
  for (int i = 0; i < n; i++) {
    out[i].mirror = has_mirror && ScalarAt(ws, "mirror", i) != 0;
    const int interp = has_interp ? ScalarAt(ws, "interp", i) : default_interp;
    DALI_ENFORCE(interp == 1 || interp == 2, "dalimix.apply_program: `interp` must be 1 (bilinear) or 2 (bicubic)");
    out[i].cubic = interp == 2;
  }
  return out;
}


}  // namespace dalimix

#endif  // DALIMIX_NATIVE_POLICY_HOST_H_
