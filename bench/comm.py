"""Gradient exchange of data-parallel training: torch_zipml.distributed's quantized all-gather hook
against DDP's fp32 all-reduce, on 2 and 4 gloo processes on this machine, side by side in one run;
then the accuracy cost in a short ResNet-20 run on Fashion-MNIST with 2 processes.

    python bench/comm.py                      # -> bench/results/comm.json
    python bench/comm.py --worlds 2 --steps 5 --accuracy-subset 1024 --accuracy-epochs 1   # quick look

Part 1, per world size W (one torchrun launch; every rank runs every configuration, interleaved
repetition by repetition so that load drifts hit all alike):
* payload: the bytes each rank contributes per step (the hook's counter; fp32: 4 bytes per gradient
  element), and the compression ratio fp32 / payload against the goal: within 10% of
  32 / bits with the scales' bytes counted, i.e. ratio >= 0.9 * 4N / (N bits / 8 + 4 S) for N
  gradient elements and S scales;
* wire: the bytes each process really wrote to its sockets per step (/proc/self/io wchar, which
  counts gloo's socket writes; nothing else writes during the steps), next to the ring model:
  all-reduce 2 (W-1)/W * 4N, all-gather (W-1) * payload;
* time: the exchange alone (a model with ResNet-20's parameter shapes whose gradient costs nothing:
  DDP step = bucket hooks + all-reduce or all-gather + decode) and a whole ResNet-20 training step
  (batch 32 per rank), median over repetitions, the slowest rank.
Part 2: `torchrun --nproc-per-node 2 -m torch_zipml.train --scheme fp32 ...` with fp32 gradients and
with --comm-bits 4 (and 2), same seed and budget: final test accuracy and its difference.

Timings on a shared machine are noisy; the byte counts are exact.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)

CONFIGS = {  # name -> register() settings (None: DDP's own fp32 all-reduce)
    "fp32-allreduce": None,
    "q8-uniform": dict(bits=8),
    "q4-uniform": dict(bits=4),
    "q4-optimal": dict(bits=4, levels="optimal"),
    "q2-uniform": dict(bits=2),
    "q1-uniform": dict(bits=1),
}


def wchar() -> int:
    with open("/proc/self/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("wchar"))


# ---- part 1: one torchrun worker ----------------------------------------------------------------

def worker(args) -> None:
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    import torch_zipml.distributed as zd
    from torch_zipml.models import resnet20

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.set_num_threads(1)

    class FreeGradient(torch.nn.Module):
        """ResNet-20's parameter shapes; d/dP sum(P * X) = X: the step is the exchange alone."""

        def __init__(self, shapes):
            super().__init__()
            self.params = torch.nn.ParameterList([torch.nn.Parameter(torch.zeros(s)) for s in shapes])

        def forward(self, xs):
            return sum((p * x).sum() for p, x in zip(self.params, xs))

    torch.manual_seed(0)
    shapes = [p.shape for p in resnet20(in_channels=1).parameters()]
    g = torch.Generator().manual_seed(rank)
    grads = [torch.randn(s, generator=g) * 0.01 for s in shapes]
    images = torch.randn(32, 1, 32, 32, generator=g)
    labels = torch.randint(0, 10, (32,), generator=g)

    def build(kind, config):
        torch.manual_seed(0)
        model = FreeGradient(shapes) if kind == "exchange" else resnet20(in_channels=1)
        ddp = DDP(model)
        state = zd.register(ddp, seed=1, **config) if config is not None else None
        opt = torch.optim.SGD(model.parameters(), lr=0.01)

        def step():
            opt.zero_grad()
            if kind == "exchange":
                ddp(grads).backward()
            else:
                torch.nn.functional.cross_entropy(ddp(images), labels).backward()
            opt.step()
        return step, state, sum(p.numel() for p in model.parameters()), len(shapes)

    results = {}
    for kind in ("exchange", "resnet20"):
        runs = {name: build(kind, config) for name, config in CONFIGS.items()}
        times = {name: [] for name in runs}
        wire = {name: 0 for name in runs}
        for step, _, _, _ in runs.values():
            for _ in range(args.warmup):
                step()
        sent0 = {name: (r[1].bytes_sent if r[1] else 0) for name, r in runs.items()}
        names = list(runs)
        for rep in range(args.steps):
            for name in names[rep % len(names):] + names[:rep % len(names)]:
                dist.barrier()
                w0, t0 = wchar(), time.perf_counter()
                runs[name][0]()
                times[name].append(time.perf_counter() - t0)
                wire[name] += wchar() - w0
        for name, (step, state, numel, tensors) in runs.items():
            payload = (state.bytes_sent - sent0[name]) / args.steps if state else 4 * numel
            results[f"{kind}/{name}"] = {"median_s": statistics.median(times[name]), "payload_bytes": payload,
                                         "wire_bytes": wire[name] / args.steps, "numel": numel, "tensors": tensors}
    everyone = [None] * world
    dist.all_gather_object(everyone, results)
    if rank == 0:
        merged = {}
        for key in results:
            per_rank = [r[key] for r in everyone]
            merged[key] = {**per_rank[0], "median_s": max(r["median_s"] for r in per_rank),
                           "wire_bytes": statistics.mean(r["wire_bytes"] for r in per_rank),
                           "wire_bytes_per_rank": [r["wire_bytes"] for r in per_rank]}
        with open(args.worker_out, "w") as f:
            json.dump(merged, f)
    dist.destroy_process_group()


# ---- driver -------------------------------------------------------------------------------------

def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(nproc: int, argv, timeout: float):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc), "--master-addr",
           "127.0.0.1", "--master-port", str(free_port()), *argv]
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])}
    subprocess.run(cmd, check=True, env=env, timeout=timeout)


def summarise(world: int, raw: dict) -> dict:
    from torch_zipml.distributed import CommConfig
    out = {}
    for kind in ("exchange", "resnet20"):
        fp32 = raw[f"{kind}/fp32-allreduce"]
        n, tensors = fp32["numel"], fp32["tensors"]
        for name, config in CONFIGS.items():
            r = raw[f"{kind}/{name}"]
            entry = {"step_ms": 1e3 * r["median_s"], "step_vs_fp32": r["median_s"] / fp32["median_s"],
                     "payload_bytes_per_step": r["payload_bytes"], "wire_bytes_per_step": r["wire_bytes"],
                     "wire_bytes_per_rank": r["wire_bytes_per_rank"]}
            if config is None:
                entry["wire_model_bytes"] = 2 * (world - 1) / world * 4 * n
            else:
                c = CommConfig(**config)
                levels = 4 * (1 << c.bits) * tensors if c.levels == "optimal" else 0
                formula = -(-n * c.bits // 8) + 4 * tensors + levels
                goal = 4 * n / (n * c.bits / 8 + 4 * tensors + levels)
                ratio = 4 * n / r["payload_bytes"]
                entry.update({"payload_formula_bytes": formula, "compression": ratio,
                              "compression_goal": goal, "meets_goal": ratio >= 0.9 * goal,
                              "wire_model_bytes": (world - 1) * r["payload_bytes"],
                              "wire_vs_fp32": r["wire_bytes"] / fp32["wire_bytes"]})
            out[f"{kind}/{name}"] = entry
    return {"gradient_elements": raw["exchange/fp32-allreduce"]["numel"],
            "parameter_tensors": raw["exchange/fp32-allreduce"]["tensors"], "configs": out}


def accuracy(args, tmp: str) -> dict:
    base = ["-m", "torch_zipml.train", "--scheme", "fp32", "--train-subset", str(args.accuracy_subset),
            "--test-subset", str(args.accuracy_test_subset), "--epochs", str(args.accuracy_epochs),
            "--batch-size", "128", "--seed", "0", "--progress", "off", "--no-plot", "--quiet"]
    runs = {"fp32": [], "comm4": ["--comm-bits", "4"], "comm2": ["--comm-bits", "2"]}
    out = {}
    for name, extra in runs.items():
        directory = os.path.join(tmp, name)
        start = time.perf_counter()
        torchrun(2, base + ["--out", directory] + extra, timeout=args.timeout)
        metrics = json.load(open(os.path.join(directory, "metrics.json")))
        out[name] = {"test_acc": metrics["final"]["test_acc"], "test_loss": metrics["final"]["test_loss"],
                     "steps": metrics["final"]["steps"], "wall_s": time.perf_counter() - start,
                     "communication": metrics.get("communication")}
    for name in ("comm4", "comm2"):
        out[name]["acc_minus_fp32"] = out[name]["test_acc"] - out["fp32"]["test_acc"]
    return {"command": "torchrun --nproc-per-node 2 -m torch_zipml.train " + " ".join(base[2:]) + " [--comm-bits B]",
            "runs": out}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--worlds", type=int, nargs="+", default=[2, 4])
    p.add_argument("--steps", type=int, default=12, help="timed repetitions per configuration")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--accuracy-subset", type=int, default=6000, help="training samples of the ResNet-20 run")
    p.add_argument("--accuracy-test-subset", type=int, default=2000)
    p.add_argument("--accuracy-epochs", type=int, default=2)
    p.add_argument("--no-accuracy", action="store_true")
    p.add_argument("--timeout", type=float, default=3600)
    p.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "comm.json"))
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)

    from torch_zipml.train import write_json

    from machine import describe

    start = time.perf_counter()
    load_before = os.getloadavg()
    result = {"benchmark": "comm", "what": __doc__.split("\n\n")[1].strip(),
              "machine": {**describe(), "backend": "gloo (loopback)", "threads_per_process": 1},
              "steps": args.steps, "warmup": args.warmup, "worlds": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for world in args.worlds:
            raw_path = os.path.join(tmp, f"w{world}.json")
            torchrun(world, [os.path.abspath(__file__), "--worker", "--worker-out", raw_path, "--steps",
                             str(args.steps), "--warmup", str(args.warmup)], timeout=args.timeout)
            result["worlds"][str(world)] = summarise(world, json.load(open(raw_path)))
        if not args.no_accuracy:
            result["accuracy"] = accuracy(args, tmp)
    result["load_average_before"], result["load_average_after"] = load_before, os.getloadavg()
    result["seconds"] = time.perf_counter() - start
    write_json(result, args.out)
    for world, w in result["worlds"].items():
        print(f"W={world}: {w['gradient_elements']} gradient elements in {w['parameter_tensors']} tensors")
        for name, e in w["configs"].items():
            extra = (f" compression {e['compression']:.2f} (goal {e['compression_goal']:.2f}, "
                     f"{'met' if e['meets_goal'] else 'MISSED'})" if "compression" in e else "")
            print(f"  {name:24s} {e['step_ms']:8.1f} ms ({e['step_vs_fp32']:.2f}x)  payload "
                  f"{e['payload_bytes_per_step']:9.0f} B  wire {e['wire_bytes_per_step']:9.0f} B "
                  f"(model {e['wire_model_bytes']:9.0f}){extra}")
    if "accuracy" in result:
        for name, r in result["accuracy"]["runs"].items():
            print(f"accuracy {name}: {r['test_acc']:.2f}% ({r.get('acc_minus_fp32', 0):+.2f} vs fp32), "
                  f"{r['wall_s']:.0f} s")
    print(f"wrote {args.out} ({result['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
