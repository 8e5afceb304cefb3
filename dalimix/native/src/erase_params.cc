// dalimix.erase_params: random erasing regions (Zhong et al.; timm's options) from DALI's random draws.
// The native twin of dalimix/ops/erasing.py:erase_boxes, with the same double-precision arithmetic.
#include <cmath>
#include <vector>

#include "dali/pipeline/operator/checkpointing/stateless_operator.h"
#include "dali/pipeline/operator/operator.h"
#include "fused_args.h"
#include "fused_math.h"

namespace dalimix {

using dali::CPUBackend;
using dali::OutputDesc;
using dali::Workspace;

namespace {
constexpr int kAttempts = 10;
constexpr double kAreaLo = 0.02, kAreaHi = 1.0 / 3.0;
}  // namespace

class EraseParamsCPU : public dali::StatelessOperator<CPUBackend> {
 public:
  explicit EraseParamsCPU(const dali::OpSpec &spec) : dali::StatelessOperator<CPUBackend>(spec) {
    count_ = spec.GetArgument<int>("count");
    DALI_ENFORCE(count_ >= 1 && count_ <= kMaxEraseRegions,
                 dali::make_string("dalimix.erase_params: `count` must be 1 to ", kMaxEraseRegions));
    auto size = spec.GetRepeatedArgument<int>("size");
    DALI_ENFORCE(size.size() == 2 && size[0] > 0 && size[1] > 0,
                 "dalimix.erase_params: `size` must be (height, width) > 0");
    height_ = size[0];
    width_ = size[1];
  }

 protected:
  bool SetupImpl(std::vector<OutputDesc> &output_desc, const Workspace &ws) override {
    output_desc.resize(1);
    output_desc[0].shape = dali::uniform_list_shape(ws.GetInputBatchSize(0), dali::TensorShape<>{4 * count_});
    output_desc[0].type = DALI_INT32;
    return true;
  }

  void RunImpl(Workspace &ws) override {
    const auto &apply = ws.Input<CPUBackend>(0);
    const auto &uniforms = ws.Input<CPUBackend>(1);
    auto &out = ws.Output<CPUBackend>(0);
    DALI_ENFORCE(apply.type() == DALI_BOOL, "dalimix.erase_params: input 0 (apply) must be bool");
    DALI_ENFORCE(uniforms.type() == DALI_FLOAT, "dalimix.erase_params: input 1 (uniforms) must be float");
    const int n = apply.num_samples();
    const int64_t need = 1 + 4 * kAttempts * count_;
    const double lo_ratio = std::log(0.3), hi_ratio = std::log(1.0 / 0.3);
    const double area = static_cast<double>(height_) * width_;
    for (int i = 0; i < n; i++) {
      int32_t *b = out.mutable_tensor<int32_t>(i);
      for (int k = 0; k < 4 * count_; k++) b[k] = 0;
      if (!*apply.tensor<bool>(i)) continue;
      DALI_ENFORCE(uniforms.tensor_shape(i).num_elements() == need, dali::make_string(
          "dalimix.erase_params: input 1 needs ", need, " uniforms per sample"));
      const float *u = uniforms.tensor<float>(i);
      int regions = 1 + std::min(static_cast<int>(static_cast<double>(u[0]) * count_), count_ - 1);
      for (int r = 0; r < regions; r++) {
        for (int a = 0; a < kAttempts; a++) {
          const float *q = u + 1 + 4 * (r * kAttempts + a);
          double target = (kAreaLo + q[0] * (kAreaHi - kAreaLo)) * area / regions;
          double ratio = std::exp(lo_ratio + q[1] * (hi_ratio - lo_ratio));
          int h = static_cast<int>(std::nearbyint(std::sqrt(target * ratio)));
          int w = static_cast<int>(std::nearbyint(std::sqrt(target / ratio)));
          if (h > 0 && h < height_ && w > 0 && w < width_) {
            int top = std::min(static_cast<int>(q[2] * static_cast<double>(height_ - h + 1)), height_ - h);
            int left = std::min(static_cast<int>(q[3] * static_cast<double>(width_ - w + 1)), width_ - w);
            b[4 * r] = top;
            b[4 * r + 1] = left;
            b[4 * r + 2] = top + h;
            b[4 * r + 3] = left + w;
            break;
          }
        }
      }
    }
  }

 private:
  int count_, height_, width_;
};

}  // namespace dalimix

namespace dali {

DALI_SCHEMA(dalimix__EraseParams)
    .DocStr(R"(Random erasing regions per sample: inputs `apply` (bool) and 1 + 40 * count uniforms;
output `count` regions (y0, x0, y1, x1) in an image of `size`, empty where unused.)")
    .NumInput(2)
    .NumOutput(1)
    .AddArg("count", "Most regions per image (1 to 8).", DALI_INT32)
    .AddArg("size", "Image (height, width).", DALI_INT_VEC);

DALI_REGISTER_OPERATOR(dalimix__EraseParams, ::dalimix::EraseParamsCPU, CPU);

}  // namespace dali
