// dalimix.apply_program on the CPU: each sample's random-resized crop resized to the crop size (and flipped),
// then its policy program run with Pillow's arithmetic (policy_ops.h), one sample per task of DALI's thread
// pool. The same bodies as the GPU kernels (policy_apply.h), run over a one-sample batch; and
// `dalimix.apply_program_gpu_emulated`, the GPU operator's whole launch sequence emulated on the host.
#include <algorithm>
#include <cstring>
#include <vector>

#include "dali/pipeline/operator/checkpointing/stateless_operator.h"
#include "dali/pipeline/operator/operator.h"
#include "policy_apply.h"
#include "policy_cpu.h"
#include "policy_host.h"
#include "resample_cpu.h"

namespace dalimix {

using dali::CPUBackend;
using dali::Workspace;

// The kernels of RunPrograms as loops over every block and thread, on host buffers.
struct HostExec {
  static int Tiles(int n, int t) { return (n + t - 1) / t; }

  template <typename Body>
  static void Pixels(const ProgramBatch &b, Body body) {
    for (int z = 0; z < b.n; z++)
      for (int by = 0; by < Tiles(b.S, kTileY); by++)
        for (int bx = 0; bx < Tiles(b.S, kTileX); bx++)
          for (int ty = 0; ty < kTileY; ty++)
            for (int tx = 0; tx < kTileX; tx++) body(z, by * kTileY + ty, bx * kTileX + tx);
  }

  void Resize(const ProgramBatch &b, int buffer) {
    Pixels(b, [&](int z, int y, int x) { ResizeBody(b, buffer, z, y, x); });
  }
  void Hist(const ProgramBatch &b, int buffer, int l) {
    std::fill(b.hist, b.hist + static_cast<int64_t>(b.n) * 4 * 256, 0);
    for (int z = 0; z < b.n; z++)
      for (int k = 0; k < 4; k++) {
        int *h = b.hist + (static_cast<int64_t>(z) * 4 + k) * 256;
        for (int t = 0; t < 256; t++) HistBody(b, buffer, l, z, k, t, 256, [&](int bin) { h[bin]++; });
      }
  }
  void Lut(const ProgramBatch &b, int l) {
    for (int z = 0; z < b.n; z++)
      for (int t = 0; t < 768; t++) LutBody(b, l, z, t);
  }
  void Apply(const ProgramBatch &b, int src, int dst, int l) {
    Pixels(b, [&](int z, int y, int x) { ApplyBody(b, src, dst, l, z, y, x); });
  }
  void Blur(const ProgramBatch &b, int src, int dst, int l, bool horizontal) {
    Pixels(b, [&](int z, int y, int x) { BlurBody(b, src, dst, l, horizontal, z, y, x); });
  }
  void CopyOut(const ProgramBatch &b, int buffer) {
    Pixels(b, [&](int z, int y, int x) { CopyOutBody(b, buffer, z, y, x); });
  }
};

// One CPU sample: the resize as the separable row passes of resample_cpu.h (rounded to uint8, flipped), the
// layers and histograms as whole-image loops (policy_cpu.h), the result copied out in one go.
struct HostSample : HostExec {
  const Source<uint8_t> *src = nullptr;
  bool mirror = false;
  std::vector<float> row, tmp;
  std::vector<uint8_t> rounded;

  void Resize(const ProgramBatch &b, int buffer) {
    const int S = b.S;
    row.resize(static_cast<size_t>(S) * 3 + 1);
    rounded.resize(static_cast<size_t>(S) * 3);
    uint8_t *dst = Image(b, buffer, 0);
    for (int y = 0; y < S; y++) {
      src->Row(y, row.data(), tmp);
      uint8_t *o = dst + static_cast<int64_t>(y) * S * 3;
      if (!mirror) {
        RoundRow(row.data(), o, S * 3);
        continue;
      }
      RoundRow(row.data(), rounded.data(), S * 3);
      for (int x = 0; x < S; x++) std::memcpy(o + 3 * x, rounded.data() + 3 * (S - 1 - x), 3);
    }
  }
  static void RoundRow(const float *in, uint8_t *out, int n) {
    for (int j = 0; j < n; j++) out[j] = Round8(in[j]);
  }
  void Hist(const ProgramBatch &b, int buffer, int l) {
    if (NeedsHistogram(b.samples[0].ops[l])) HistogramsImage(Image(b, buffer, 0), b.S, b.hist);
  }
  void Apply(const ProgramBatch &b, int src, int dst, int l) {
    ApplyLayerImage(b.samples[0], l, Image(b, src, 0), Image(b, dst, 0), b.S, b.fill, b.lut);
  }
  void CopyOut(const ProgramBatch &b, int buffer) {
    std::memcpy(b.samples[0].out, Image(b, buffer, 0), static_cast<size_t>(b.S) * b.S * 3);
  }
};

template <typename Derived>
class ProgramOperatorCPU : public dali::StatelessOperator<CPUBackend> {
 public:
  explicit ProgramOperatorCPU(const dali::OpSpec &spec)
      : dali::StatelessOperator<CPUBackend>(spec), opt_(ReadOptions(spec)) {}

 protected:
  bool SetupImpl(std::vector<dali::OutputDesc> &out, const Workspace &ws) override {
    const auto &images = ws.Input<CPUBackend>(0);
    DALI_ENFORCE(images.type() == DALI_UINT8, "dalimix.apply_program: images must be uint8");
    out.resize(1);
    out[0].shape = dali::uniform_list_shape(images.num_samples(), dali::TensorShape<>{opt_.S, opt_.S, 3});
    out[0].type = DALI_UINT8;
    return true;
  }

  ProgramOptions opt_;
};

class ApplyProgramCPU : public ProgramOperatorCPU<ApplyProgramCPU> {
 public:
  using ProgramOperatorCPU<ApplyProgramCPU>::ProgramOperatorCPU;

 protected:
  void RunImpl(Workspace &ws) override {
    const auto &images = ws.Input<CPUBackend>(0);
    auto &out = ws.Output<CPUBackend>(0);
    out.SetLayout("HWC");
    int layers = 0;
    samples_ = ReadSamples<CPUBackend>(spec_, ws, layers);
    auto &pool = ws.GetThreadPool();
    for (int i = 0; i < images.num_samples(); i++) {
      samples_[i].in = images.tensor<uint8_t>(i);
      samples_[i].out = out.mutable_tensor<uint8_t>(i);
      pool.AddWork([this, i](int) { RunSample(i); }, static_cast<int64_t>(samples_[i].h) * samples_[i].w);
    }
    pool.RunAll();
  }

 private:
  void RunSample(int i) {
    thread_local std::vector<uint8_t> buffers;
    thread_local std::vector<int> hist;
    thread_local std::vector<uint8_t> lut;
    const int S = opt_.S;
    const ProgramSample &s = samples_[i];
    const size_t image = static_cast<size_t>(S) * S * 3;
    buffers.resize(3 * image);
    hist.resize(4 * 256);
    lut.resize(3 * 256);
    Source<uint8_t> src;
    src.data = s.in;
    src.h = s.h;
    src.w = s.w;
    src.c = 3;
    src.clip = s.cubic;
    src.ty.Build(s.h, S, opt_.antialias, s.cubic);
    src.tx.Build(s.w, S, opt_.antialias, s.cubic);
    ProgramBatch b;
    b.n = 1;
    b.S = S;
    b.layers = s.layers;
    b.antialias = opt_.antialias;
    std::copy(opt_.fill, opt_.fill + 3, b.fill);
    b.samples = &s;
    for (int k = 0; k < 3; k++) b.buf[k] = buffers.data() + k * image;
    b.hist = hist.data();
    b.lut = lut.data();
    HostSample exec;
    exec.src = &src;
    exec.mirror = s.mirror;
    RunPrograms(exec, b, &s);
  }

  std::vector<ProgramSample> samples_;
};

class ApplyProgramGpuEmulated : public ProgramOperatorCPU<ApplyProgramGpuEmulated> {
 public:
  using ProgramOperatorCPU<ApplyProgramGpuEmulated>::ProgramOperatorCPU;

 protected:
  void RunImpl(Workspace &ws) override {
    const auto &images = ws.Input<CPUBackend>(0);
    auto &out = ws.Output<CPUBackend>(0);
    out.SetLayout("HWC");
    int layers = 0;
    std::vector<ProgramSample> samples = ReadSamples<CPUBackend>(spec_, ws, layers);
    const int n = images.num_samples();
    if (n == 0) return;
    for (int i = 0; i < n; i++) {
      samples[i].in = images.tensor<uint8_t>(i);
      samples[i].out = out.mutable_tensor<uint8_t>(i);
    }
    const size_t image = static_cast<size_t>(opt_.S) * opt_.S * 3;
    std::vector<uint8_t> buffers(3 * image * n);
    std::vector<int> hist(static_cast<size_t>(n) * 4 * 256);
    std::vector<uint8_t> lut(static_cast<size_t>(n) * 3 * 256);
    ProgramBatch b;
    b.n = n;
    b.S = opt_.S;
    b.layers = layers;
    b.antialias = opt_.antialias;
    std::copy(opt_.fill, opt_.fill + 3, b.fill);
    b.samples = samples.data();
    for (int k = 0; k < 3; k++) b.buf[k] = buffers.data() + k * image * n;
    b.hist = hist.data();
    b.lut = lut.data();
    HostExec exec;
    RunPrograms(exec, b, samples.data());
  }
};

}  // namespace dalimix

namespace dali {

DALI_SCHEMA(dalimix__ApplyProgram)
    .DocStr(R"(Resize each image (uint8 HWC RGB, e.g. a decoded random-resized crop) to `size`, flip it where
`mirror` says, then run its per-sample policy program (`ops` int32 [L] and `params` float64 [L, 8] from
`dalimix.policy_program`) with Pillow's arithmetic: what timm's and torchvision's policies do to a PIL image.)")
    .NumInput(3)
    .InputDevice(1, dali::InputDevice::CPU)
    .InputDevice(2, dali::InputDevice::CPU)
    .NumOutput(1)
    .AddArg("size", "Output (S, S).", DALI_INT_VEC)
    .AddOptionalArg("antialias", "Antialias the resize when downscaling.", false)
    .AddOptionalArg("interp", "Resize filter per sample: 1 bilinear, 2 bicubic (Keys, a = -0.5).", 1, true)
    .AddOptionalArg("mirror", "Flip horizontally after the resize, before the program.", 0, true)
    .AddOptionalArg<float>("fill", "Fill of the geometric ops (R, G, B).", std::vector<float>{0.0f, 0.0f, 0.0f});

DALI_REGISTER_OPERATOR(dalimix__ApplyProgram, ::dalimix::ApplyProgramCPU, CPU);

DALI_SCHEMA(dalimix__ApplyProgramGpuEmulated)
    .DocStr("The GPU backend of `dalimix.apply_program` emulated on the host (the same bodies, grids and launch "
            "sequence, every block and thread in a loop): for testing the CUDA operator's logic without a GPU.")
    .NumInput(3)
    .InputDevice(1, dali::InputDevice::CPU)
    .InputDevice(2, dali::InputDevice::CPU)
    .NumOutput(1)
    .AddParent("dalimix__ApplyProgram");

DALI_REGISTER_OPERATOR(dalimix__ApplyProgramGpuEmulated, ::dalimix::ApplyProgramGpuEmulated, CPU);

}  // namespace dali
