// The host side of the GPU backend's launch, shared by the CUDA operator and the CPU library's emulator
// of it: per-sample descriptors of a batch (pointers, sizes, channels, parameters) and the batch's
// normalisation and options. Host code only.
#ifndef DALIMIX_NATIVE_FUSED_LAUNCH_H_
#define DALIMIX_NATIVE_FUSED_LAUNCH_H_

#include <algorithm>
#include <vector>

#include "fused_args.h"
#include "fused_pixel.h"

namespace dalimix {

// The grid of a launch: x and y cover the largest output, z the samples.
struct LaunchGrid {
  int blocks_x = 0, blocks_y = 0, samples = 0;
};

// Descriptors of the batch `in` -> `out` as `plan` and `opt` say; returns the grid to launch.
template <typename Backend>
LaunchGrid BuildLaunch(const FusedPlan &plan, const FusedOptions &opt, const dali::TensorList<Backend> &in,
                       dali::TensorList<Backend> &out, std::vector<PixelSample> &samples, PixelLaunch &launch) {
  const int n = in.num_samples();
  samples.resize(n);
  int max_h = 1, max_w = 1;
  for (int i = 0; i < n; i++) {
    PixelSample &g = samples[i];
    g.p = plan.params[i];
    int pc = 0;
    InputHWC(in.tensor_shape(i), plan.chw_in, g.h, g.w, g.c);  // every sample its own channel count
    InputHWC(in.tensor_shape(g.p.partner), plan.chw_in, g.ph, g.pw, pc);
    g.in = in.raw_tensor(i);
    g.partner_in = in.raw_tensor(g.p.partner);
    g.oh = plan.OutH(i);
    g.ow = plan.OutW(i);
    g.out = out.raw_mutable_tensor(i);
    max_h = std::max(max_h, g.oh);
    max_w = std::max(max_w, g.ow);
  }
  for (int ch = 0; ch < kMaxChannels; ch++) {
    launch.mean[ch] = opt.mean.size() == 1 ? opt.mean[0] : (ch < static_cast<int>(opt.mean.size()) ? opt.mean[ch] : 0.0f);
    launch.inv_std[ch] = opt.inv_std.size() == 1 ? opt.inv_std[0]
                         : (ch < static_cast<int>(opt.inv_std.size()) ? opt.inv_std[ch] : 1.0f);
  }
  launch.chw_in = plan.chw_in;
  launch.chw_out = opt.out_chw;
  launch.antialias = opt.antialias;
  launch.erase_before = opt.erase_before;
  launch.erase_mode = opt.erase_mode;
  return {(max_w + kBlockX - 1) / kBlockX, (max_h + kBlockY - 1) / kBlockY, n};
}

}  // namespace dalimix

#endif  // DALIMIX_NATIVE_FUSED_LAUNCH_H_
