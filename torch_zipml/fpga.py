"""The FPGA accelerator of fpga/ as a training backend: device="fpga-sim" of the linear estimators.

ZipML (Zhang et al., ICML 2017, arXiv 1611.05402, Section 10) trains linear models on an FPGA that
reads double-sampled low-precision data: 2b bits per value, both samples of a feature side by side
in 512-bit lines. Here the accelerator's HLS kernel runs in C simulation (one loop iteration per
clock), so training gives the model the hardware would compute, bit for bit, and the clocks it
would take on a platform whose memory bandwidth the simulation models.

    from torch_zipml import fpga
    r = fpga.train(X, y, dict(loss="least_squares", bits=2, epochs=10, step_size=0.125, batch_size=16))
    r["loss_history"], r["epoch_seconds"], r["cycles"]

`train` takes the options of torch_zipml._linear.Trainer (what the estimators' _options() builds)
and returns the keys of Trainer.fit() (w, w0, coef, intercept, loss_history, bytes_read,
epoch_seconds, ...) plus the accelerator's own. The data are prepared by the same Trainer (per-
feature scaling to [-1, 1], the shuffled training order) and quantized with the same Philox
streams as the linear solvers' sample store; the loss history is the Trainer's objective on the
full-precision data. What the accelerator does differently from the software solver:

* the mini-batch gradient is summed and the step is a power of two: step 2^-s with
  2^-s = step_size / batch_size rounded to the nearest power of two (step_size_used); batch_size
  must be a power of two; l2 becomes a shift the same way (l2_used);
* rows are read in the training order every epoch (the software shuffles the batch order);
* logistic regression uses a table of the sigmoid on the double-sampled dot product (the plug-in
  gradient, biased under quantization, Section 6), not the Chebyshev estimator; squared_hinge
  uses the margin-gated least-squares gradient, without refetching; hinge is not supported;
* the model is 32-bit fixed point (Q8.23); labels of least squares are centred and scaled by a
  power of two (an exact change of variables for SGD);
* sampling "fp32" runs the float design (16 floats per line, converted to Q1.23 in the lanes);
  levels must be uniform; model_bits and grad_bits must be None (the model stays on chip);
  schedule "constant", or "exponential" with decay 0.5 (one more shift at each epoch boundary;
  the software solver decays smoothly within epochs).
"""

from __future__ import annotations

import math

import numpy as np
import torch  # noqa: F401  (loads libtorch before the extensions)

from . import _fpga, _linear

# Options of the software solver that the accelerator has no use for.
_IGNORED = ("threads", "engine", "candidates", "degree", "chebyshev_range")


def platforms() -> list:
    """The platforms the performance model knows: name, clock_hz, bandwidth (bytes/s), and the
    source of those figures (all assumptions unless stated otherwise)."""
    return list(_fpga.platforms())


def _power_of_two_shift(value: float, name: str) -> int:
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{name} must be positive and finite, got {value!r}")
    return int(round(-math.log2(value)))


def hardware_options(options: dict, platform: str = "harp_v1", lanes: int = 0):
    """(kernel options of torch_zipml._fpga.train, step_size used, l2 used) for the linear
    solvers' options: the step and the ridge rounded to powers of two. Raises ValueError naming
    what the accelerator cannot do."""
    o = dict(options)
    unknown = set(o) - {"loss", "sampling", "bits", "levels", "model_bits", "grad_bits", "epochs", "batch_size",
                        "step_size", "schedule", "decay", "l2", "copies", "seed", "scale", "fit_intercept",
                        "average", "record_loss", *_IGNORED}
    if unknown:
        raise ValueError(f"unknown option(s) {sorted(unknown)}")
    loss = o.get("loss", "least_squares")
    if loss not in ("least_squares", "lssvm", "logistic", "squared_hinge"):
        raise ValueError(f"device='fpga-sim' trains least_squares, lssvm, logistic and squared_hinge, got loss {loss!r}")
    sampling = o.get("sampling", "double")
    if sampling not in ("fp32", "double", "naive", "nearest"):
        raise ValueError(f"sampling must be one of fp32, double, naive, nearest, got {sampling!r}")
    bits = int(o.get("bits", 8))
    if sampling != "fp32" and bits not in (1, 2, 4, 8):
        raise ValueError(f"device='fpga-sim' has designs for bits 1, 2, 4 and 8 (and sampling='fp32'), got bits={bits}")
    if o.get("levels", "uniform") != "uniform":
        raise ValueError("device='fpga-sim' decodes the uniform grid only: levels must be 'uniform'")
    for name in ("model_bits", "grad_bits"):
        if o.get(name):
            raise ValueError(f"device='fpga-sim' keeps the model on chip in 32-bit fixed point: {name} must be None")
    if o.get("average") is not None:
        raise ValueError("device='fpga-sim' returns the last iterate: average must be None")
    batch = int(o.get("batch_size", 16))
    if batch < 1 or batch & (batch - 1) or batch > 1 << 24:
        raise ValueError(f"device='fpga-sim' needs batch_size a power of two up to 2**24, got {batch}")
    schedule, decay = o.get("schedule", "constant"), float(o.get("decay", 0.0))
    if schedule == "constant":
        decay_every = 0
    elif schedule == "exponential" and decay == 0.5:
        decay_every = 1
    else:
        raise ValueError("device='fpga-sim' halves its step by shifts: schedule must be 'constant', or "
                         f"'exponential' with decay 0.5; got {schedule!r} with decay {decay}")
    step_size = float(o.get("step_size", 0.1))
    shift = _power_of_two_shift(step_size / batch, "step_size")
    if not 0 <= shift <= 40:
        raise ValueError(f"step_size / batch_size = {step_size / batch:g} is outside the accelerator's steps 2^0 .. 2^-40")
    step_used = batch * 2.0 ** -shift
    l2 = float(o.get("l2", 0.0))
    l2_shift = 0
    if l2 > 0:
        l2_shift = _power_of_two_shift(step_used * l2 / batch, "l2")
        if not 1 <= l2_shift <= 31:
            raise ValueError(f"l2 = {l2:g} gives a ridge shift of {l2_shift}, outside 1 .. 31")
    elif l2 < 0:
        raise ValueError(f"l2 must be >= 0, got {l2}")
    kernel = dict(
        bits=32 if sampling == "fp32" else bits, sampling="double" if sampling == "fp32" else sampling,
        lanes=int(lanes), loss=loss, epochs=int(o.get("epochs", 10)), batch_log2=batch.bit_length() - 1,
        step_shift=shift, decay_every=decay_every, l2_shift=l2_shift, fit_intercept=bool(o.get("fit_intercept", True)),
        copies=int(o.get("copies", 1)), seed=int(o.get("seed", 0)),
        bytes_per_cycle=float(_fpga.platform(platform)["bytes_per_cycle"]))
    l2_used = batch * 2.0 ** -l2_shift / step_used if l2_shift else 0.0
    return kernel, step_used, l2_used


def train(X, y, options: dict, *, platform: str = "harp_v1", lanes: int = 0, halve_every: int = 0,
          max_layout_bytes: int = None) -> dict:
    """Trains a linear model with the accelerator's C simulation (device="fpga-sim").

    Args:
        X, y: training data (float32-convertible); y as the estimators encode it (+-1 for the
            classifiers).
        options: the options of torch_zipml._linear.Trainer (loss, sampling, bits, epochs,
            batch_size, step_size, l2, copies, seed, scale, fit_intercept, ...).
        platform: the performance model's platform ("harp_v1", the paper's Xeon+FPGA, or
            "alveo_u250"): the simulated memory delivers its bytes per clock, and clocks become
            seconds at its clock rate. Both platforms' figures are assumptions (platforms()).
        lanes: 0 for the design's default lanes (1 bit: 128 or 256).
        halve_every: > 0 halves the step every this many epochs (one more shift, as ZipML's FPGA
            decays its step); overrides the schedule.
        max_layout_bytes: with fresh samples (copies=0), all epochs' quantizations are laid out
            for one kernel call if they fit in this many bytes (default 1 GiB), else one call per
            epoch carries the model from call to call (the same bits either way).

    Returns: the keys of Trainer.fit() (w and w0 on the scaled features, coef and intercept on the
    original ones, loss_history before training and after every epoch, bytes_read, epoch_seconds =
    simulated clocks / clock rate, ...), and: cycles, calls (kernel calls), epoch_cycles, step_size_used, l2_used,
    platform, design, kernel_stats.
    """
    kernel_options, step_used, l2_used = hardware_options(options, platform, lanes)
    if halve_every:
        if int(halve_every) < 0:
            raise ValueError(f"halve_every must be >= 0, got {halve_every}")
        kernel_options["decay_every"] = int(halve_every)
    if max_layout_bytes is not None:
        kernel_options["max_layout_bytes"] = int(max_layout_bytes)
    X = np.ascontiguousarray(X, dtype=np.float32)
    y = np.ascontiguousarray(y, dtype=np.float32)
    # The Trainer prepares the data exactly as the software solver does (scaling, training order)
    # and evaluates the objective; with sampling fp32 and no epochs it builds no sample store.
    prep = {k: options[k] for k in ("loss", "seed", "scale", "fit_intercept", "l2") if k in options}
    trainer = _linear.Trainer(X, y, dict(prep, sampling="fp32", epochs=0, record_loss=False))
    scaling = trainer.fit()
    u = np.ascontiguousarray(trainer.scaled, dtype=np.float32)
    labels = np.ascontiguousarray(trainer.labels, dtype=np.float32)
    r = _fpga.train(u, labels, kernel_options)

    models = np.asarray(r["models"])
    cols = u.shape[1]
    start = (np.zeros(cols, dtype=np.float32), r["label_offset"])
    history = [start] + [(models[e, :cols].astype(np.float32), float(models[e, cols])) for e in range(models.shape[0])]
    loss_history = [trainer.objective(w, w0) for w, w0 in history] if options.get("record_loss", True) else []
    w, w0 = history[-1]
    mid = np.asarray(scaling["scale_mid"], dtype=np.float64)
    factor = np.asarray(scaling["scale_factor"], dtype=np.float64)
    coef = w.astype(np.float64) * factor
    intercept = float(w0 - np.sum(coef * mid))
    info = _fpga.platform(platform)
    epoch_cycles = np.asarray(r["epoch_cycles"], dtype=np.int64)
    bits = kernel_options["bits"]
    design = _fpga.design(bits, lanes)
    return {
        "w": w, "w0": float(w0), "coef": coef, "intercept": intercept,
        "scale_mid": scaling["scale_mid"], "scale_factor": scaling["scale_factor"],
        "loss_history": np.asarray(loss_history),
        "epoch_seconds": epoch_cycles / info["clock_hz"],
        "bytes_read": np.full(len(epoch_cycles), r["bytes_per_copy"], dtype=np.int64),
        "refetch_fraction": np.zeros(len(epoch_cycles)),
        "engine": "fpga-sim",
        "isa": f"{'float' if bits == 32 else f'{bits}-bit'} design, {design['lanes']} lanes, {platform}",
        "samples": 0 if bits == 32 else 2 if kernel_options["sampling"] == "double" else 1,
        "store_bytes": r["bytes_per_copy"],
        "chebyshev_error": 0.0,
        "cycles": r["cycles"], "calls": r["calls"], "epoch_cycles": epoch_cycles, "step_size_used": step_used, "l2_used": l2_used,
        "platform": info, "design": design, "kernel_stats": r["stats"],
    }
