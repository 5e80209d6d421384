#!/usr/bin/env bash
# Installs every dependency of torch-zipml on a fresh Debian machine and builds the project:
# Debian packages, the pinned Python packages (torch is PyPI's CUDA 13.0 build), the Python
# extension (torch_zipml._C) and the CMake tree (C++ library, GoogleTest suite, examples).
# Idempotent: what is already there is kept, and the builds are incremental.
#
#   scripts/install.sh            everything
#   ZIPML_CPU_ONLY=1 scripts/install.sh   skip the CUDA kernels
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(build-essential cmake ninja-build libgtest-dev dataset-fashion-mnist liblinear-tools)
export MAX_JOBS="${MAX_JOBS:-2}"

log() { printf '\n== %s\n' "$*"; }

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  log "apt-get install ${missing[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q "${missing[@]}"
fi

log "Python packages (scripts/requirements.txt)"
python3 -m pip install -q --disable-pip-version-check -r scripts/requirements.txt

# The extension's CUDA code is compiled by nvcc against torch's CUDA runtime: their versions must agree.
if command -v nvcc >/dev/null 2>&1 || [ -x /usr/local/cuda/bin/nvcc ]; then
  NVCC="$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)"
  nvcc_version="$("$NVCC" --version | sed -n 's/.*release \([0-9]*\.[0-9]*\).*/\1/p')"
  torch_cuda="$(python3 -c 'import torch; print(torch.version.cuda or "")')"
  if [ -n "$torch_cuda" ] && [ "$nvcc_version" != "$torch_cuda" ] && [ "${ZIPML_CPU_ONLY:-0}" != "1" ]; then
    echo "nvcc is CUDA $nvcc_version but torch was built with CUDA $torch_cuda; set ZIPML_CPU_ONLY=1 or install matching versions" >&2
    exit 1
  fi
  export CUDA_HOME="${CUDA_HOME:-$(dirname "$(dirname "$NVCC")")}"
  export PATH="$CUDA_HOME/bin:$PATH"
fi
# Without a GPU, build the CUDA code for the H200 (sm_90) only.
if ! python3 -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"
fi

log "Python extension (pip install --no-build-isolation -e .)"
python3 -m pip install -q --disable-pip-version-check --no-build-isolation --no-deps -e .

if [ -f CMakeLists.txt ]; then
  log "CMake build (build-cmake/)"
  prefix="$(python3 -c 'import torch; print(torch.utils.cmake_prefix_path)')"
  cmake -S . -B build-cmake -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$prefix" >/dev/null
  cmake --build build-cmake -j "$MAX_JOBS"
fi
log "torch-zipml is installed"
