// dalimix.resample_mix on the GPU: one thread per output pixel runs `FusedPixel` (fused_pixel.h), the same
// code the CPU library's emulator of this launch runs in the test suite. Launched on DALI's stream; the
// per-sample descriptors go through DALI's scratchpad (pinned staging, stream-ordered device memory).
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdio>
#include <vector>

#include "dali/kernels/dynamic_scratchpad.h"
#include "dali/pipeline/operator/checkpointing/stateless_operator.h"
#include "dali/pipeline/operator/operator.h"
#include "fused_args.h"
#include "fused_launch.h"
#include "fused_pixel.h"

namespace dalimix {

template <>
__host__ __device__ __forceinline__ __half StoreValue<__half>(float v) { return __float2half_rn(v); }

template <typename In, typename Out>
__global__ void ResampleMixKernel(const PixelSample *samples, PixelLaunch launch) {
  FusedPixel<In, Out>(samples, blockIdx.z, launch, blockIdx.y * blockDim.y + threadIdx.y,
                      blockIdx.x * blockDim.x + threadIdx.x);
}

namespace {

void Check(cudaError_t err, const char *what) {
  if (err != cudaSuccess) {
    DALI_FAIL(dali::make_string("dalimix.resample_mix (GPU): ", what, " failed: ", cudaGetErrorName(err), ": ",
                                cudaGetErrorString(err)));
  }
}

template <typename In, typename Out>
void Launch(const LaunchGrid &g, const PixelSample *dev, const PixelLaunch &launch, cudaStream_t stream) {
  dim3 block(kBlockX, kBlockY);
  dim3 grid(g.blocks_x, g.blocks_y, g.samples);
  ResampleMixKernel<In, Out><<<grid, block, 0, stream>>>(dev, launch);
}

template <typename In>
void LaunchTyped(dali::DALIDataType out_type, const LaunchGrid &g, const PixelSample *dev, const PixelLaunch &launch,
                 cudaStream_t stream) {
  switch (out_type) {
    case DALI_FLOAT16: Launch<In, __half>(g, dev, launch, stream); break;
    case DALI_UINT8: Launch<In, uint8_t>(g, dev, launch, stream); break;
    default: Launch<In, float>(g, dev, launch, stream); break;
  }
}

}  // namespace

class ResampleMixGPU : public FusedOperatorBase<dali::GPUBackend> {
 public:
  using FusedOperatorBase<dali::GPUBackend>::FusedOperatorBase;

 protected:
  void RunImpl(dali::Workspace &ws) override {
    const auto &in = ws.Input<dali::GPUBackend>(0);
    auto &out = ws.Output<dali::GPUBackend>(0);
    out.SetLayout(opt_.out_chw ? "CHW" : "HWC");
    if (in.num_samples() == 0) return;
    DALI_ENFORCE(in.num_samples() <= 65535, "dalimix.resample_mix (GPU): at most 65535 samples per batch");
    PixelLaunch launch;
    LaunchGrid grid = BuildLaunch(plan_, opt_, in, out, host_, launch);
    cudaStream_t stream = ws.stream();
    // Stream-ordered scratch memory, freed when it goes out of scope: nothing to leak on an error path.
    dali::kernels::DynamicScratchpad scratch(stream);
    PixelSample *pinned = scratch.AllocatePinned<PixelSample>(host_.size());
    std::copy(host_.begin(), host_.end(), pinned);
    PixelSample *dev = scratch.AllocateGPU<PixelSample>(host_.size());
    Check(cudaMemcpyAsync(dev, pinned, sizeof(PixelSample) * host_.size(), cudaMemcpyHostToDevice, stream),
          "copying the sample descriptors");
    if (in.type() == DALI_UINT8) LaunchTyped<uint8_t>(plan_.dtype, grid, dev, launch, stream);
    else LaunchTyped<float>(plan_.dtype, grid, dev, launch, stream);
    Check(cudaGetLastError(), "launching the kernel");
  }

 private:
  std::vector<PixelSample> host_;
};

}  // namespace dalimix

// Whether this library's kernels can run on `device`: CUDA is asked for the attributes of one kernel
// instance there, which fails when the driver is too old for the code in the library (PTX it cannot JIT)
// or the library holds no code the GPU can run. Leaves the calling thread's current device as it was.
// Returns 0, or 1 with `msg` filled in.
extern "C" __attribute__((visibility("default"))) int dalimix_cuda_probe(int device, char *msg, int len) {
  int count = 0, current = 0, major = 0, minor = 0, driver = 0;
  cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    snprintf(msg, len, "CUDA sees no usable GPU (%s: %s)", cudaGetErrorName(err), cudaGetErrorString(err));
    cudaGetLastError();
    return 1;
  }
  if (device < 0 || device >= count) {
    snprintf(msg, len, "no CUDA device %d (%d visible)", device, count);
    return 1;
  }
  if (err == cudaSuccess) err = cudaGetDevice(&current);
  if (err == cudaSuccess) err = cudaSetDevice(device);
  cudaFuncAttributes attrs;
  if (err == cudaSuccess) {
    err = cudaFuncGetAttributes(&attrs, dalimix::ResampleMixKernel<uint8_t, float>);
    cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
    cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device);
    cudaSetDevice(current);
  }
  if (err != cudaSuccess) {
    cudaDriverGetVersion(&driver);
    snprintf(msg, len, "CUDA cannot run dalimix's kernel on GPU %d (compute capability %d.%d, driver CUDA %d.%d, "
             "kernel built with CUDA %d.%d): %s: %s", device, major, minor, driver / 1000, driver % 1000 / 10,
             CUDART_VERSION / 1000, CUDART_VERSION % 1000 / 10, cudaGetErrorName(err), cudaGetErrorString(err));
    cudaGetLastError();  // clear the error for DALI's own calls
    return 1;
  }
  return 0;
}

namespace dali {

DALI_REGISTER_OPERATOR(dalimix__ResampleMix, ::dalimix::ResampleMixGPU, GPU);

}  // namespace dali
