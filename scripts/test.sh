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
# --capture=sys: Python output is still captured per test, but native code writes to the log, so a
# crash in C++ shows its own message ("terminate called after ...") next to Python's traceback.
python3 -m pytest tests/python -q --capture=sys "$@"
