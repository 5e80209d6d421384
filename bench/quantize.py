"""CPU benchmark of torch_zipml's quantization kernels (issue 2, item 6).

GB/s of fake_quantize on a 2^26-element float32 tensor (stochastic and nearest; 1, 2, 4, 8 bits; per
tensor and per channel; the scale computed in the call or given), measured in the same run as the
bounds and the alternatives:

  * y.copy_(x) into a preallocated tensor: the memory bandwidth, our physical bound;
  * x.clone(): a copy into a fresh tensor, for the alternatives that cannot write into a given one;
  * a plain PyTorch composition of the same math (rand_like, floor, ...);
  * torch.fake_quantize_per_tensor_affine (nearest rounding only);
  * QPyTorch's fixed_point_quantize, if `pip install qtorch` works (it JIT-compiles C++).

Plus optimal_levels (K=16, M=1024 candidates, 2^20 elements) against one fake_quantize pass of the
same tensor, and each instruction-set variant (scalar, AVX2, AVX-512) on the stochastic 4-bit case.

GB/s counts the bytes the operation must move: 4 read + 4 written per float32 element, for every
entry alike (so "x copy" is a ratio of times). A scale computed in the call costs one more read of x
(a max-abs pass) that the count leaves out: the "computed scale" rows show that price, and the
max-abs pass is also timed alone (4 bytes read per element) against torch's reductions: aminmax per
tensor, amin and amax per channel. Our kernels
write into a preallocated output (`out=`): a fresh 256 MB output costs page faults that dwarf the
kernel; the alternatives have no such form and are timed as they are (compare them with clone).

Each figure is the median of --reps timed runs after --warmup runs, with torch.set_num_threads(2).
Every row runs alternately with the copy (copy, row, copy, row, ...), and its "x copy" is the ratio
of the two medians: on a shared machine both then see the same load. optimal_levels alternates
with the fake_quantize pass it is compared to.

    python3 bench/quantize.py                       # writes bench/results/quantize-cpu.json
    python3 bench/quantize.py --log2-numel 22 --reps 3 --output /tmp/q.json   # a quick look
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import tempfile
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # the checkout's torch_zipml, built in place, before any installed one
import torch_zipml  # noqa: E402
from machine import describe  # noqa: E402

BYTES_PER_ELEMENT = 8  # float32: 4 read + 4 written
SEED = 2017


def timed(fn, reps, warmup, partner=None):
    """Median and best time of fn over reps runs after warmup runs. With a partner, the two run
    alternately (partner, fn, partner, fn, ...) so that both see the same load, and the partner's
    median comes third."""
    for _ in range(warmup):
        if partner is not None:
            partner()
        fn()
    times, partner_times = [], []
    for _ in range(reps):
        if partner is not None:
            start = time.perf_counter()
            partner()
            partner_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), min(times), statistics.median(partner_times) if partner_times else None


def plain_fake_quantize(x, scale, bits, rounding, out):
    """The same math in plain PyTorch operations, in place where it can be (ZipML Section 2)."""
    k = 1 << bits
    t = (x * scale.reciprocal()).clamp_(-1.0, 1.0).add_(1.0).mul_(0.5 * (k - 1))
    j = t.floor().clamp_(max=k - 2)
    frac = t.sub_(j)
    up = torch.rand_like(frac) < frac if rounding == "stochastic" else frac >= 0.5
    torch.mul(j.add_(up).mul_(2.0 / (k - 1)).sub_(1.0), scale, out=out)


def load_qpytorch():
    """QPyTorch's fixed_point_quantize, or the reason it is unavailable."""
    try:
        from qtorch.quant import fixed_point_quantize  # compiles its C++ on first import
        return fixed_point_quantize, None
    except Exception as e:  # ImportError, or its JIT build failing
        return None, f"{type(e).__name__}: {e}".strip()[:2000]


class Bench:
    """Rows of figures; every row after the copy is timed alternately with the copy, and its
    x_copy is the ratio of the two medians."""

    def __init__(self, numel, reps, warmup):
        self.numel, self.reps, self.warmup = numel, reps, warmup
        self.rows = []
        self.copy = None

    def add(self, name, fn, *, slow=False, bytes_per_element=BYTES_PER_ELEMENT, **params):
        reps, warmup = (max(1, min(3, self.reps)), 1) if slow else (self.reps, self.warmup)
        median, best, copy_median = timed(fn, reps, warmup, partner=self.copy)
        row = {"name": name, **params, "seconds_median": median, "seconds_min": best,
               "gb_per_s": bytes_per_element * self.numel / median / 1e9, "reps": reps}
        if copy_median is not None:
            row["copy_seconds_median_alongside"] = copy_median
            row["x_copy"] = copy_median / median
        self.rows.append(row)
        print(f"  {name:<58} {median * 1e3:9.2f} ms {row['gb_per_s']:7.2f} GB/s"
              + (f" {row['x_copy']:6.2f}x copy" if "x_copy" in row else ""), flush=True)
        return row


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--log2-numel", type=int, default=26, help="tensor of 2^N float32 elements (default 26)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=7, help="timed runs per figure (median taken)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--channels", type=int, default=256, help="channels of the per-channel rows")
    parser.add_argument("--output", default=os.path.join(ROOT, "bench", "results", "quantize-cpu.json"))
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(SEED)
    numel = 1 << args.log2_numel
    x = torch.randn(numel)
    y = torch.empty_like(x)
    channels = x.view(args.channels, -1)
    tensor_scale = x.abs().amax()
    channel_scale = channels.abs().amax(dim=1, keepdim=True)
    auto_isa = torch_zipml.cpu_isa()
    info = describe()
    print(f"{info['cpu']}, {args.threads} threads, torch {info['torch']}, zipml CPU kernels: {auto_isa}")
    print(f"fake_quantize on 2^{args.log2_numel} float32 elements; GB/s = {BYTES_PER_ELEMENT} bytes/element "
          "(4 read + 4 written) / median time")

    bench = Bench(numel, args.reps, args.warmup)
    print("bounds")
    copy = bench.add("copy: y.copy_(x)", lambda: y.copy_(x), group="bound")
    copy["x_copy"] = 1.0
    bench.copy = lambda: y.copy_(x)
    bench.add("clone: x.clone() (fresh output)", lambda: x.clone(), group="bound")

    print("torch_zipml.fake_quantize(out=y)")
    for granularity in ("tensor", "channel"):
        src = x if granularity == "tensor" else channels
        dst = y if granularity == "tensor" else y.view_as(channels)
        given = tensor_scale if granularity == "tensor" else channel_scale
        for scale_source in ("given", "computed"):
            gran = given if scale_source == "given" else granularity
            for rounding in ("stochastic", "nearest"):
                for bits in (1, 2, 4, 8):
                    bench.add(f"zipml {rounding:<10} {bits} bit, per {granularity:<7}, scale {scale_source}",
                              lambda: torch_zipml.fake_quantize(src, bits, rounding=rounding, granularity=gran,
                                                                seed=SEED, out=dst),
                              group="zipml", rounding=rounding, bits=bits, granularity=granularity,
                              scale=scale_source)

    # The scale a call without one computes (max |x| per tensor or per channel): zipml's reads x once,
    # as torch.aminmax does for a whole tensor; per channel torch needs amin and amax, two reads.
    print("the computed scale alone (GB/s: 4 bytes read per element)")
    scale_pairs = (("tensor", lambda: torch.ops.zipml._absmax(x, 1), "torch.aminmax(x)",
                    lambda: torch.aminmax(x)),
                   ("channel", lambda: torch.ops.zipml._absmax(channels, args.channels),
                    "x.amin(1), x.amax(1)", lambda: (channels.amin(1), channels.amax(1))))
    for granularity, ours, torch_name, theirs in scale_pairs:
        bench.add(f"zipml max-abs scale, per {granularity}", ours, bytes_per_element=4, group="scale",
                  granularity=granularity, implementation="zipml")
        bench.add(f"torch: {torch_name}", theirs, bytes_per_element=4, group="scale", granularity=granularity,
                  implementation="torch")

    print("alternatives (4 bit, per tensor, scale given)")
    for rounding in ("stochastic", "nearest"):
        bench.add(f"plain PyTorch composition, {rounding}",
                  lambda: plain_fake_quantize(x, tensor_scale, 4, rounding, y), slow=True,
                  group="plain", rounding=rounding, bits=4, granularity="tensor", scale="given")
    for bits in (4, 8):
        qmax = (1 << (bits - 1)) - 1
        step = float(tensor_scale) / qmax
        bench.add(f"torch.fake_quantize_per_tensor_affine, {bits} bit (fresh output)",
                  lambda: torch.fake_quantize_per_tensor_affine(x, step, 0, -qmax - 1, qmax),
                  group="torch", rounding="nearest", bits=bits, granularity="tensor", scale="given")
    fixed_point_quantize, qpytorch_error = load_qpytorch()
    qpytorch = {"available": fixed_point_quantize is not None, "error": qpytorch_error}
    if fixed_point_quantize is None:
        print(f"  QPyTorch unavailable: {qpytorch_error}")
    else:
        for rounding in ("stochastic", "nearest"):
            # wl=8 bits with fl=6 fractional bits: a fixed-point grid over [-2, 2) at the input's scale
            bench.add(f"QPyTorch fixed_point_quantize(wl=8, fl=6), {rounding} (fresh output)",
                      lambda: fixed_point_quantize(x, 8, 6, rounding=rounding), slow=True,
                      group="qpytorch", rounding=rounding, bits=8, granularity="tensor", scale="fixed")

    print(f"instruction-set variants (stochastic 4 bit, per tensor, scale given)")
    for isa in ("scalar", "avx2", "avx512"):
        try:
            torch_zipml.cpu_isa(isa)
        except RuntimeError as e:
            print(f"  {isa}: unavailable ({e})")
            continue
        try:
            bench.add(f"zipml isa={isa}",
                      lambda: torch_zipml.fake_quantize(x, 4, granularity=tensor_scale, seed=SEED, out=y),
                      slow=isa == "scalar", group="isa", isa=isa, rounding="stochastic", bits=4,
                      granularity="tensor", scale="given")
        finally:
            torch_zipml.cpu_isa("auto")

    print("optimal_levels(K=16, M=1024) on 2^20 elements, against one fake_quantize pass")
    small = torch.randn(1 << 20)
    small_out = torch.empty_like(small)
    small_scale = small.abs().amax()
    def fq_small():
        torch_zipml.fake_quantize(small, 4, seed=SEED, out=small_out)

    def fq_small_given():
        torch_zipml.fake_quantize(small, 4, granularity=small_scale, seed=SEED, out=small_out)

    t_opt = timed(lambda: torch_zipml.optimal_levels(small, 16, candidates=1024), 3 * args.reps, args.warmup,
                  partner=fq_small)
    t_fq = (t_opt[2],)
    t_fq_given = timed(fq_small_given, 3 * args.reps, args.warmup)
    optimal = {"numel": 1 << 20, "num_levels": 16, "candidates": 1024,
               "seconds_median": t_opt[0], "seconds_min": t_opt[1],
               "fake_quantize_seconds_median": t_fq[0],
               "fake_quantize_given_scale_seconds_median": t_fq_given[0],
               "passes": t_opt[0] / t_fq[0], "passes_vs_given_scale_pass": t_opt[0] / t_fq_given[0]}
    print(f"  optimal_levels {t_opt[0] * 1e3:.3f} ms; fake_quantize {t_fq[0] * 1e3:.3f} ms (scale computed), "
          f"{t_fq_given[0] * 1e3:.3f} ms (given): {optimal['passes']:.2f} passes "
          f"({optimal['passes_vs_given_scale_pass']:.2f} of the given-scale pass)")

    def rows(**match):
        return [r for r in bench.rows if all(r.get(k) == v for k, v in match.items())]

    def worst(**match):
        return min(r["x_copy"] for r in rows(**match))

    plain_stochastic = rows(group="plain", rounding="stochastic")[0]["seconds_median"]
    ours_stochastic = rows(group="zipml", rounding="stochastic", bits=4, granularity="tensor", scale="given")[0]
    goals = [
        {"goal": "stochastic fake_quantize >= 0.8x copy (worst of 1/2/4/8 bits, per tensor and per channel, "
                 "scale given)", "target": 0.8, "measured": worst(group="zipml", rounding="stochastic", scale="given")},
        {"goal": "stochastic fake_quantize >= 4x the plain PyTorch composition (4 bit, per tensor, scale given)",
         "target": 4.0, "measured": plain_stochastic / ours_stochastic["seconds_median"]},
        {"goal": "nearest fake_quantize >= 0.9x copy (worst of 1/2/4/8 bits, per tensor and per channel, "
                 "scale given)", "target": 0.9, "measured": worst(group="zipml", rounding="nearest", scale="given")},
        {"goal": "optimal_levels (K=16, M=1024, 2^20 elements) <= 5 fake_quantize passes (default call: scale "
                 "computed in both)", "target": 5.0, "measured": optimal["passes"], "at_most": True},
    ]
    for g in goals:
        g["met"] = g["measured"] <= g["target"] if g.pop("at_most", False) else g["measured"] >= g["target"]
    info_only = {
        "stochastic_x_copy_scale_computed_worst": worst(group="zipml", rounding="stochastic", scale="computed"),
        "nearest_x_copy_scale_computed_worst": worst(group="zipml", rounding="nearest", scale="computed"),
    }
    for granularity in ("tensor", "channel"):
        ours, theirs = (rows(group="scale", granularity=granularity, implementation=i)[0]["seconds_median"]
                        for i in ("zipml", "torch"))
        info_only[f"scale_per_{granularity}_speedup_over_torch"] = theirs / ours
    print("goals")
    for g in goals:
        print(f"  [{'met' if g['met'] else 'NOT MET'}] {g['goal']}: {g['measured']:.2f}")
    print(f"  (scale computed in the call, one extra read of x: stochastic worst "
          f"{info_only['stochastic_x_copy_scale_computed_worst']:.2f}x copy, nearest worst "
          f"{info_only['nearest_x_copy_scale_computed_worst']:.2f}x copy)")
    print(f"  (the max-abs scale alone against torch's reductions: per tensor "
          f"{info_only['scale_per_tensor_speedup_over_torch']:.2f}x, per channel "
          f"{info_only['scale_per_channel_speedup_over_torch']:.2f}x)")

    result = {
        "benchmark": "bench/quantize.py",
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": info,
        "settings": {"numel": numel, "dtype": "float32", "threads": args.threads, "reps": args.reps,
                     "warmup": args.warmup, "statistic": "median", "channels": args.channels,
                     "cpu_isa_auto": auto_isa, "bytes_per_element": BYTES_PER_ELEMENT,
                     "bytes_note": "GB/s counts 4 bytes read + 4 bytes written per element for every row but the "
                                   "'scale' group's (4 bytes read); a scale "
                                   "computed in the call reads x once more (not counted); 'fresh output' rows "
                                   "allocate their 256 MB result per call (page faults included)"},
        "results": bench.rows,
        "optimal_levels": optimal,
        "qpytorch": qpytorch,
        "goals": goals,
        "scale_computed_in_call": info_only,
        "note": "provisional unless run on a quiet machine: the figures share the cores with whatever else runs",
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(args.output)), suffix=".json.tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    os.replace(tmp, args.output)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
