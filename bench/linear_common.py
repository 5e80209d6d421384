"""Shared pieces of the bench/linear_*.py scripts: the machine description, the JSON writer, and
the training runs through torch_zipml.linear's Trainer (the C++ solver) with the history kept."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # the checkout's torch_zipml, built in place, before any installed one
RESULTS = os.path.join(ROOT, "bench", "results")

import torch  # noqa: E402,F401
from torch_zipml import _linear  # noqa: E402

from machine import describe  # noqa: E402


def machine() -> dict:
    """bench/machine.py's description plus the ISA of the linear solvers' integer kernels."""
    return {**describe(), "linear_kernels": _linear.isa()}


def write_json(name: str, data: dict, path: str = None) -> str:
    path = path or os.path.join(RESULTS, name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(data, f, indent=1, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o))
    print(f"wrote {path}")
    return path


def train(X, y, **options) -> dict:
    """One training run; returns the solver's result plus the Trainer (for the closed forms) and
    the wall time of construction (scaling, shuffling, building the store)."""
    start = time.perf_counter()
    trainer = _linear.Trainer(np.ascontiguousarray(X, dtype=np.float32), np.ascontiguousarray(y, dtype=np.float32),
                              options)
    built = time.perf_counter() - start
    result = trainer.fit()
    result["build_seconds"] = built
    result["trainer"] = trainer
    return result


def summary(result: dict) -> dict:
    """The JSON-able part of a run."""
    keep = ("loss_history", "epoch_seconds", "bytes_read", "refetch_fraction", "engine", "isa", "samples",
            "store_bytes", "build_seconds", "chebyshev_error")
    return {k: (np.asarray(result[k]).tolist() if hasattr(result[k], "__len__") and not isinstance(result[k], str)
                else result[k]) for k in keep if k in result}


def study_main(doc: str, output: str, datasets: dict, quick: dict, run_dataset, plot, **extra) -> None:
    """The command line of the per-data-set studies (bench/linear_{double_sampling,optimal_levels,
    classification}.py): runs run_dataset(name, config, args) on each data set, writes the JSON
    (machine, quick, `extra`, datasets) and plots it next to it."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer epochs and smaller data")
    parser.add_argument("--datasets", nargs="*", default=list(datasets))
    parser.add_argument("--threads", type=int, default=0, help="0: all cores")
    parser.add_argument("--seed", type=int, default=2017)
    parser.add_argument("--output", default=os.path.join(RESULTS, output))
    args = parser.parse_args()
    results = {}
    for name in args.datasets:
        cfg = dict(datasets[name], **(quick.get(name, {}) if args.quick else {}))
        print(f"{name}: {cfg}", flush=True)
        results[name] = run_dataset(name, cfg, args)
    write_json(None, {"machine": machine(), "quick": args.quick, **extra, "datasets": results}, args.output)
    plot(results, os.path.splitext(args.output)[0] + ".png")
