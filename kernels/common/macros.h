// Portability macros shared by the CPU and CUDA kernels.
#pragma once

#if defined(__CUDACC__)
#define ZIPML_HD __host__ __device__ __forceinline__
#else
#define ZIPML_HD inline
#endif
