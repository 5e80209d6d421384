#!/usr/bin/env bash
# The GPU check of torch-zipml (issue 2), for a lent GPU machine (an H200: 16 cores, no network,
# torch preinstalled, this repository copied without build outputs). In order, each phase timed:
#   1. environment   GPU, driver, python, torch, nvcc, ninja (into summary.txt)
#   2. build         the extension in place with its CUDA kernels (MAX_JOBS=16, sm_90)
#   3. tests         tests/python/test_cuda.py: every operator on the GPU against the CPU, bit for bit
#   4. benchmark     bench/quantize_gpu.py: fake_quantize against the device-to-device copy
#                    -> bench/results/quantize-gpu.json
#   5. step overhead bench/step_overhead.py: a ResNet-20 training step with ZipConv2d against
#                    nn.Conv2d -> bench/results/step-overhead-gpu.json, if the budget allows
#   6. sanitizer     compute-sanitizer memcheck and racecheck over every kernel on small inputs, if
#                    the tool is there and the time budget allows
# The whole check is meant to finish in under 8 minutes. A failing build stops it; failing tests do
# not stop the benchmark, but make the exit status non-zero. When $OUT is set, the logs, the
# summary and the result JSON are copied there (at most 8 files).
#
#     bench/gpu_check.sh            # PYTHON=... picks the interpreter (default python3)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PYTHON=${PYTHON:-python3}
BUDGET_S=${ZIPML_GPU_CHECK_BUDGET_S:-480}  # 8 minutes
RESULTS=$ROOT/bench/results
LOGS=$(mktemp -d "${TMPDIR:-/tmp}/zipml-gpu-check.XXXXXX")
SUMMARY=$LOGS/summary.txt
STATUS=0
export PYTHONUNBUFFERED=1 PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$RESULTS"
touch "$LOGS/.started"

say() { printf '%s\n' "$*" | tee -a "$SUMMARY"; }
remaining() { echo $((BUDGET_S - SECONDS)); }

# phase NAME LOG COMMAND...: runs COMMAND, its output to the terminal and to $LOGS/LOG (appended),
# and records how long it took and how it ended. Returns COMMAND's exit status.
phase() {
  local name=$1 log=$2 start=$SECONDS rc=0
  shift 2
  say "== $name: start at ${start}s: $(printf '%.160s' "$*" | head -1)"
  "$@" 2>&1 | tee -a "$LOGS/$log" || rc=$?
  say "== $name: exit $rc after $((SECONDS - start))s"
  return "$rc"
}

# Results of this run only (a stale JSON from the repository is not copied).
copy_out() {
  [ -n "${OUT:-}" ] || return 0
  mkdir -p "$OUT"
  local f
  for f in "$SUMMARY" "$LOGS"/*.log; do [ -f "$f" ] && cp -f "$f" "$OUT"/; done
  for f in "$RESULTS"/quantize-gpu.json "$RESULTS"/step-overhead-gpu.json; do
    if [ -f "$f" ] && [ "$f" -nt "$LOGS/.started" ]; then cp -f "$f" "$OUT"/; fi
  done
}

finish() {
  local rc=$?
  [ "$rc" -ne 0 ] || rc=$STATUS
  say "== gpu_check: $([ "$rc" -eq 0 ] && echo PASSED || echo FAILED) (exit $rc) in ${SECONDS}s; logs in $LOGS"
  copy_out
  exit "$rc"
}
trap finish EXIT

# ---- 1. environment ------------------------------------------------------------------------------
say "== environment"
{
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv || echo "nvidia-smi failed"
  "$PYTHON" -c 'import sys, torch; print("python", sys.version.split()[0], "| torch", torch.__version__,
      "| cuda", torch.version.cuda, "| gpu", torch.cuda.get_device_name() if torch.cuda.is_available() else None)' \
    || echo "python3 cannot import torch"
  nvcc --version | tail -1 || echo "no nvcc"
  echo "ninja: $(command -v ninja || echo none) | cores: $(nproc)"
} 2>&1 | tee -a "$SUMMARY" || true

# ---- 2. build ------------------------------------------------------------------------------------
phase build build.log env -u ZIPML_CPU_ONLY MAX_JOBS=16 TORCH_CUDA_ARCH_LIST=9.0 \
  "$PYTHON" setup.py build_ext --inplace
phase kernels build.log "$PYTHON" -c '
import torch, torch_zipml
ops = ["_fake_quantize_into", "_quantize_codes", "_double_sample_codes", "_dequantize_codes",
       "_level_histogram", "_pack", "_unpack"]
missing = [op for op in ops if not torch._C._dispatch_has_kernel_for_dispatch_key("zipml::" + op, "CUDA")]
assert torch.cuda.is_available(), "torch sees no GPU"
assert not missing, f"no CUDA kernel registered for {missing}"
print("CUDA kernels registered for", len(ops), "device operators")'

# ---- 3. tests ------------------------------------------------------------------------------------
phase tests test_cuda.log timeout 270 "$PYTHON" -m pytest tests/python/test_cuda.py -q -rfEs \
  -p no:cacheprovider || STATUS=1

# ---- 4. benchmark --------------------------------------------------------------------------------
phase benchmark quantize_gpu.log timeout 150 "$PYTHON" bench/quantize_gpu.py \
  --output "$RESULTS/quantize-gpu.json" || STATUS=1

# ---- 5. step overhead ------------------------------------------------------------------------------
# After the kernels' own figures: it needs the budget the tests and the benchmark left, and leaves
# the sanitizer at least a minute.
if [ "$(remaining)" -lt 90 ]; then
  say "== step overhead: skipped ($(remaining)s of the budget left)"
else
  limit=$(( $(remaining) - 60 < 120 ? $(remaining) - 60 : 120 ))
  phase "step overhead" step_overhead.log timeout "$limit" "$PYTHON" bench/step_overhead.py --device cuda \
    --reps 30 --out "$RESULTS/step-overhead-gpu.json" || STATUS=1
fi

# ---- 6. sanitizer --------------------------------------------------------------------------------
if ! command -v compute-sanitizer > /dev/null; then
  say "== sanitizer: skipped (no compute-sanitizer)"
elif [ "$(remaining)" -lt 100 ]; then
  say "== sanitizer: skipped ($(remaining)s of the budget left)"
else
  # Every kernel on small inputs: odd sizes, misaligned pointers, codebooks, all dtypes, the three
  # histogram paths (default, opted-in and global), error flags.
  cat > "$LOGS/sanitize_ops.py" <<'EOF'
import torch
import torch_zipml as z

ops, dev = torch.ops.zipml, "cuda"
book = torch.tensor([-0.9, -0.2, 0.4, 0.8], device=dev)
for dtype in [torch.float32, torch.float16, torch.bfloat16, torch.float64]:
    for n in [1, 5, 1003]:
        base = torch.randn(n + 1, device=dev).to(dtype)
        for x in [base[:n], base[1:]]:
            for levels in ["uniform", book]:
                z.fake_quantize(x, 2, levels=levels, seed=1)
                q = z.quantize(x, 2, levels=levels, seed=1, rounding="nearest")
                q.dequantize(dtype)
                d = z.double_sample(x, 2, levels=levels, seed=1)
                d.decode(dtype)
    x = torch.randn(6, 501, device=dev).to(dtype)
    s = x.float().abs().amax(dim=1, keepdim=True)
    for bins in [7, 1024, 5000]:
        ops._level_histogram(x, s, bins)
    z.fake_quantize(x, 3, levels="optimal", granularity="channel", seed=2)
for bits in range(1, 9):
    for n in [1, 7, 1001]:
        codes = torch.randint(0, 1 << bits, (n,), device=dev, dtype=torch.uint8)
        z.unpack(z.pack(codes, bits), bits, n)
try:
    z.quantize(torch.tensor([1.0, float("nan")], device=dev), 2)
except ValueError:
    pass
torch.cuda.synchronize()
print("sanitize_ops: every kernel ran")
EOF
  # A clean run ends with "ERROR SUMMARY: 0 errors"; any other count is a finding and fails the
  # check. A tool that cannot run on this machine (some runtimes refuse it) or a timeout is noted.
  for tool in memcheck racecheck; do
    if [ "$(remaining)" -lt 60 ]; then
      say "== sanitizer $tool: skipped ($(remaining)s of the budget left)"
      continue
    fi
    limit=$(( $(remaining) - 30 < 120 ? $(remaining) - 30 : 120 ))
    rc=0
    phase "sanitizer $tool" "sanitizer-$tool.txt" timeout "$limit" compute-sanitizer --tool "$tool" \
      --print-limit 20 "$PYTHON" "$LOGS/sanitize_ops.py" || rc=$?
    cat "$LOGS/sanitizer-$tool.txt" >> "$LOGS/sanitizer.log"
    if grep -Eq "ERROR SUMMARY: [1-9]|RACECHECK SUMMARY: [1-9]" "$LOGS/sanitizer-$tool.txt"; then
      say "== sanitizer $tool: FOUND ERRORS (see sanitizer.log)"
      STATUS=1
    elif [ "$rc" -eq 124 ]; then
      say "== sanitizer $tool: did not finish within ${limit}s (not counted as a failure)"
    elif [ "$rc" -ne 0 ]; then
      say "== sanitizer $tool: did not run cleanly (exit $rc; see sanitizer.log), not counted as a failure"
    else
      say "== sanitizer $tool: clean"
    fi
  done
fi
