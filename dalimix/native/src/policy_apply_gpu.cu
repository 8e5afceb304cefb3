// dalimix.apply_program on the GPU: the launch sequence of policy_apply.h (resize + flip, then per layer
// histograms, lookup tables, the per-pixel apply and the box-blur passes, then the copy out), each kernel a
// thin wrapper of a __host__ __device__ body that the CPU library's emulator runs in the test suite.
// Buffers and descriptors come from DALI's scratchpad, all on DALI's stream.
#include <cuda_runtime.h>

#include <vector>

#include "dali/kernels/dynamic_scratchpad.h"
#include "dali/pipeline/operator/checkpointing/stateless_operator.h"
#include "dali/pipeline/operator/operator.h"
#include "policy_apply.h"
#include "policy_host.h"

namespace dalimix {

namespace {

__global__ void ResizeKernel(ProgramBatch b, int buffer) {
  ResizeBody(b, buffer, blockIdx.z, blockIdx.y * blockDim.y + threadIdx.y, blockIdx.x * blockDim.x + threadIdx.x);
}

__global__ void HistKernel(ProgramBatch b, int buffer, int l) {
  __shared__ int local[256];
  const int z = blockIdx.x, k = blockIdx.y, t = threadIdx.x;
  local[t] = 0;
  __syncthreads();
  HistBody(b, buffer, l, z, k, t, blockDim.x, [&](int bin) { atomicAdd(&local[bin], 1); });
  __syncthreads();
  b.hist[(static_cast<int64_t>(z) * 4 + k) * 256 + t] = local[t];
}

__global__ void LutKernel(ProgramBatch b, int l) { LutBody(b, l, blockIdx.x, threadIdx.x); }

__global__ void ApplyKernel(ProgramBatch b, int src, int dst, int l) {
  ApplyBody(b, src, dst, l, blockIdx.z, blockIdx.y * blockDim.y + threadIdx.y, blockIdx.x * blockDim.x + threadIdx.x);
}

__global__ void BlurKernel(ProgramBatch b, int src, int dst, int l, bool horizontal) {
  BlurBody(b, src, dst, l, horizontal, blockIdx.z, blockIdx.y * blockDim.y + threadIdx.y,
           blockIdx.x * blockDim.x + threadIdx.x);
}

__global__ void CopyOutKernel(ProgramBatch b, int buffer) {
  CopyOutBody(b, buffer, blockIdx.z, blockIdx.y * blockDim.y + threadIdx.y, blockIdx.x * blockDim.x + threadIdx.x);
}

void Check(cudaError_t err, const char *what) {
  if (err != cudaSuccess) {
    DALI_FAIL(dali::make_string("dalimix.apply_program (GPU): ", what, " failed: ", cudaGetErrorName(err), ": ",
                                cudaGetErrorString(err)));
  }
}

// The kernels of RunPrograms, launched on DALI's stream.
struct CudaExec {
  cudaStream_t stream;

  dim3 Grid(const ProgramBatch &b) const {
    return dim3((b.S + kTileX - 1) / kTileX, (b.S + kTileY - 1) / kTileY, b.n);
  }
  void Resize(const ProgramBatch &b, int buffer) {
    ResizeKernel<<<Grid(b), dim3(kTileX, kTileY), 0, stream>>>(b, buffer);
    Check(cudaGetLastError(), "the resize kernel");
  }
  void Hist(const ProgramBatch &b, int buffer, int l) {
    HistKernel<<<dim3(b.n, 4), 256, 0, stream>>>(b, buffer, l);
    Check(cudaGetLastError(), "the histogram kernel");
  }
  void Lut(const ProgramBatch &b, int l) {
    LutKernel<<<b.n, 768, 0, stream>>>(b, l);
    Check(cudaGetLastError(), "the lookup-table kernel");
  }
  void Apply(const ProgramBatch &b, int src, int dst, int l) {
    ApplyKernel<<<Grid(b), dim3(kTileX, kTileY), 0, stream>>>(b, src, dst, l);
    Check(cudaGetLastError(), "the apply kernel");
  }
  void Blur(const ProgramBatch &b, int src, int dst, int l, bool horizontal) {
    BlurKernel<<<Grid(b), dim3(kTileX, kTileY), 0, stream>>>(b, src, dst, l, horizontal);
    Check(cudaGetLastError(), "the blur kernel");
  }
  void CopyOut(const ProgramBatch &b, int buffer) {
    CopyOutKernel<<<Grid(b), dim3(kTileX, kTileY), 0, stream>>>(b, buffer);
    Check(cudaGetLastError(), "the copy kernel");
  }
};

}  // namespace

class ApplyProgramGPU : public dali::StatelessOperator<dali::GPUBackend> {
 public:
  explicit ApplyProgramGPU(const dali::OpSpec &spec)
      : dali::StatelessOperator<dali::GPUBackend>(spec), opt_(ReadOptions(spec)) {}

 protected:
  bool SetupImpl(std::vector<dali::OutputDesc> &out, const dali::Workspace &ws) override {
    const auto &images = ws.Input<dali::GPUBackend>(0);
    DALI_ENFORCE(images.type() == DALI_UINT8, "dalimix.apply_program: images must be uint8");
    out.resize(1);
    out[0].shape = dali::uniform_list_shape(images.num_samples(), dali::TensorShape<>{opt_.S, opt_.S, 3});
    out[0].type = DALI_UINT8;
    return true;
  }

  void RunImpl(dali::Workspace &ws) override {
    const auto &images = ws.Input<dali::GPUBackend>(0);
    auto &out = ws.Output<dali::GPUBackend>(0);
    out.SetLayout("HWC");
    const int n = images.num_samples();
    if (n == 0) return;
    DALI_ENFORCE(n <= 65535, "dalimix.apply_program (GPU): at most 65535 samples per batch");
    int layers = 0;
    std::vector<ProgramSample> host = ReadSamples<dali::GPUBackend>(spec_, ws, layers);
    for (int i = 0; i < n; i++) {
      host[i].in = images.tensor<uint8_t>(i);
      host[i].out = out.mutable_tensor<uint8_t>(i);
    }
    cudaStream_t stream = ws.stream();
    dali::kernels::DynamicScratchpad scratch(stream);
    ProgramSample *pinned = scratch.AllocatePinned<ProgramSample>(n);
    std::copy(host.begin(), host.end(), pinned);
    ProgramSample *dev = scratch.AllocateGPU<ProgramSample>(n);
    Check(cudaMemcpyAsync(dev, pinned, sizeof(ProgramSample) * n, cudaMemcpyHostToDevice, stream),
          "copying the programs");
    ProgramBatch b;
    b.n = n;
    b.S = opt_.S;
    b.layers = layers;
    b.antialias = opt_.antialias;
    std::copy(opt_.fill, opt_.fill + 3, b.fill);
    b.samples = dev;
    const size_t image = static_cast<size_t>(opt_.S) * opt_.S * 3;
    for (int k = 0; k < 3; k++) b.buf[k] = scratch.AllocateGPU<uint8_t>(image * n);
    b.hist = scratch.AllocateGPU<int>(static_cast<size_t>(n) * 4 * 256);
    b.lut = scratch.AllocateGPU<uint8_t>(static_cast<size_t>(n) * 3 * 256);
    CudaExec exec{stream};
    RunPrograms(exec, b, host.data());
  }

 private:
  ProgramOptions opt_;
};

}  // namespace dalimix

namespace dali {

DALI_REGISTER_OPERATOR(dalimix__ApplyProgram, ::dalimix::ApplyProgramGPU, GPU);

}  // namespace dali
