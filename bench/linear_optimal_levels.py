"""Variance-optimal against uniform levels with double sampling (ZipML, arXiv 1611.05402, Section 5;
issue 4, item 3): on data whose features are heavy-tailed, the fewest bits with which double sampling
reaches the fp32 loss + 1%, for each kind of levels, and the ratio of bytes the two move per epoch
(the paper reports up to 1.7x less data movement for optimal levels).

Data: least squares with a planted model (as the Synthetic sets) on heavy-tailed Laplace features:
after per-feature min-max scaling to [-1, 1] most values crowd around the middle of the range and a
few outliers set its ends, so a uniform grid spends most levels where there is little data and
optimal levels spend them where the data are. (Log-normal or Student-t features concentrate even
more, but make plain SGD, fp32 included, too ill-conditioned to compare at a fixed budget.) Levels
are per feature (the core's dynamic program over the column). Every run draws fresh samples each
epoch and averages the second half of its iterates, like bench/linear_double_sampling.py. With
enough epochs double sampling reaches fp32 at any width, so "fewest bits" is for the fixed budget
of epochs below. At 1 bit both kinds of levels are {-1, 1}, so bits start at 2.

Bytes: the compact store holds ceil(log2(K - 1)) + 2 bits per value (interval index and two
round-up bits) whatever the levels, plus the 4-byte label per row; optimal levels add their table
(K floats per feature) once, counted as well.

    python3 bench/linear_optimal_levels.py           # writes bench/results/linear_optimal_levels.{json,png}
    python3 bench/linear_optimal_levels.py --quick
"""

from __future__ import annotations

import time

import numpy as np

from linear_common import study_main, summary, train

from torch_zipml.linear.data import synthetic_regression

DATASETS = {
    "laplace100": dict(rows=10000, cols=100, epochs=15, step=0.2, decay=0.2, batch=16),
    "laplace1000": dict(rows=10000, cols=1000, epochs=15, step=0.1, decay=0.2, batch=16),
}
QUICK = {"laplace1000": dict(rows=4000)}
BITS = range(2, 9)
TOLERANCE = 0.01


def rounding_variance(store, U):
    """Total stochastic-rounding variance sum (L_j+1 - u)(u - L_j) over the data (Section 5)."""
    levels, j = store.levels(), store.intervals(0).astype(np.int64)
    cols = np.arange(store.cols)
    return float(((levels[cols, j + 1] - U) * (U - levels[cols, j])).sum())


def run_dataset(name, cfg, args):
    A, b, _ = synthetic_regression(cfg["rows"], cfg["cols"], distribution="laplace", seed=args.seed)
    common = dict(epochs=cfg["epochs"], step_size=cfg["step"], schedule="inverse", decay=cfg["decay"],
                  batch_size=cfg["batch"], average=cfg["epochs"] // 2, copies=0, seed=args.seed, threads=args.threads)
    start = time.perf_counter()
    fp32 = train(A, b, sampling="fp32", **common)
    target = fp32["loss_history"][-1] * (1 + TOLERANCE)
    U = fp32["trainer"].scaled.astype(np.float64)
    out = {"rows": cfg["rows"], "features": cfg["cols"], "options": common, "fp32_loss": fp32["loss_history"][-1],
           "target_loss": target, "runs": {"fp32": summary(fp32)}, "bits": {}}
    for levels in ("uniform", "optimal"):
        for bits in BITS:
            r = train(A, b, sampling="double", bits=bits, levels=levels, **common)
            store = r["trainer"].store
            table_bytes = 0 if levels == "uniform" else store.cols * (1 << bits) * 4
            out["runs"][f"{levels}{bits}"] = summary(r)
            out["bits"][f"{levels}{bits}"] = {
                "final_loss": r["loss_history"][-1],
                "vs_fp32": r["loss_history"][-1] / fp32["loss_history"][-1] - 1,
                "bytes_per_epoch": int(r["bytes_read"][-1]) + table_bytes,
                "rounding_variance": rounding_variance(store, U),
            }
            print(f"  {name} {levels} {bits} bits: {out['bits'][f'{levels}{bits}']['vs_fp32']:+.4f} vs fp32, "
                  f"variance {out['bits'][f'{levels}{bits}']['rounding_variance']:.4g}", flush=True)
    fewest = {}
    for levels in ("uniform", "optimal"):
        ok = [bits for bits in BITS if out["bits"][f"{levels}{bits}"]["final_loss"] <= target]
        fewest[levels] = min(ok) if ok else None
    out["fewest_bits"] = fewest
    if fewest["uniform"] and fewest["optimal"]:
        u, o = out["bits"][f"uniform{fewest['uniform']}"], out["bits"][f"optimal{fewest['optimal']}"]
        out["bytes_ratio_uniform_over_optimal"] = u["bytes_per_epoch"] / o["bytes_per_epoch"]
        out["bits_ratio_uniform_over_optimal"] = fewest["uniform"] / fewest["optimal"]
    # Bits of uniform levels with the rounding variance of optimal levels at b bits (each bit divides
    # the uniform grid's variance by about 4).
    out["uniform_bits_matching_optimal_variance"] = {
        b: b + float(np.log(out["bits"][f"uniform{b}"]["rounding_variance"] /
                            out["bits"][f"optimal{b}"]["rounding_variance"]) / np.log(4)) for b in BITS}
    out["seconds"] = time.perf_counter() - start
    print(f"  {name}: fewest bits {fewest}, bytes ratio {out.get('bytes_ratio_uniform_over_optimal')}, "
          f"{out['seconds']:.1f} s", flush=True)
    return out


def plot(results, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2 * len(results), figsize=(8.5 * len(results), 3.4), squeeze=False)
    for i, (name, data) in enumerate(results.items()):
        ax, av = axes[0][2 * i], axes[0][2 * i + 1]
        for levels, color in (("uniform", "tab:red"), ("optimal", "tab:blue")):
            rel = [max(data["bits"][f"{levels}{b}"]["vs_fp32"], 1e-6) for b in BITS]
            ax.plot(list(BITS), rel, "o-", color=color, label=f"{levels} levels")
            av.plot(list(BITS), [data["bits"][f"{levels}{b}"]["rounding_variance"] for b in BITS], "o-", color=color,
                    label=levels)
        ax.axhline(TOLERANCE, color="gray", ls=":", label="fp32 + 1%")
        ax.set_yscale("log")
        ax.set_xlabel("bits")
        ax.set_ylabel("final loss / fp32 loss - 1")
        ax.set_title(f"{name}: fewest bits {data['fewest_bits']}", fontsize=9)
        ax.legend(fontsize=7)
        av.set_yscale("log")
        av.set_xlabel("bits")
        av.set_ylabel("total rounding variance")
        av.set_title(f"{name}: variance of the stored samples", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


def main():
    study_main(__doc__, "linear_optimal_levels.json", DATASETS, QUICK, run_dataset, plot, tolerance=TOLERANCE)


if __name__ == "__main__":
    main()
