// dalimix.resample_mix on the GPU: one thread per output pixel does what the CPU backend does per row
// (resample own and partner with the triangle filter, mixup blend or CutMix paste, flip, normalise,
// erase), with the same arithmetic from fused_math.h. Launched on DALI's stream.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdio>
#include <vector>

#include "dali/pipeline/operator/checkpointing/stateless_operator.h"
#include "dali/pipeline/operator/operator.h"
#include "fused_args.h"

namespace dalimix {

using dali::GPUBackend;
using dali::OutputDesc;
using dali::Workspace;

namespace {

struct GpuSample {
  const void *in;
  const void *partner_in;
  int h, w, ph, pw;  // own and partner input sizes
  int oh, ow;
  void *out;
  SampleParams p;
};

struct Norm {
  float mean[kMaxChannels];
  float inv_std[kMaxChannels];
};

template <typename In>
__device__ __forceinline__ float Load(const In *img, int64_t at) {
  return static_cast<float>(img[at]);
}

// Resample channel values of `img` (h x w, `c` channels) at output pixel (oy, ox) of an oh x ow image.
template <typename In>
__device__ void Resample(const In *img, int h, int w, int c, bool chw, int oh, int ow, int oy, int ox,
                         bool antialias, float *v) {
  const float sy = static_cast<float>(h) / oh, sx = static_cast<float>(w) / ow;
  const float cy = SourceCentre(oy, sy), cx = SourceCentre(ox, sx);
  const float ry = FilterRadius(sy, antialias), rx = FilterRadius(sx, antialias);
  const int fy = FirstTap(cy, ry), fx = FirstTap(cx, rx);
  const int ky = TapCount(ry), kx = TapCount(rx);
  float sum_x = 0.0f;
  for (int t = 0; t < kx; t++) sum_x += TapWeight(fx + t, cx, rx);
  float sum_y = 0.0f;
  float acc[kMaxChannels] = {0.0f, 0.0f, 0.0f, 0.0f};
  const int64_t plane = static_cast<int64_t>(h) * w;
  for (int ty = 0; ty < ky; ty++) {
    const float wy = TapWeight(fy + ty, cy, ry);
    if (wy == 0.0f) continue;
    sum_y += wy;
    const int y = Clamp(fy + ty, 0, h - 1);
    float racc[kMaxChannels] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (int tx = 0; tx < kx; tx++) {
      const float wx = TapWeight(fx + tx, cx, rx);
      if (wx == 0.0f) continue;
      const int x = Clamp(fx + tx, 0, w - 1);
      for (int ch = 0; ch < c; ch++) {
        int64_t at = chw ? ch * plane + static_cast<int64_t>(y) * w + x : (static_cast<int64_t>(y) * w + x) * c + ch;
        racc[ch] += wx * Load(img, at);
      }
    }
    for (int ch = 0; ch < c; ch++) acc[ch] += wy * racc[ch];
  }
  const float norm = 1.0f / (sum_x * sum_y);
  for (int ch = 0; ch < c; ch++) v[ch] = acc[ch] * norm;
}

template <typename Out>
__device__ __forceinline__ Out StoreAs(float v);
template <>
__device__ __forceinline__ float StoreAs<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half StoreAs<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ uint8_t StoreAs<uint8_t>(float v) {
  int r = __float2int_rn(v);
  return static_cast<uint8_t>(r < 0 ? 0 : (r > 255 ? 255 : r));
}

template <typename In, typename Out>
__global__ void ResampleMixKernel(const GpuSample *samples, int c, bool chw_in, bool chw_out, bool antialias,
                                  int erase_mode, Norm norm) {
  const GpuSample &s = samples[blockIdx.z];
  const int ox = blockIdx.x * blockDim.x + threadIdx.x;
  const int oy = blockIdx.y * blockDim.y + threadIdx.y;
  if (ox >= s.ow || oy >= s.oh) return;
  const SampleParams &p = s.p;
  Out *out = static_cast<Out *>(s.out);
  const int64_t plane = static_cast<int64_t>(s.oh) * s.ow;
  auto at = [&](int ch) {
    return chw_out ? ch * plane + static_cast<int64_t>(oy) * s.ow + ox
                   : (static_cast<int64_t>(oy) * s.ow + ox) * c + ch;
  };
  int region = -1;  // the last region covering the pixel wins, as on the CPU
  for (int r = 0; r < p.num_erase; r++) {
    const int *e = p.erase[r];
    if (oy >= e[0] && oy < e[2] && ox >= e[1] && ox < e[3]) region = r;
  }
  if (region >= 0) {
    for (int ch = 0; ch < c; ch++) {
      float fill = 0.0f;
      if (erase_mode == kEraseRand) {
        fill = NormalAt(p.seed, RandStream(region), static_cast<uint32_t>(ch));
      } else if (erase_mode == kErasePixel) {
        fill = NormalAt(p.seed, PixelStream(), static_cast<uint32_t>((static_cast<int64_t>(oy) * s.ow + ox) * c + ch));
      }
      out[at(ch)] = StoreAs<Out>(fill);
    }
    return;
  }
  const int ex = p.mirror ? s.ow - 1 - ox : ox;
  float v[kMaxChannels];
  const bool pasted = p.kind == kCutMix && oy >= p.box[0] && oy < p.box[2] && ex >= p.box[1] && ex < p.box[3];
  if (pasted) {
    Resample(static_cast<const In *>(s.partner_in), s.ph, s.pw, c, chw_in, s.oh, s.ow, oy, ex, antialias, v);
  } else {
    Resample(static_cast<const In *>(s.in), s.h, s.w, c, chw_in, s.oh, s.ow, oy, ex, antialias, v);
    if (p.kind == kMixup) {
      float q[kMaxChannels];
      Resample(static_cast<const In *>(s.partner_in), s.ph, s.pw, c, chw_in, s.oh, s.ow, oy, ex, antialias, q);
      const float a = p.weight, b = 1.0f - p.weight;
      for (int ch = 0; ch < c; ch++) v[ch] = a * v[ch] + b * q[ch];
    }
  }
  for (int ch = 0; ch < c; ch++) out[at(ch)] = StoreAs<Out>((v[ch] - norm.mean[ch]) * norm.inv_std[ch]);
}

void Check(cudaError_t err, const char *what) {
  if (err != cudaSuccess) {
    DALI_FAIL(dali::make_string("dalimix.resample_mix (GPU): ", what, " failed: ", cudaGetErrorName(err), ": ",
                                cudaGetErrorString(err)));
  }
}

}  // namespace

class ResampleMixGPU : public FusedOperatorBase<GPUBackend> {
 public:
  using FusedOperatorBase<GPUBackend>::FusedOperatorBase;

 protected:
  void RunImpl(Workspace &ws) override {
    const auto &in = ws.Input<GPUBackend>(0);
    auto &out = ws.Output<GPUBackend>(0);
    out.SetLayout(opt_.out_chw ? "CHW" : "HWC");
    const int n = in.num_samples();
    if (n == 0) return;
    host_.resize(n);
    int max_h = 1, max_w = 1, c = 0;
    for (int i = 0; i < n; i++) {
      GpuSample &g = host_[i];
      g.p = plan_.params[i];
      int ch;
      InputHWC(in.tensor_shape(i), plan_.chw_in, g.h, g.w, ch);
      InputHWC(in.tensor_shape(g.p.partner), plan_.chw_in, g.ph, g.pw, ch);
      c = ch;
      g.in = in.raw_tensor(i);
      g.partner_in = in.raw_tensor(g.p.partner);
      g.oh = plan_.OutH(i);
      g.ow = plan_.OutW(i);
      g.out = out.raw_mutable_tensor(i);
      max_h = std::max(max_h, g.oh);
      max_w = std::max(max_w, g.ow);
    }
    DALI_ENFORCE(n <= 65535, "dalimix.resample_mix (GPU): at most 65535 samples per batch");
    Norm norm{};
    for (int ch = 0; ch < c; ch++) {
      norm.mean[ch] = opt_.mean.size() == 1 ? opt_.mean[0] : opt_.mean[ch];
      norm.inv_std[ch] = opt_.inv_std.size() == 1 ? opt_.inv_std[0] : opt_.inv_std[ch];
    }
    cudaStream_t stream = ws.stream();
    const size_t bytes = sizeof(GpuSample) * n;
    GpuSample *dev = nullptr;
    Check(cudaMallocAsync(reinterpret_cast<void **>(&dev), bytes, stream), "cudaMallocAsync");
    Check(cudaMemcpyAsync(dev, host_.data(), bytes, cudaMemcpyHostToDevice, stream), "copying sample descriptors");
    dim3 block(32, 8);
    dim3 grid((max_w + block.x - 1) / block.x, (max_h + block.y - 1) / block.y, n);
    const bool chw = plan_.chw_in, chw_out = opt_.out_chw, aa = opt_.antialias;
    const int mode = opt_.erase_mode;
    const bool u8 = in.type() == DALI_UINT8;
    switch (plan_.dtype) {
      case DALI_FLOAT16:
        if (u8) ResampleMixKernel<uint8_t, __half><<<grid, block, 0, stream>>>(dev, c, chw, chw_out, aa, mode, norm);
        else ResampleMixKernel<float, __half><<<grid, block, 0, stream>>>(dev, c, chw, chw_out, aa, mode, norm);
        break;
      case DALI_UINT8:
        if (u8) ResampleMixKernel<uint8_t, uint8_t><<<grid, block, 0, stream>>>(dev, c, chw, chw_out, aa, mode, norm);
        else ResampleMixKernel<float, uint8_t><<<grid, block, 0, stream>>>(dev, c, chw, chw_out, aa, mode, norm);
        break;
      default:
        if (u8) ResampleMixKernel<uint8_t, float><<<grid, block, 0, stream>>>(dev, c, chw, chw_out, aa, mode, norm);
        else ResampleMixKernel<float, float><<<grid, block, 0, stream>>>(dev, c, chw, chw_out, aa, mode, norm);
        break;
    }
    Check(cudaGetLastError(), "launching the kernel");
    Check(cudaFreeAsync(dev, stream), "cudaFreeAsync");
  }

 private:
  std::vector<GpuSample> host_;
};

}  // namespace dalimix

// Whether this library's kernels can run on `device`: the driver must support the CUDA version the
// plugin was compiled with (a newer toolkit than the DALI wheel's), and the GPU must be one it has code
// for. Leaves the calling thread's current device alone. Returns 0, or an error with `msg` filled in.
extern "C" __attribute__((visibility("default"))) int dalimix_cuda_probe(int device, char *msg, int len) {
  int driver = 0, count = 0, major = 0, minor = 0;
  cudaError_t err = cudaDriverGetVersion(&driver);
  if (err == cudaSuccess && driver < CUDART_VERSION) {
    snprintf(msg, len, "the NVIDIA driver supports CUDA %d.%d but dalimix's kernels were compiled with CUDA "
             "%d.%d (update the driver, or put an nvcc of CUDA <= %d.%d first on PATH and rebuild)",
             driver / 1000, driver % 1000 / 10, CUDART_VERSION / 1000, CUDART_VERSION % 1000 / 10,
             driver / 1000, driver % 1000 / 10);
    return 1;
  }
  if (err == cudaSuccess) err = cudaGetDeviceCount(&count);
  if (err == cudaSuccess && (device < 0 || device >= count)) {
    snprintf(msg, len, "no CUDA device %d (%d visible)", device, count);
    return 1;
  }
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device);
  if (err != cudaSuccess) {
    snprintf(msg, len, "CUDA runtime: %s", cudaGetErrorString(err));
    return 1;
  }
  if (major * 10 + minor < 75) {
    snprintf(msg, len, "GPU %d has compute capability %d.%d; the kernels need 7.5 or newer", device, major, minor);
    return 1;
  }
  return 0;
}

namespace dali {

DALI_REGISTER_OPERATOR(dalimix__ResampleMix, ::dalimix::ResampleMixGPU, GPU);

}  // namespace dali
