"""Time of one ResNet-20 training step (forward, backward, SGD update; batch 128, 3x32x32 inputs)
with ZipConv2d against nn.Conv2d, side by side in one process.

    python bench/step_overhead.py                      # CPU -> bench/results/step-overhead-cpu.json
    python bench/step_overhead.py --device cuda        # GPU -> bench/results/step-overhead-gpu.json

Configurations (first and last layers FP32 in all, as in the accuracy study): fp32 (plain
nn.Conv2d), zipml 2-bit stochastic with uniform levels and with optimal levels (the dynamic
program of Section 5 recomputed at every forward), per-channel scales; --configs adds bwn, xnor.
Repetitions are interleaved (each repetition runs one step of every configuration, in an order
rotated by one each time) so that drifts in machine load hit all alike; the figure is the median
per configuration, and the ratio is against fp32's median (the min ratio is kept too: on a shared
machine it is the figure load noise disturbs least). Also measured: the quantization work alone
(fake_quantize of all 18 quantized weights, and optimal_levels alone) and its share of the fastest
FP32 step, i.e. what the quantization, and the optimal levels' dynamic program, cost per step.
Goal: zipml/fp32 <= 1.25 on CPU.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch_zipml as tz  # noqa: E402
from torch_zipml.convert import QuantConfig, convert  # noqa: E402
from torch_zipml.models import resnet20  # noqa: E402
from torch_zipml.nn import ZipConv2d  # noqa: E402
from torch_zipml.train import write_json  # noqa: E402

from machine import describe  # noqa: E402

GOAL = 1.25
CONFIGS = {
    "fp32": QuantConfig("fp32"),
    "zipml-w2-uniform": QuantConfig("zipml", weight_bits=2, weight_levels="uniform", granularity="channel", seed=0),
    "zipml-w2-optimal": QuantConfig("zipml", weight_bits=2, weight_levels="optimal", granularity="channel", seed=0),
    "bwn": QuantConfig("bwn"),
    "xnor": QuantConfig("xnor"),
}
DEFAULT_CONFIGS = "fp32,zipml-w2-uniform,zipml-w2-optimal"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_ms(samples):
    return 1000.0 * statistics.median(samples)


def quantization_only(model, device, reps):
    """Seconds per step of the weight quantization alone, summed over the model's ZipConv2d layers,
    and of optimal_levels alone (the dynamic program, within fake_quantize with levels='optimal')."""
    layers = [m for m in model.modules() if isinstance(m, ZipConv2d)]
    weights = [m.weight.detach() for m in layers]
    result = {}
    for name, fn in (
        ("fake_quantize_uniform", lambda w, i: tz.fake_quantize(w, 2, granularity="channel", seed=0, offset=i)),
        ("fake_quantize_optimal", lambda w, i: tz.fake_quantize(w, 2, levels="optimal", granularity="channel",
                                                                seed=0, offset=i)),
        ("optimal_levels", lambda w, i: tz.optimal_levels(w, 4, scale=w.abs().amax((1, 2, 3), keepdim=True))),
    ):
        samples = []
        for r in range(reps):
            sync(device)
            start = time.perf_counter()
            for w in weights:
                fn(w, r)
            sync(device)
            samples.append(time.perf_counter() - start)
        result[name + "_ms"] = median_ms(samples)
    result["layers"] = len(layers)
    result["weights"] = sum(w.numel() for w in weights)
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--reps", type=int, default=15, help="timed steps per configuration")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per configuration first")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--configs", default=DEFAULT_CONFIGS, help=f"comma-separated, from {', '.join(CONFIGS)}")
    p.add_argument("--out", default=None, help="JSON path (default bench/results/step-overhead-{cpu,gpu}.json)")
    a = p.parse_args(argv)
    names = a.configs.split(",")
    unknown = [n for n in names if n not in CONFIGS]
    if unknown or "fp32" not in names:
        p.error(f"--configs must include fp32 and name only {', '.join(CONFIGS)}; got {a.configs}")
    if a.threads:
        torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    out = a.out or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                f"step-overhead-{'gpu' if device.type == 'cuda' else 'cpu'}.json")

    torch.manual_seed(0)
    base = resnet20(num_classes=10, in_channels=3)
    models, optimizers = {}, {}
    for name in names:
        model = convert(copy.deepcopy(base), CONFIGS[name]).to(device).train()
        models[name] = model
        optimizers[name] = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(a.batch_size, 3, 32, 32, generator=g).to(device)
    y = torch.randint(0, 10, (a.batch_size,), generator=g).to(device)

    def step(name):
        model, opt = models[name], optimizers[name]
        sync(device)
        start = time.perf_counter()
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sync(device)
        return time.perf_counter() - start

    load_before = os.getloadavg()
    for _ in range(a.warmup):
        for name in names:
            step(name)
    samples = {name: [] for name in names}
    for r in range(a.reps):
        for k in range(len(names)):
            name = names[(r + k) % len(names)]
            samples[name].append(step(name))
        print(f"rep {r + 1}/{a.reps}: " + ", ".join(f"{n} {1000 * samples[n][-1]:.0f} ms" for n in names),
              file=sys.stderr, flush=True)
    quant = quantization_only(models.get("zipml-w2-optimal", models["fp32"]), device, a.reps)
    load_after = os.getloadavg()

    fp32 = median_ms(samples["fp32"])
    fp32_min = 1000.0 * min(samples["fp32"])
    results = {}
    for name in names:
        ms = sorted(1000.0 * s for s in samples[name])
        results[name] = {"median_ms": median_ms(samples[name]), "min_ms": ms[0], "max_ms": ms[-1],
                         "ratio_to_fp32": median_ms(samples[name]) / fp32, "min_ratio_to_fp32": ms[0] / fp32_min,
                         "samples_ms": ms}
    # What the quantization itself adds, as a share of the fastest FP32 step: a bound on the
    # overhead that machine-load noise cannot inflate.
    quant["uniform_share_of_fp32_step"] = quant["fake_quantize_uniform_ms"] / fp32_min
    quant["optimal_share_of_fp32_step"] = quant["fake_quantize_optimal_ms"] / fp32_min
    zip_ratios = {n: r["ratio_to_fp32"] for n, r in results.items() if n.startswith("zipml")}
    report = {
        "benchmark": "step_overhead",
        "what": f"ResNet-20 training step (forward + backward + SGD), batch {a.batch_size}, 3x32x32, "
                f"first/last layer FP32; interleaved repetitions, median",
        "device": str(device), "machine": describe(device),
        "load_average_before": load_before, "load_average_after": load_after,
        "reps": a.reps, "warmup": a.warmup, "results": results, "quantization_only": quant,
        "goal": {"max_ratio": GOAL, "ratios": zip_ratios, "met": all(v <= GOAL for v in zip_ratios.values())},
    }
    write_json(report, out)
    for name, r in results.items():
        print(f"{name:18s} median {r['median_ms']:8.1f} ms ({r['ratio_to_fp32']:.3f}x fp32), "
              f"min {r['min_ms']:8.1f} ms ({r['min_ratio_to_fp32']:.3f}x)")
    print(f"quantization alone per step: uniform {quant['fake_quantize_uniform_ms']:.2f} ms "
          f"({100 * quant['uniform_share_of_fp32_step']:.1f}% of an fp32 step), optimal "
          f"{quant['fake_quantize_optimal_ms']:.2f} ms ({100 * quant['optimal_share_of_fp32_step']:.1f}%; "
          f"optimal_levels {quant['optimal_levels_ms']:.2f} ms) over {quant['layers']} layers; "
          f"load average {load_before[0]:.1f} -> {load_after[0]:.1f}")
    print(f"goal zipml <= {GOAL}x fp32: {'met' if report['goal']['met'] else 'NOT met'} -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
