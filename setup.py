"""Builds torch_zipml._C, the zipml operators, with torch.utils.cpp_extension.

The CUDA kernels are compiled and linked whenever nvcc and a CUDA build of torch are present, with
or without a GPU (on a machine without one, TORCH_CUDA_ARCH_LIST defaults to 9.0, the H200).
ZIPML_CPU_ONLY=1 forces a CPU-only build; DEBUG=1 builds without optimisation.

    pip install --no-build-isolation -e .
"""

import glob
import os

import torch
from setuptools import find_packages, setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

ROOT = os.path.dirname(os.path.abspath(__file__))


def sources(pattern):
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern), recursive=True))


def use_cuda():
    if os.environ.get("ZIPML_CPU_ONLY", "0") == "1":
        return False
    return torch.version.cuda is not None and CUDA_HOME is not None


def extension():
    debug = os.environ.get("DEBUG", "0") == "1"
    opt = ["-O0", "-g"] if debug else ["-O3"]
    # No fused multiply-adds: every path (scalar, SIMD, CUDA) must compute the same bits.
    # -fopenmp: at::parallel_for is a header template over OpenMP (torch's CPU backend); compiled
    # without it, the kernels' parallel drivers run on one thread.
    cxx = opt + ["-ffp-contract=off", "-fno-math-errno", "-fopenmp"]
    # csrc/{nn,models,data,train} are the LibTorch front end (CMake's zipml_nn, zipml_train); Python has
    # its own in torch_zipml.
    frontend = tuple(os.path.join("csrc", d, "") for d in ("nn", "models", "data", "train"))
    srcs = [s for s in sources("csrc/**/*.cpp") if not s.startswith(frontend)] + sources("kernels/cpu/*.cpp")
    kwargs = dict(include_dirs=[os.path.join(ROOT, "csrc", "include")], extra_link_args=["-fopenmp"])
    if use_cuda():
        if not torch.cuda.is_available():
            os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "9.0")
        nvcc = opt + ["--fmad=false", "-Xcompiler", "-ffp-contract=off", "--expt-relaxed-constexpr"]
        return CUDAExtension(
            "torch_zipml._C",
            srcs + sources("kernels/cuda/*.cu"),
            extra_compile_args={"cxx": cxx + ["-DZIPML_WITH_CUDA"], "nvcc": nvcc + ["-DZIPML_WITH_CUDA"]},
            **kwargs,
        )
    return CppExtension("torch_zipml._C", srcs, extra_compile_args={"cxx": cxx}, **kwargs)


def fpga_extension():
    """torch_zipml._fpga: the FPGA accelerator's host driver, the C simulation of its HLS kernel and
    its performance model (fpga/, pybind11, no torch ops)."""
    debug = os.environ.get("DEBUG", "0") == "1"
    cxx = (["-O0", "-g"] if debug else ["-O2"]) + ["-std=c++20", "-ffp-contract=off", "-Wno-unknown-pragmas"]
    srcs = sources("fpga/host/*.cpp") + sources("fpga/reference/*.cpp") + sources("fpga/model/*.cpp")
    return CppExtension("torch_zipml._fpga", srcs, extra_compile_args={"cxx": cxx})


def linear_extension():
    """torch_zipml._linear: the low-precision linear solvers of linear/ (pybind11, no torch ops). The
    SIMD variants are selected at run time, each compiled under its own target pragma."""
    debug = os.environ.get("DEBUG", "0") == "1"
    cxx = (["-O0", "-g"] if debug else ["-O3"]) + ["-ffp-contract=off", "-fno-math-errno"]
    srcs = sources("linear/*.cpp") + ["csrc/ops/optimal_levels_dp.cpp"]
    return CppExtension("torch_zipml._linear", srcs, extra_compile_args={"cxx": cxx})


setup(
    name="torch-zipml",
    version="0.1.0",
    description="ZipML: end-to-end low-precision training (stochastic, double-sampled and "
    "variance-optimal quantization) as PyTorch operators",
    packages=find_packages(include=["torch_zipml", "torch_zipml.*"]),
    ext_modules=[extension(), linear_extension(), fpga_extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
    python_requires=">=3.10",
    install_requires=["torch>=2.11", "numpy"],
    entry_points={"console_scripts": ["zipml-linear = torch_zipml.linear.__main__:main"]},
)
