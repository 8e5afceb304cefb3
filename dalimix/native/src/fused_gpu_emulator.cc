// The GPU backend of dalimix.resample_mix, emulated on the host: the same descriptors (BuildLaunch), the
// same grid and block shape, and every thread's `FusedPixel` (fused_pixel.h) run in a loop. It exists so
// that the CPU test suite runs the CUDA kernel's logic against the NumPy reference on every run, on
// machines without a GPU: `fn.dalimix.resample_mix_gpu_emulated` takes the arguments of
// `fn.dalimix.resample_mix` on CPU data. Not for training: it is a test of the kernel, not a fast path.
#include <vector>

#include "dali/pipeline/operator/checkpointing/stateless_operator.h"
#include "dali/pipeline/operator/operator.h"
#include "fused_args.h"
#include "fused_launch.h"
#include "fused_pixel.h"

namespace dalimix {

#ifdef __FLT16_MANT_DIG__
using EmulatedHalf = _Float16;
#else
#error "the GPU emulator needs the compiler's _Float16 (IEEE binary16, rounded to nearest even, as __half)"
#endif

template <>
inline EmulatedHalf StoreValue<EmulatedHalf>(float v) { return static_cast<EmulatedHalf>(v); }

namespace {

template <typename In, typename Out>
void EmulateLaunch(const LaunchGrid &g, const std::vector<PixelSample> &samples, const PixelLaunch &launch) {
  for (int z = 0; z < g.samples; z++)
    for (int by = 0; by < g.blocks_y; by++)
      for (int bx = 0; bx < g.blocks_x; bx++)
        for (int ty = 0; ty < kBlockY; ty++)
          for (int tx = 0; tx < kBlockX; tx++)
            FusedPixel<In, Out>(samples.data(), z, launch, by * kBlockY + ty, bx * kBlockX + tx);
}

template <typename In>
void EmulateTyped(dali::DALIDataType out_type, const LaunchGrid &g, const std::vector<PixelSample> &samples,
                  const PixelLaunch &launch) {
  switch (out_type) {
    case DALI_FLOAT16: EmulateLaunch<In, EmulatedHalf>(g, samples, launch); break;
    case DALI_UINT8: EmulateLaunch<In, uint8_t>(g, samples, launch); break;
    default: EmulateLaunch<In, float>(g, samples, launch); break;
  }
}

}  // namespace

class ResampleMixGpuEmulated : public FusedOperatorBase<dali::CPUBackend> {
 public:
  using FusedOperatorBase<dali::CPUBackend>::FusedOperatorBase;

 protected:
  void RunImpl(dali::Workspace &ws) override {
    const auto &in = ws.Input<dali::CPUBackend>(0);
    auto &out = ws.Output<dali::CPUBackend>(0);
    out.SetLayout(opt_.out_chw ? "CHW" : "HWC");
    if (in.num_samples() == 0) return;
    std::vector<PixelSample> samples;
    PixelLaunch launch;
    LaunchGrid grid = BuildLaunch(plan_, opt_, in, out, samples, launch);
    if (in.type() == DALI_UINT8) EmulateTyped<uint8_t>(plan_.dtype, grid, samples, launch);
    else EmulateTyped<float>(plan_.dtype, grid, samples, launch);
  }
};

}  // namespace dalimix

namespace dali {

DALI_SCHEMA(dalimix__ResampleMixGpuEmulated)
    .DocStr("The GPU backend of `dalimix.resample_mix` emulated on the host (same descriptors, grid and per-pixel "
            "code, every thread in a loop): for testing the CUDA kernel's logic where there is no GPU.")
    .NumInput(1)
    .NumOutput(1)
    .AddParent("dalimix__ResampleMix");

DALI_REGISTER_OPERATOR(dalimix__ResampleMixGpuEmulated, ::dalimix::ResampleMixGpuEmulated, CPU);

}  // namespace dali
