// dalimix.policy_program: from each sample's random draws to the program its augmentation policy applies,
// as timm's level functions and torchvision's magnitude tables compute it. The C++ twin of
// dalimix/ops/policy/program.py, identical bit for bit: double arithmetic where Python computes in floats,
// float where NumPy / torch do, compiled without FMA contraction.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <string>
#include <vector>

#include "dali/pipeline/operator/checkpointing/stateless_operator.h"
#include "dali/pipeline/operator/operator.h"
#include "policy_ops.h"

namespace dalimix {

namespace {

using dali::CPUBackend;
using dali::TensorListShape;
using dali::Workspace;

enum PolicyKind : int { kNone = -1, kTimmRand = 0, kTimm3a = 1, kTvRa = 2, kTvTaWide = 3, kTvImageNet = 4 };
constexpr int kUniformsPerLayer = 8;
constexpr double kPi = 3.14159265358979323846;
const double kNaN = std::numeric_limits<double>::quiet_NaN();

struct Layer {
  int op = kOpIdentity;
  double p[kNumParams] = {0, 0, 0, 0, 0, 0, 0, 0};
};

Layer MakeLayer(int op, std::initializer_list<double> values) {
  Layer l;
  l.op = op;
  int i = 0;
  for (double v : values) l.p[i++] = v;
  return l;
}

double Radians(double deg) { return deg * (kPi / 180.0); }
double Degrees(double rad) { return rad * (180.0 / kPi); }

// Python's round(v, 15): decimal rounding of the exact binary value, half to even.
double Round15(double v) {
  char buf[64];
  snprintf(buf, sizeof(buf), "%.15f", v);
  return strtod(buf, nullptr);
}

// Python's `a % 360.0` (the result has the sign of the divisor).
double PyMod360(double a) {
  double r = std::fmod(a, 360.0);
  if (r != 0.0 && (r < 0.0) != (360.0 < 0.0)) r += 360.0;
  return r;
}

Layer Affine(double a, double b, double c, double d, double e, double f, int interp, double rotation = kNaN) {
  return MakeLayer(kOpAffine, {a, b, c, d, e, f, static_cast<double>(interp), rotation});
}

Layer Rotation(double degrees, int size, int interp) {
  const double angle = -Radians(PyMod360(degrees));
  double m[6] = {Round15(std::cos(angle)), Round15(std::sin(angle)), 0.0, Round15(-std::sin(angle)),
                 Round15(std::cos(angle)), 0.0};
  const double cx = size / 2.0, cy = size / 2.0;
  m[2] = m[0] * -cx + m[1] * -cy + m[2] + cx;
  m[5] = m[3] * -cx + m[4] * -cy + m[5] + cy;
  return Affine(m[0], m[1], m[2], m[3], m[4], m[5], interp, degrees);
}

int Pick(int n, double u) { return std::min(static_cast<int>(u * n), n - 1); }

struct Args {
  int kind = kNone;
  std::vector<std::string> ops;
  int layers = 0;
  double magnitude = 9.0, magnitude_std = 0.0, magnitude_max = 0.0, prob = 0.5;
  bool std_inf = false;
  std::vector<float> weights;
  int interp = 1;  // -1: random bilinear / bicubic per op
  int size = 224;
  bool jitter = false;
  double jitter_range[8] = {1, 1, 1, 1, 1, 1, 0, 0};
};

// timm's op `name` at clipped magnitude `m`.
Layer TimmOp(const std::string &name, double m, bool negate, int interp, int size, double blur_u) {
  const double level = m / 10.0;
  const double sign = negate ? -1.0 : 1.0;
  if (name == "AutoContrast") return MakeLayer(kOpAutoContrast, {});
  if (name == "Equalize") return MakeLayer(kOpEqualize, {});
  if (name == "Invert") return MakeLayer(kOpInvert, {});
  if (name == "Rotate") return Rotation(sign * level * 30.0, size, interp);
  if (name == "Posterize" || name == "PosterizeIncreasing" || name == "PosterizeOriginal") {
    int bits = static_cast<int>(level * 4);
    if (name == "PosterizeIncreasing") bits = 4 - bits;
    if (name == "PosterizeOriginal") bits = bits + 4;
    return bits >= 8 ? MakeLayer(kOpIdentity, {}) : MakeLayer(kOpPosterize, {static_cast<double>(bits)});
  }
  if (name == "Solarize" || name == "SolarizeIncreasing") {
    const int t = std::min(256, static_cast<int>(level * 256));
    return MakeLayer(kOpSolarize, {static_cast<double>(name == "Solarize" ? t : 256 - t)});
  }
  if (name == "SolarizeAdd") return MakeLayer(kOpSolarizeAdd, {static_cast<double>(std::min(128, static_cast<int>(level * 110))), 128.0});
  struct { const char *base; int op; } enhance[] = {{"Color", kOpColor}, {"Contrast", kOpContrast},
                                                   {"Brightness", kOpBrightness}, {"Sharpness", kOpSharpness}};
  for (const auto &e : enhance) {
    if (name == e.base) return MakeLayer(e.op, {level * 1.8 + 0.1});
    if (name == std::string(e.base) + "Increasing") return MakeLayer(e.op, {std::max(0.1, 1.0 + sign * level * 0.9)});
  }
  if (name == "ShearX") return Affine(1.0, sign * level * 0.3, 0.0, 0.0, 1.0, 0.0, interp);
  if (name == "ShearY") return Affine(1.0, 0.0, 0.0, sign * level * 0.3, 1.0, 0.0, interp);
  if (name == "TranslateXRel") return Affine(1.0, 0.0, sign * level * 0.45 * size, 0.0, 1.0, 0.0, interp);
  if (name == "TranslateYRel") return Affine(1.0, 0.0, 0.0, 0.0, 1.0, sign * level * 0.45 * size, interp);
  if (name == "Desaturate") {
    const double d = std::max(0.5, std::min(1.0, 0.5 + 0.5 * level));
    return MakeLayer(kOpColor, {std::min(1.0, std::max(0.0, 1.0 - d))});
  }
  if (name == "GaussianBlur") return MakeLayer(kOpBlur, {std::max(0.1, std::min(2.0, 0.1 + 1.9 * level))});
  if (name == "GaussianBlurRand") {
    const double top = 2.0 * std::max(0.0, std::min(1.0, level));
    return MakeLayer(kOpBlur, {0.1 + (top - 0.1) * blur_u});
  }
  DALI_FAIL(dali::make_string("dalimix.policy_program: unknown timm op \"", name, "\""));
}

// torchvision's magnitude of `name` at `bin` of `bins` (NumPy float32 linspace; torch's posterize table).
double TvMagnitude(const std::string &name, int bins, int bin, int size, bool wide, bool &signed_op) {
  signed_op = true;
  double top = -1.0;
  if (name == "ShearX" || name == "ShearY") top = wide ? 0.99 : 0.3;
  else if (name == "TranslateX" || name == "TranslateY") top = wide ? 32.0 : 150.0 / 331.0 * size;
  else if (name == "Rotate") top = wide ? 135.0 : 30.0;
  else if (name == "Brightness" || name == "Color" || name == "Contrast" || name == "Sharpness") top = wide ? 0.99 : 0.9;
  if (top >= 0.0) {  // np.linspace(0, top, bins, dtype=float32)
    const double step = top / (bins - 1);
    const double v = bin == bins - 1 ? top : bin * step;
    return static_cast<double>(static_cast<float>(v));
  }
  signed_op = false;
  if (name == "Posterize") {
    const float r = std::nearbyintf(static_cast<float>(bin) / static_cast<float>((bins - 1) / (wide ? 6.0 : 4.0)));
    return static_cast<double>(8.0f - r);
  }
  if (name == "Solarize") {  // np.linspace(255, 0, bins, dtype=float32)
    const double step = (0.0 - 255.0) / (bins - 1);
    const double v = bin == bins - 1 ? 0.0 : bin * step + 255.0;
    return static_cast<double>(static_cast<float>(v));
  }
  return 0.0;
}

Layer TvOp(const std::string &name, double magnitude, int interp, int size) {
  if (name == "Identity") return MakeLayer(kOpIdentity, {});
  if (name == "ShearX" || name == "ShearY") {
    const double t = std::tan(Radians(Degrees(std::atan(magnitude))));
    return name == "ShearX" ? Affine(1.0, t, 0.0, 0.0, 1.0, 0.0, interp) : Affine(1.0, 0.0, 0.0, t, 1.0, 0.0, interp);
  }
  if (name == "TranslateX" || name == "TranslateY") {
    const double t = static_cast<double>(static_cast<long long>(magnitude));
    return name == "TranslateX" ? Affine(1.0, 0.0, -t, 0.0, 1.0, 0.0, interp) : Affine(1.0, 0.0, 0.0, 0.0, 1.0, -t, interp);
  }
  if (name == "Rotate") return Rotation(magnitude, size, interp);
  if (name == "Brightness") return MakeLayer(kOpBrightness, {1.0 + magnitude});
  if (name == "Color") return MakeLayer(kOpColor, {1.0 + magnitude});
  if (name == "Contrast") return MakeLayer(kOpContrast, {1.0 + magnitude});
  if (name == "Sharpness") return MakeLayer(kOpSharpness, {1.0 + magnitude});
  if (name == "Posterize") {
    const int bits = static_cast<int>(magnitude);
    return bits >= 8 ? MakeLayer(kOpIdentity, {}) : MakeLayer(kOpPosterize, {static_cast<double>(bits)});
  }
  if (name == "Solarize") return MakeLayer(kOpSolarize, {magnitude});
  if (name == "AutoContrast") return MakeLayer(kOpAutoContrast, {});
  if (name == "Equalize") return MakeLayer(kOpEqualize, {});
  if (name == "Invert") return MakeLayer(kOpInvert, {});
  DALI_FAIL(dali::make_string("dalimix.policy_program: unknown torchvision op \"", name, "\""));
}

const char *kTvOps[] = {"Identity", "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness", "Color",
                        "Contrast", "Sharpness", "Posterize", "Solarize", "AutoContrast", "Equalize"};

struct Step { const char *name; double p; int bin; };
const Step kImageNet[25][2] = {
    {{"Posterize", 0.4, 8}, {"Rotate", 0.6, 9}}, {{"Solarize", 0.6, 5}, {"AutoContrast", 0.6, -1}},
    {{"Equalize", 0.8, -1}, {"Equalize", 0.6, -1}}, {{"Posterize", 0.6, 7}, {"Posterize", 0.6, 6}},
    {{"Equalize", 0.4, -1}, {"Solarize", 0.2, 4}}, {{"Equalize", 0.4, -1}, {"Rotate", 0.8, 8}},
    {{"Solarize", 0.6, 3}, {"Equalize", 0.6, -1}}, {{"Posterize", 0.8, 5}, {"Equalize", 1.0, -1}},
    {{"Rotate", 0.2, 3}, {"Solarize", 0.6, 8}}, {{"Equalize", 0.6, -1}, {"Posterize", 0.4, 6}},
    {{"Rotate", 0.8, 8}, {"Color", 0.4, 0}}, {{"Rotate", 0.4, 9}, {"Equalize", 0.6, -1}},
    {{"Equalize", 0.0, -1}, {"Equalize", 0.8, -1}}, {{"Invert", 0.6, -1}, {"Equalize", 1.0, -1}},
    {{"Color", 0.6, 4}, {"Contrast", 1.0, 8}}, {{"Rotate", 0.8, 8}, {"Color", 1.0, 2}},
    {{"Color", 0.8, 8}, {"Solarize", 0.8, 7}}, {{"Sharpness", 0.4, 7}, {"Invert", 0.6, -1}},
    {{"ShearX", 0.6, 5}, {"Equalize", 1.0, -1}}, {{"Color", 0.4, 0}, {"Equalize", 0.6, -1}},
    {{"Equalize", 0.4, -1}, {"Solarize", 0.2, 4}}, {{"Solarize", 0.6, 5}, {"AutoContrast", 0.6, -1}},
    {{"Invert", 0.6, -1}, {"Equalize", 1.0, -1}}, {{"Color", 0.6, 4}, {"Contrast", 1.0, 8}},
    {{"Equalize", 0.8, -1}, {"Equalize", 0.6, -1}}};

int Interp(const Args &a, double u) { return a.interp >= 0 ? a.interp : (u < 0.5 ? 1 : 2); }

double TimmMagnitude(const Args &a, double base, double u, double z) {
  double m = base;
  if (a.std_inf) m = u * base;
  else if (a.magnitude_std > 0) m = base + a.magnitude_std * z;
  return std::max(0.0, std::min(m, a.magnitude_max > 0 ? a.magnitude_max : 10.0));
}

int Weighted(const std::vector<float> &weights, const std::vector<char> &taken, double u) {
  std::vector<double> w(weights.size());
  double total = 0.0;
  for (size_t i = 0; i < w.size(); i++) {
    w[i] = taken[i] ? 0.0 : static_cast<double>(weights[i]);
    total += w[i];
  }
  double acc = 0.0;
  int last = 0;
  for (size_t i = 0; i < w.size(); i++) {
    acc += w[i] / total;
    if (u < acc) return static_cast<int>(i);
    if (w[i] > 0) last = static_cast<int>(i);
  }
  return last;
}

void PolicyLayers(const Args &a, const double *u, const double *z, std::vector<Layer> &out) {
  if (a.kind == kTimmRand) {
    std::vector<char> taken(a.ops.size(), 0);
    for (int l = 0; l < a.layers; l++) {
      const double *d = u + l * kUniformsPerLayer;
      int k;
      if (a.weights.empty()) {
        k = Pick(static_cast<int>(a.ops.size()), d[0]);
      } else {
        k = Weighted(a.weights, taken, d[0]);
        taken[k] = 1;
      }
      if (a.prob < 1.0 && d[1] > a.prob) {
        out.push_back(MakeLayer(kOpIdentity, {}));
        continue;
      }
      const double m = TimmMagnitude(a, a.magnitude, d[4], z[l]);
      out.push_back(TimmOp(a.ops[k], m, d[2] > 0.5, Interp(a, d[3]), a.size, d[5]));
    }
  } else if (a.kind == kTimm3a) {
    const char *names[3] = {"Solarize", "Desaturate", "GaussianBlurRand"};
    const double bases[3] = {5.0, 10.0, 10.0};
    const int k = Pick(3, u[0]);
    const double m = TimmMagnitude(a, bases[k], u[4], z[0]);
    out.push_back(TimmOp(names[k], m, u[2] > 0.5, Interp(a, u[3]), a.size, u[5]));
  } else if (a.kind == kTvRa || a.kind == kTvTaWide) {
    const bool wide = a.kind == kTvTaWide;
    for (int l = 0; l < a.layers; l++) {
      const double *d = u + l * kUniformsPerLayer;
      const std::string name = kTvOps[Pick(14, d[0])];
      bool signed_op = false;
      const bool single = name == "Identity" || name == "AutoContrast" || name == "Equalize";
      double magnitude = single ? 0.0 : TvMagnitude(name, 31, wide ? Pick(31, d[1]) : static_cast<int>(a.magnitude),
                                                    a.size, wide, signed_op);
      if (signed_op && d[2] < 0.5) magnitude = -magnitude;
      out.push_back(TvOp(name, magnitude, a.interp, a.size));
    }
  } else if (a.kind == kTvImageNet) {
    const Step *steps = kImageNet[Pick(25, u[0])];
    for (int i = 0; i < 2; i++) {
      const double *d = u + i * kUniformsPerLayer + 1;
      const Step &s = steps[i];
      if (!(d[0] <= s.p)) {
        out.push_back(MakeLayer(kOpIdentity, {}));
        continue;
      }
      bool signed_op = false;
      double magnitude = s.bin >= 0 ? TvMagnitude(s.name, 10, s.bin, a.size, false, signed_op) : 0.0;
      if (signed_op && d[1] < 0.5) magnitude = -magnitude;
      out.push_back(TvOp(s.name, magnitude, a.interp, a.size));
    }
  }
}

void JitterLayers(const Args &a, const double *u, std::vector<Layer> &out) {
  const double *r = a.jitter_range;
  const double f[4] = {r[0] + (r[1] - r[0]) * u[0], r[2] + (r[3] - r[2]) * u[1], r[4] + (r[5] - r[4]) * u[2],
                       r[6] + (r[7] - r[6]) * u[3]};
  const bool identity[4] = {r[0] == 1.0 && r[1] == 1.0, r[2] == 1.0 && r[3] == 1.0, r[4] == 1.0 && r[5] == 1.0,
                            r[6] == 0.0 && r[7] == 0.0};
  const int ops[4] = {kOpBrightness, kOpContrast, kOpColor, kOpHue};
  int order[4] = {0, 1, 2, 3};
  std::stable_sort(order, order + 4, [&](int x, int y) { return u[4 + x] < u[4 + y]; });
  for (int k : order) out.push_back(identity[k] ? MakeLayer(kOpIdentity, {}) : MakeLayer(ops[k], {f[k]}));
}

}  // namespace

class PolicyProgram : public dali::StatelessOperator<CPUBackend> {
 public:
  explicit PolicyProgram(const dali::OpSpec &spec) : dali::StatelessOperator<CPUBackend>(spec) {
    a_.kind = spec.GetArgument<int>("kind");
    a_.ops = spec.GetRepeatedArgument<std::string>("ops");
    a_.layers = spec.GetArgument<int>("num_layers");
    a_.magnitude = spec.GetArgument<float>("magnitude");
    const float mstd = spec.GetArgument<float>("magnitude_std");
    a_.std_inf = std::isinf(mstd);
    a_.magnitude_std = mstd;
    a_.magnitude_max = spec.GetArgument<float>("magnitude_max");
    a_.prob = spec.GetArgument<float>("prob");
    a_.weights = spec.GetRepeatedArgument<float>("weights");
    a_.interp = spec.GetArgument<int>("interp");
    a_.size = spec.GetArgument<int>("size");
    auto jitter = spec.GetRepeatedArgument<float>("jitter");
    DALI_ENFORCE(jitter.empty() || jitter.size() == 8, "dalimix.policy_program: `jitter` takes 8 values");
    a_.jitter = !jitter.empty();
    for (size_t i = 0; i < jitter.size(); i++) a_.jitter_range[i] = jitter[i];
    DALI_ENFORCE(a_.weights.empty() || a_.weights.size() == a_.ops.size(),
                 "dalimix.policy_program: `weights` needs one value per op");
    layers_ = (a_.kind == kNone ? 0 : (a_.kind == kTimmRand || a_.kind == kTvRa ? a_.layers : (a_.kind == kTvImageNet ? 2 : 1))) +
              (a_.jitter ? 4 : 0);
  }

 protected:
  bool SetupImpl(std::vector<dali::OutputDesc> &out, const Workspace &ws) override {
    const int n = ws.GetInputShape(0).num_samples();
    out.resize(2);
    out[0].shape = dali::uniform_list_shape(n, dali::TensorShape<>{layers_});
    out[0].type = DALI_INT32;
    out[1].shape = dali::uniform_list_shape(n, dali::TensorShape<>{layers_, kNumParams});
    out[1].type = DALI_FLOAT64;
    return true;
  }

  void RunImpl(Workspace &ws) override {
    const auto &uniforms = ws.Input<CPUBackend>(0);
    const auto &normals = ws.Input<CPUBackend>(1);
    auto &ops = ws.Output<CPUBackend>(0);
    auto &params = ws.Output<CPUBackend>(1);
    const int n = uniforms.num_samples();
    const int policy_layers = layers_ - (a_.jitter ? 4 : 0);
    for (int i = 0; i < n; i++) {
      const int64_t nu = uniforms.tensor_shape(i).num_elements(), nz = normals.tensor_shape(i).num_elements();
      DALI_ENFORCE(nu >= static_cast<int64_t>(layers_) * kUniformsPerLayer && nz >= layers_, dali::make_string(
          "dalimix.policy_program: sample ", i, " has ", nu, " uniforms and ", nz, " normals for ", layers_, " layers"));
      std::vector<double> u(nu), z(nz);
      const float *uf = uniforms.tensor<float>(i);
      const float *zf = normals.tensor<float>(i);
      for (int64_t k = 0; k < nu; k++) u[k] = uf[k];
      for (int64_t k = 0; k < nz; k++) z[k] = zf[k];
      std::vector<Layer> layers;
      PolicyLayers(a_, u.data(), z.data(), layers);
      if (a_.jitter) JitterLayers(a_, u.data() + policy_layers * kUniformsPerLayer, layers);
      DALI_ENFORCE(static_cast<int>(layers.size()) == layers_, "dalimix.policy_program: layer count mismatch");
      int32_t *o = ops.mutable_tensor<int32_t>(i);
      double *p = params.mutable_tensor<double>(i);
      for (int l = 0; l < layers_; l++) {
        o[l] = layers[l].op;
        for (int k = 0; k < kNumParams; k++) p[l * kNumParams + k] = layers[l].p[k];
      }
    }
  }

 private:
  Args a_;
  int layers_ = 0;
};

}  // namespace dalimix

namespace dali {

DALI_SCHEMA(dalimix__PolicyProgram)
    .DocStr(R"(The program of a per-sample augmentation policy: from `uniforms` (8 per layer, in [0, 1)) and
`normals` (one per layer) to `ops` (int32 [layers]) and `params` (float64 [layers, 8]), as timm's level
functions and torchvision's magnitude tables compute them. See dalimix/ops/policy/program.py.)")
    .NumInput(2)
    .NumOutput(2)
    .AddArg("kind", "-1 none, 0 timm RandAugment, 1 timm 3a, 2 torchvision RandAugment, 3 TrivialAugmentWide, "
            "4 AutoAugment(IMAGENET).", DALI_INT32)
    .AddOptionalArg<std::string>("ops", "timm's op names (timm RandAugment).", std::vector<std::string>{})
    .AddOptionalArg("num_layers", "Ops per image (RandAugment).", 2)
    .AddOptionalArg("magnitude", "Magnitude (timm) or magnitude bin (torchvision RandAugment).", 9.0f)
    .AddOptionalArg("magnitude_std", "timm's magnitude noise (inf: uniform in [0, magnitude]).", 0.0f)
    .AddOptionalArg("magnitude_max", "timm's upper clip of the magnitude (0: 10).", 0.0f)
    .AddOptionalArg("prob", "timm's probability to apply each op.", 0.5f)
    .AddOptionalArg<float>("weights", "timm's op weights (drawn without replacement); empty: uniform.",
                           std::vector<float>{})
    .AddOptionalArg("interp", "Interpolation of the geometric ops: 0 nearest, 1 bilinear, 2 bicubic, -1 random "
                    "bilinear / bicubic per op.", 1)
    .AddOptionalArg("size", "Side of the (square) images the program is for.", 224)
    .AddOptionalArg<float>("jitter", "Colour jitter ranges (b lo, b hi, c lo, c hi, s lo, s hi, h lo, h hi); "
                           "empty: none.", std::vector<float>{});

DALI_REGISTER_OPERATOR(dalimix__PolicyProgram, ::dalimix::PolicyProgram, CPU);

}  // namespace dali
