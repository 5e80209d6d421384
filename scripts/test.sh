#!/usr/bin/env bash
# Runs every test of torch-zipml: set-up (scripts/install.sh), the GoogleTest suite (ctest) and
# the pytest suite. CUDA tests run where a GPU is present and are skipped elsewhere.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh
if [ -d build-cmake ]; then
  printf '\n== ctest\n'
  ctest --test-dir build-cmake --output-on-failure -j 2
fi
printf '\n== pytest\n'
python3 -m pytest tests/python -q "$@"
