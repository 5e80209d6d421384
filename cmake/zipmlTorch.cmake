# Finds the LibTorch inside the installed torch and defines the imported target `torch`.
# Shared by the build (CMakeLists.txt) and the installed package (zipmlConfig.cmake), so that the
# library and its consumers see the same torch.
#
# Sets:
#   ZIPML_TORCH_HAS_CUDA  torch is a CUDA build (its lib/ holds libtorch_cuda.so)
#   ZIPML_TORCH_CONFIG    ON: torch's own TorchConfig.cmake was used; OFF: the CPU-only fallback
#
# torch's CMake config of a CUDA build insists on a CUDA toolkit (it calls enable_language(CUDA)
# and fails without nvcc) and, without TORCH_CUDA_ARCH_LIST and without a GPU, compiles for a long
# list of architectures. So: nvcc is looked for first (PATH, CUDACXX, CUDA_HOME, /usr/local/cuda);
# TORCH_CUDA_ARCH_LIST defaults to CMAKE_CUDA_ARCHITECTURES if given, else to the GPU's compute
# capability, else to 9.0 (the H200); and a CUDA build of torch on a machine without nvcc is used
# through its CPU libraries directly (libtorch, libtorch_cpu, libc10), with the CUDA kernels off.
include_guard(GLOBAL)

# Where torch is: Torch_DIR, else CMAKE_PREFIX_PATH (torch.utils.cmake_prefix_path), else python3's torch.
function(_zipml_find_torch_config)
  set(candidates "${Torch_DIR}")
  foreach(prefix IN LISTS CMAKE_PREFIX_PATH ENV{CMAKE_PREFIX_PATH})
    list(APPEND candidates "${prefix}/Torch" "${prefix}/share/cmake/Torch")
  endforeach()
  find_package(Python3 COMPONENTS Interpreter QUIET)
  if(Python3_Interpreter_FOUND)
    list(APPEND candidates PYTHON)
  endif()
  foreach(dir IN LISTS candidates)
    if(dir STREQUAL "PYTHON")
      execute_process(COMMAND "${Python3_EXECUTABLE}" -c "import torch; print(torch.utils.cmake_prefix_path)"
                      OUTPUT_VARIABLE dir OUTPUT_STRIP_TRAILING_WHITESPACE RESULT_VARIABLE rc ERROR_QUIET)
      string(APPEND dir "/Torch")
    endif()
    if(dir AND EXISTS "${dir}/TorchConfig.cmake")
      set(ZIPML_TORCH_CONFIG_FILE "${dir}/TorchConfig.cmake" CACHE FILEPATH "TorchConfig.cmake of the LibTorch used")
      return()
    endif()
  endforeach()
endfunction()
if(NOT ZIPML_TORCH_CONFIG_FILE)
  _zipml_find_torch_config()
endif()
if(NOT ZIPML_TORCH_CONFIG_FILE)
  message(FATAL_ERROR "zipml: LibTorch not found. Install torch (pip install torch) and configure with "
                      "-DCMAKE_PREFIX_PATH=\"$(python3 -c 'import torch; print(torch.utils.cmake_prefix_path)')\"")
endif()
get_filename_component(_zipml_torch_dir "${ZIPML_TORCH_CONFIG_FILE}" DIRECTORY)
get_filename_component(ZIPML_TORCH_ROOT "${_zipml_torch_dir}/../../.." ABSOLUTE)
set(Torch_DIR "${_zipml_torch_dir}" CACHE PATH "Directory of TorchConfig.cmake" FORCE)

set(ZIPML_TORCH_HAS_CUDA OFF)
if(EXISTS "${ZIPML_TORCH_ROOT}/lib/libtorch_cuda.so")
  set(ZIPML_TORCH_HAS_CUDA ON)
endif()

set(ZIPML_TORCH_CONFIG ON)
if(ZIPML_TORCH_HAS_CUDA)
  if(NOT CMAKE_CUDA_COMPILER AND NOT DEFINED ENV{CUDACXX})
    find_program(ZIPML_NVCC nvcc HINTS ENV CUDA_HOME ENV CUDA_PATH PATH_SUFFIXES bin
                 PATHS /usr/local/cuda/bin DOC "nvcc of the CUDA toolkit")
    if(ZIPML_NVCC)
      set(CMAKE_CUDA_COMPILER "${ZIPML_NVCC}" CACHE FILEPATH "CUDA compiler")
    endif()
  endif()
  # A usable toolkit: an nvcc that runs.
  set(_zipml_nvcc "${CMAKE_CUDA_COMPILER}")
  if(NOT _zipml_nvcc AND DEFINED ENV{CUDACXX})
    set(_zipml_nvcc "$ENV{CUDACXX}")
  endif()
  set(_zipml_nvcc_ok OFF)
  if(_zipml_nvcc)
    execute_process(COMMAND "${_zipml_nvcc}" --version OUTPUT_VARIABLE _zipml_out RESULT_VARIABLE _zipml_rc
                    ERROR_QUIET)
    if(_zipml_rc EQUAL 0 AND _zipml_out MATCHES "release [0-9]")
      set(_zipml_nvcc_ok ON)
    endif()
  endif()
  if(_zipml_nvcc_ok)
    if(CMAKE_CUDA_COMPILER)
      get_filename_component(_zipml_cuda_root "${CMAKE_CUDA_COMPILER}" DIRECTORY)
      get_filename_component(_zipml_cuda_root "${_zipml_cuda_root}" DIRECTORY)
      # torch's FindCUDA and FindCUDAToolkit must pick the toolkit of this nvcc.
      if(NOT CUDA_TOOLKIT_ROOT_DIR)
        set(CUDA_TOOLKIT_ROOT_DIR "${_zipml_cuda_root}" CACHE PATH "CUDA toolkit")
      endif()
      if(NOT CUDAToolkit_ROOT)
        set(CUDAToolkit_ROOT "${_zipml_cuda_root}")
      endif()
    endif()
    if(CMAKE_CUDA_ARCHITECTURES MATCHES "^[0-9]")
      # Given as CMAKE_CUDA_ARCHITECTURES: 90 -> 9.0, 90a -> 9.0a, 100-real -> 10.0, kept in the
      # cache as TORCH_CUDA_ARCH_LIST (torch ignores, and warns about, CMAKE_CUDA_ARCHITECTURES).
      set(_zipml_archs "")
      foreach(_arch IN LISTS CMAKE_CUDA_ARCHITECTURES)
        string(REGEX REPLACE "-(real|virtual)$" "" _arch "${_arch}")
        string(REGEX REPLACE "^([0-9]+)([0-9])([a-z]?)$" "\\1.\\2\\3" _arch "${_arch}")
        list(APPEND _zipml_archs "${_arch}")
      endforeach()
      set(TORCH_CUDA_ARCH_LIST "${_zipml_archs}" CACHE STRING "CUDA architectures (torch's form: 9.0;10.0)" FORCE)
      unset(CMAKE_CUDA_ARCHITECTURES CACHE)
      unset(CMAKE_CUDA_ARCHITECTURES)
    elseif(NOT DEFINED TORCH_CUDA_ARCH_LIST AND NOT DEFINED ENV{TORCH_CUDA_ARCH_LIST})
      # This machine's GPUs, else the H200 (sm_90).
      execute_process(COMMAND nvidia-smi --query-gpu=compute_cap --format=csv,noheader
                      OUTPUT_VARIABLE _zipml_gpu_caps RESULT_VARIABLE _zipml_rc
                      OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
      if(_zipml_rc EQUAL 0 AND _zipml_gpu_caps MATCHES "^[0-9]+\\.[0-9]")
        string(REPLACE "\n" ";" TORCH_CUDA_ARCH_LIST "${_zipml_gpu_caps}")
        list(REMOVE_DUPLICATES TORCH_CUDA_ARCH_LIST)
      else()
        set(TORCH_CUDA_ARCH_LIST "9.0")
      endif()
    endif()
  else()
    set(ZIPML_TORCH_CONFIG OFF)
  endif()
endif()

if(ZIPML_TORCH_CONFIG)
  # CMP0104 OLD: enable_language(CUDA) inside torch's config leaves CMAKE_CUDA_ARCHITECTURES unset,
  # so torch does not warn that it ignores it (TORCH_CUDA_ARCH_LIST above carries the choice).
  cmake_policy(PUSH)
  cmake_policy(SET CMP0104 OLD)
  find_package(Torch REQUIRED CONFIG)
  cmake_policy(POP)
else()
  message(STATUS "zipml: torch is a CUDA build but no CUDA toolkit (nvcc) was found: using LibTorch's CPU "
                 "libraries directly (set CUDA_HOME or CMAKE_CUDA_COMPILER to use torch's CMake config)")
  if(NOT TARGET torch)
    add_library(torch INTERFACE IMPORTED)
    set_target_properties(torch PROPERTIES
      INTERFACE_INCLUDE_DIRECTORIES
        "${ZIPML_TORCH_ROOT}/include;${ZIPML_TORCH_ROOT}/include/torch/csrc/api/include"
      INTERFACE_LINK_LIBRARIES
        "${ZIPML_TORCH_ROOT}/lib/libtorch.so;${ZIPML_TORCH_ROOT}/lib/libtorch_cpu.so;${ZIPML_TORCH_ROOT}/lib/libc10.so"
      INTERFACE_COMPILE_FEATURES cxx_std_17)
  endif()
  set(TORCH_FOUND TRUE)
endif()
