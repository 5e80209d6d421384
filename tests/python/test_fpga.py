"""The FPGA accelerator's Python backend (torch_zipml.fpga, torch_zipml._fpga): the same data as the
linear solvers' store, the same convergence as the software solver of the same precision, the
clocks the performance model predicts, and clear errors for what the hardware cannot do."""

import numpy as np
import pytest

from torch_zipml import _fpga, _linear, fpga
from torch_zipml.linear import LinearRegression


def regression(rows=2000, cols=16, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.uniform(-1, 1, size=(rows, cols)).astype(np.float32)
    w = rng.normal(size=cols)
    return X, (X @ w + 0.1 * rng.normal(size=rows)).astype(np.float32), np.where(
        X @ w + 0.3 * rng.normal(size=rows) > 0, 1, -1).astype(np.float32)


X, Y_REG, Y_CLS = regression()


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_codes_are_the_trainers_sample_store(bits):
    # The Trainer scales and orders the rows; its double-sampled store holds, bit for bit, the codes
    # the accelerator's host lays out (sample 0 feeds the dot product, sample 1 the gradient).
    trainer = _linear.Trainer(X[:300], Y_REG[:300], dict(sampling="double", bits=bits, copies=3, seed=11, epochs=0))
    codes = _fpga.quantize_codes(np.ascontiguousarray(trainer.scaled), bits, copies=3, seed=11)
    for copy in range(3):
        for sample in range(2):
            np.testing.assert_array_equal(codes[sample][copy], trainer.store.codes(copy, sample))
    naive = _linear.Trainer(X[:300], Y_REG[:300], dict(sampling="naive", bits=bits, copies=2, seed=11, epochs=0))
    codes = _fpga.quantize_codes(np.ascontiguousarray(naive.scaled), bits, copies=2, seed=11, sampling="naive")
    for copy in range(2):
        np.testing.assert_array_equal(codes[0][copy], naive.store.codes(copy, 0))


def final_losses(y, options, seeds=6):
    """Final loss of each seed for both backends, and the SGD noise: the standard deviation of the
    loss over the last 5 epochs, averaged over runs."""
    out = {"fpga": [], "software": [], "noise": []}
    for seed in range(seeds):
        opts = dict(options, seed=seed)
        hf = fpga.train(X, y, opts)["loss_history"]
        hs = _linear.Trainer(X, y, opts).fit()["loss_history"]
        out["fpga"].append(hf[-1])
        out["software"].append(hs[-1])
        out["noise"] += [np.std(hf[-5:]), np.std(hs[-5:])]
    return np.mean(out["fpga"]), np.mean(out["software"]), np.mean(out["noise"])


CASES = [("least_squares", bits, sampling) for bits, sampling in ((2, "double"), (4, "double"), (8, "double"), (8, "fp32"))]
CASES += [("lssvm", bits, sampling) for bits, sampling in ((2, "double"), (4, "double"), (8, "double"), (8, "fp32"))]
CASES += [("squared_hinge", 4, "double"), ("squared_hinge", 8, "double"), ("logistic", 8, "double"),
          ("logistic", 8, "fp32")]


@pytest.mark.parametrize("loss,bits,sampling", CASES)
def test_convergence_matches_the_software_solver(loss, bits, sampling):
    # Same data, precision, step (a power of two) and fresh samples every epoch: the mean final loss
    # over 6 seeds differs by less than 3 times the epoch-to-epoch SGD noise. (Logistic and squared
    # hinge use different unbiasing in software, Chebyshev and refetching; at 4-8 bits they agree.)
    y = Y_REG if loss == "least_squares" else Y_CLS
    options = dict(loss=loss, sampling=sampling, bits=bits, epochs=12, batch_size=16, step_size=0.0625, copies=0)
    hw, sw, noise = final_losses(y, options)
    assert abs(hw - sw) < 3 * noise, (hw, sw, noise)


def test_the_comparison_detects_a_biased_estimator():
    # Power: naive sampling (one sample in both factors, Section 3) on the accelerator is biased at
    # 2 bits; the same comparison against the software's double sampling rejects it.
    options = dict(loss="least_squares", bits=2, epochs=12, batch_size=16, step_size=0.0625, copies=0)
    naive = np.mean([fpga.train(X, Y_REG, dict(options, sampling="naive", seed=s))["loss_history"][-1] for s in range(6)])
    _, sw, noise = final_losses(Y_REG, dict(options, sampling="double"))
    assert naive - sw > 3 * noise, (naive, sw, noise)


def test_result_has_the_trainers_keys_and_the_clocks():
    opts = LinearRegression(bits=4, epochs=3, step_size=0.25, batch_size=16, seed=3)._options()
    r = fpga.train(X, Y_REG, opts, platform="harp_v1")
    sw = _linear.Trainer(X, Y_REG, opts).fit()
    assert set(sw) <= set(r)
    assert r["step_size_used"] == 0.25 and r["engine"] == "fpga-sim"
    assert len(r["loss_history"]) == 4 and r["loss_history"][-1] < r["loss_history"][0]
    assert r["loss_history"][0] == pytest.approx(sw["loss_history"][0])  # the same objective and start
    np.testing.assert_allclose(X.astype(np.float64) @ r["coef"] + r["intercept"],
                               _scaled_prediction(X, r), rtol=1e-5, atol=1e-5)
    # the simulated clocks agree with the performance model within 1%
    model = _fpga.predict(4, X.shape[0], X.shape[1], batch=16, epochs=1, platform="harp_v1")
    assert r["epoch_cycles"][1] == pytest.approx(model["epoch_cycles"], rel=0.01)
    assert r["epoch_seconds"][1] == pytest.approx(model["epoch_seconds"], rel=0.01)
    assert r["bytes_read"][0] == model["bytes_per_epoch"] == X.shape[0] * 64


def _scaled_prediction(X, r):
    u = np.clip((X - r["scale_mid"]) * r["scale_factor"], -1, 1)
    return u.astype(np.float64) @ r["w"].astype(np.float64) + r["w0"]


def test_fresh_samples_in_one_call_or_one_call_per_epoch_agree():
    u = np.clip(X[:500], -1, 1)
    base = dict(bits=2, loss="least_squares", epochs=4, batch_log2=3, step_shift=7, copies=0, seed=5)
    one = _fpga.train(u, Y_REG[:500], base)
    per_epoch = _fpga.train(u, Y_REG[:500], dict(base, max_layout_bytes=1))
    np.testing.assert_array_equal(one["models"], per_epoch["models"])
    assert one["calls"] == 1 and per_epoch["calls"] == 4


@pytest.mark.parametrize("change,match", [
    (dict(loss="hinge"), "loss"),
    (dict(levels="optimal"), "levels"),
    (dict(model_bits=8), "model_bits"),
    (dict(batch_size=12), "batch_size"),
    (dict(bits=3), "bits"),
    (dict(schedule="inverse", decay=1.0), "schedule"),
    (dict(average=2), "average"),
    (dict(step_size=-1.0), "step_size"),
])
def test_what_the_accelerator_cannot_do_is_named(change, match):
    opts = dict(loss="least_squares", bits=4, epochs=1, step_size=0.1, batch_size=16)
    opts.update(change)
    with pytest.raises(ValueError, match=match):
        fpga.train(X[:50], Y_REG[:50], opts)


def test_classifier_labels_are_checked():
    with pytest.raises(ValueError, match="-1 or \\+1"):
        _fpga.train(np.clip(X[:20], -1, 1), np.arange(20, dtype=np.float32), dict(loss="logistic"))


# -- the estimators' device="fpga-sim" and zipml-linear --device --------------------------------

def test_estimators_train_on_the_accelerator():
    from torch_zipml.linear import LogisticRegression, LSSVM, SVM, model_from_dict, model_to_dict

    cpu = LinearRegression(bits=4, epochs=6, step_size=0.125, seed=1).fit(X, Y_REG)
    hw = LinearRegression(bits=4, epochs=6, step_size=0.125, seed=1, device="fpga-sim").fit(X, Y_REG)
    assert hw.engine_ == "fpga-sim" and "4-bit design" in hw.isa_
    assert len(hw.loss_history_) == 7 and len(hw.epoch_seconds_) == 6
    assert hw.score(X, Y_REG) == pytest.approx(cpu.score(X, Y_REG), abs=0.01)
    again = model_from_dict(model_to_dict(hw))
    assert again.device == "fpga-sim"
    np.testing.assert_allclose(again.predict(X), hw.predict(X))
    for model in (LSSVM(bits=8, epochs=4, step_size=0.0625, device="fpga-sim"),
                  LogisticRegression(bits=8, epochs=4, step_size=0.5, device="fpga-sim"),
                  SVM(loss="squared_hinge", bits=8, epochs=4, step_size=0.0625, device="fpga-sim")):
        assert model.fit(X, Y_CLS).score(X, Y_CLS) > 0.9, type(model).__name__
    with pytest.raises(ValueError, match="loss"):
        SVM(device="fpga-sim").fit(X[:50], Y_CLS[:50])  # hinge
    with pytest.raises(ValueError, match="device"):
        LinearRegression(device="gpu").fit(X[:50], Y_REG[:50])


def test_cli_device_flag(tmp_path, capsys):
    from torch_zipml.linear.__main__ import main

    path = tmp_path / "train.csv"
    np.savetxt(path, np.hstack([X[:400], Y_REG[:400, None]]), delimiter=",", fmt="%.6f")
    assert main(["train", str(path), "--bits", "2", "--epochs", "3", "--step-size", "0.125", "--device", "fpga-sim"]) == 0
    text = capsys.readouterr().out
    assert "engine fpga-sim (2-bit design, 128 lanes, harp_v1)" in text
