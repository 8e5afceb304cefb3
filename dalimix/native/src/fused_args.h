// The arguments of dalimix's fused operator, read once per batch into plain per-sample structs that
// both backends consume. Host code only.
#ifndef DALIMIX_NATIVE_FUSED_ARGS_H_
#define DALIMIX_NATIVE_FUSED_ARGS_H_

#include <string>
#include <vector>

#include "dali/pipeline/operator/checkpointing/stateless_operator.h"
#include "dali/pipeline/operator/operator.h"
#include "fused_math.h"
#include "fused_pixel.h"

namespace dalimix {

// What one output sample is made of: the partner mixed in (itself when unmixed), the kind (kMixNone,
// kMixup, kCutMix), the own image's share in a mixup blend, the CutMix box [y0, x0, y1, x1) taken from
// the partner (before the flip), the flip, the erase regions [y0, x0, y1, x1) (output coordinates after
// the flip, or the image's own unflipped coordinates with `erase_before`) and the seed of their noise.
using SampleParams = PixelParams;

// Options that hold for the whole batch.
struct FusedOptions {
  int out_h = 0, out_w = 0;  // 0: the input's own size
  bool antialias = false;
  bool out_chw = true;
  dali::DALIDataType dtype = DALI_FLOAT;  // DALI_NO_TYPE: the input's type
  std::vector<float> mean, inv_std;
  int erase_mode = kEraseConst;
  bool erase_before = false;  // regions erase each image before mixing (else the mixed output)
  std::string input_layout;  // "" = the input's layout, else HWC
};

FusedOptions ReadFusedOptions(const dali::OpSpec &spec);

// Per-sample parameters of a batch of `n`, from the argument inputs (or their scalar defaults).
// `channels` is used to check mean/std; errors name the argument at fault.
std::vector<SampleParams> ReadSampleParams(const dali::OpSpec &spec, const dali::Workspace &ws, int n);

// What a batch will be turned into: the checked per-sample parameters and the output shapes.
struct FusedPlan {
  bool chw_in = false;
  dali::DALIDataType dtype = DALI_FLOAT;  // of the output
  std::vector<SampleParams> params;
  dali::TensorListShape<> out_shape;
  std::vector<int> out_hw;  // output (height, width) of each sample
  int OutH(int i) const { return out_hw[2 * i]; }
  int OutW(int i) const { return out_hw[2 * i + 1]; }
};

// Checks input 0 of `ws` against the options and plans the outputs (both backends' SetupImpl).
void PlanFused(const dali::OpSpec &spec, const dali::Workspace &ws, const FusedOptions &opt, FusedPlan &plan);

// Height, width and channels of an input sample of shape `s`.
inline void InputHWC(const dali::TensorShape<> &s, bool chw, int &h, int &w, int &c) {
  h = static_cast<int>(chw ? s[1] : s[0]);
  w = static_cast<int>(chw ? s[2] : s[1]);
  c = static_cast<int>(chw ? s[0] : s[2]);
}

// What both backends of the fused operator share: its options, read once, and the per-batch plan that
// SetupImpl makes. Each backend only adds RunImpl.
template <typename Backend>
class FusedOperatorBase : public dali::StatelessOperator<Backend> {
 public:
  explicit FusedOperatorBase(const dali::OpSpec &spec)
      : dali::StatelessOperator<Backend>(spec), opt_(ReadFusedOptions(spec)) {}

 protected:
  bool SetupImpl(std::vector<dali::OutputDesc> &output_desc, const dali::Workspace &ws) override {
    PlanFused(this->spec_, ws, opt_, plan_);
    output_desc.resize(1);
    output_desc[0].shape = plan_.out_shape;
    output_desc[0].type = plan_.dtype;
    return true;
  }

  FusedOptions opt_;
  FusedPlan plan_;
};

}  // namespace dalimix

#endif  // DALIMIX_NATIVE_FUSED_ARGS_H_
