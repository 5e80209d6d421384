// The zipml device operators of quantize_ops.cuh on the CUDA runtime, registered for CUDA tensors.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "quantize_ops.cuh"

namespace zipml::cuda {
namespace {

// The Device of quantize_ops.cuh: the current CUDA device and stream.
struct CudaDevice {
  using Guard = c10::cuda::CUDAGuard;

  static int multiprocessors() { return at::cuda::getCurrentDeviceProperties()->multiProcessorCount; }

  template <class Kernel>
  static int blocks_per_multiprocessor(Kernel kernel, int threads, size_t shared_bytes) {
    int blocks = 0;
    C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, kernel, threads, shared_bytes));
    return blocks;
  }

  static int64_t shared_bytes_per_block_optin() {
    return static_cast<int64_t>(at::cuda::getCurrentDeviceProperties()->sharedMemPerBlockOptin);
  }

  template <class Kernel>
  static void opt_in_shared_bytes(Kernel kernel, size_t bytes) {
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
  }

  template <class... Params, class... Args>
  static void launch(void (*kernel)(Params...), int grid, int threads, size_t shared_bytes, const Args&... args) {
    kernel<<<grid, threads, shared_bytes, at::cuda::getCurrentCUDAStream()>>>(args...);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
};

}  // namespace

TORCH_LIBRARY_IMPL(zipml, CUDA, m) {
  m.impl("_fake_quantize_into", &fake_quantize_into<CudaDevice>);
  m.impl("_quantize_codes", &quantize_codes<CudaDevice>);
  m.impl("_double_sample_codes", &double_sample_codes<CudaDevice>);
  m.impl("_dequantize_codes", &dequantize_codes<CudaDevice>);
  m.impl("_level_histogram", &level_histogram<CudaDevice>);
  m.impl("_absmax", &absmax<CudaDevice>);
  m.impl("_pack", &pack<CudaDevice>);
  m.impl("_unpack", &unpack<CudaDevice>);
}

}  // namespace zipml::cuda
