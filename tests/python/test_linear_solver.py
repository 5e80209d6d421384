"""The mini-batch step of the linear solvers against slow numpy references, the unbiasedness of the
double-sampled and Chebyshev gradients (ZipML Sections 3, 4, 6), and training behaviour."""

import numpy as np
import pytest

from torch_zipml import _linear
from torch_zipml.linear import reference as ref

LEAST_SQUARES = ("least_squares", "lssvm")


def problem(rows=48, cols=40, classify=False, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((rows, cols)).astype(np.float32)
    w = rng.standard_normal(cols)
    z = X @ w + 0.5 * rng.standard_normal(rows)
    y = np.where(z > 0, 1.0, -1.0) if classify else z
    return X, y.astype(np.float32)


def trainer(X, y, **options):
    return _linear.Trainer(X, y, options)


def store_values(t, copy, sample):
    s = t.store
    return s.levels()[np.arange(s.cols), s.codes(copy, sample)].astype(np.float64)


def reference_gradient(t, loss, sampling, w, w0, r0, r1, copy, step=0, seed=0, model_bits=0, grad_bits=0,
                       degree=0, cheb=None):
    """The step's gradient written from the definitions (Sections 3, 4, 4.6, 6)."""
    U = t.scaled.astype(np.float64)[r0:r1]
    y = t.labels.astype(np.float64)[r0:r1]
    nb = r1 - r0
    cols = U.shape[1]
    wq = np.asarray(w, dtype=np.float32)
    if model_bits:
        lv, s = ref.symmetric_quantize(wq, model_bits, seed, ref.MODEL_STREAM + step, np.arange(cols))
        wq = ref.symmetric_values(lv, model_bits, s)
    wq = wq.astype(np.float64)
    refetch = np.zeros(nb, dtype=bool)
    if sampling == "fp32":
        e = ref.loss_slope(loss, U @ wq + w0, y)
        V = U
    elif sampling in ("naive", "nearest"):
        Q = store_values(t, copy, 0)[r0:r1]
        e = ref.loss_slope(loss, Q @ wq + w0, y)
        V = Q
    elif loss in LEAST_SQUARES:
        e = ref.loss_slope(loss, store_values(t, copy, 0)[r0:r1] @ wq + w0, y)
        V = store_values(t, copy, 1)[r0:r1]
    elif loss == "logistic":
        coef, R = cheb["coef"], cheb["range"]
        factors = np.stack([np.clip(y * (store_values(t, copy, i)[r0:r1] @ wq + w0) / R, -1, 1)
                            for i in range(degree)], axis=1)
        e = ref.chebyshev_estimate(coef, factors, y)
        V = store_values(t, copy, degree)[r0:r1]
    else:  # hinge, squared hinge: refetching from the interval bounds
        s = t.store
        levels = s.levels()
        j = s.intervals(copy)[r0:r1]
        lower = levels[np.arange(cols), j]
        width = levels[np.arange(cols), j + 1] - lower
        base = lower @ wq
        lo = base + width @ np.minimum(wq, 0) + w0
        hi = base + width @ np.maximum(wq, 0) + w0
        m_lo, m_hi = np.where(y > 0, lo, -hi), np.where(y > 0, hi, -lo)
        V = store_values(t, copy, s.samples - 1)[r0:r1].copy()
        z0 = store_values(t, copy, 0)[r0:r1] @ wq + w0
        e = np.where(m_hi < 1, -y if loss == "hinge" else ref.loss_slope(loss, z0, y), 0.0)
        refetch = (m_lo < 1) & (m_hi >= 1)
        e[refetch] = ref.loss_slope(loss, U[refetch] @ wq + w0, y[refetch])
        V[refetch] = U[refetch]
    g = (V.T @ e) / nb
    if grad_bits:
        lv, s = ref.symmetric_quantize(g.astype(np.float32), grad_bits, seed, ref.GRADIENT_STREAM + step,
                                       np.arange(cols))
        g = ref.symmetric_values(lv, grad_bits, s).astype(np.float64)
    return g, e.mean(), refetch


CASES = [
    ("least_squares", "fp32", 8, {}),
    ("least_squares", "nearest", 3, {}),
    ("least_squares", "naive", 2, {}),
    ("least_squares", "double", 1, {}),
    ("least_squares", "double", 4, {"model_bits": 6, "grad_bits": 5}),
    ("lssvm", "double", 8, {"levels": "optimal"}),
    ("logistic", "double", 6, {"degree": 4, "chebyshev_range": 6.0}),
    ("logistic", "naive", 4, {}),
    ("hinge", "double", 4, {}),
    ("squared_hinge", "double", 3, {"model_bits": 8}),
    ("hinge", "nearest", 8, {}),
]


@pytest.mark.parametrize("loss,sampling,bits,extra", CASES)
@pytest.mark.parametrize("threads", [1, 2])
def test_step_gradient_matches_reference(loss, sampling, bits, extra, threads):
    X, y = problem(rows=48, cols=600, classify=loss != "least_squares")  # 10 chunks of 64 features
    options = dict(loss=loss, sampling=sampling, bits=bits, copies=2, seed=17, batch_size=16, threads=threads,
                   engine="float", **extra)
    t = trainer(X, y, **options)
    rng = np.random.default_rng(1)
    w = (0.05 * rng.standard_normal(600)).astype(np.float32)
    copies = t.store.copies if t.store is not None else 1
    for copy, (r0, r1), step in [(0, (0, 16), 0), (copies - 1, (21, 30), 5)]:
        g, g0 = t.gradient(w, 0.2, r0, r1, copy, step)
        want, want0, _ = reference_gradient(
            t, loss, sampling, w, 0.2, r0, r1, copy, step, seed=17, model_bits=extra.get("model_bits", 0),
            grad_bits=extra.get("grad_bits", 0), degree=extra.get("degree", 0), cheb=t.chebyshev)
        scale = np.abs(want).max() + 1e-12
        if extra.get("grad_bits"):  # a rounding decision may flip where the float sums differ
            assert np.mean(np.abs(g - want) > 1e-4 * scale) < 0.01
        else:
            np.testing.assert_allclose(g, want, rtol=1e-4, atol=1e-5 * scale)
        assert g0 == pytest.approx(want0, rel=1e-5, abs=1e-9)


def integer_reference(t, w, w0, r0, r1, copy, step, seed, bits, model_bits, loss="least_squares"):
    """The integer engine's step, in exact int64 arithmetic: 8-bit stochastic residuals."""
    s = t.store
    K = 1 << bits
    nb = r1 - r0
    y = t.labels.astype(np.float64)[r0:r1]
    m, sw = ref.symmetric_quantize(np.asarray(w, np.float32), model_bits, seed, ref.MODEL_STREAM + step,
                                   np.arange(len(w)))
    h = (1 << (model_bits - 1)) - 1
    C1 = s.codes(copy, 0)[r0:r1].astype(np.int64)
    C2 = s.codes(copy, s.samples - 1)[r0:r1].astype(np.int64)
    total = (2 * (C1 @ m) - (K - 1) * m.sum()).astype(np.float64)
    z = total * (np.float64(sw) / ((K - 1.0) * h)) + w0
    e = ref.loss_slope(loss, z, y)
    se = np.float32(np.abs(e).max())
    t8 = ref.quantize_uniform(e.astype(np.float32), se, 255, seed, ref.RESIDUAL_STREAM + step, np.arange(nb)) - 127
    G = C2.T @ t8
    coef = np.float64(se) / (nb * (K - 1.0) * 127)
    return (coef * (2 * G - (K - 1) * t8.sum()).astype(np.float64)).astype(np.float32), e.mean()


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
@pytest.mark.parametrize("sampling", ["double", "naive"])
def test_integer_engine_is_exact(bits, sampling):
    X, y = problem(rows=40, cols=300)
    t = trainer(X, y, sampling=sampling, bits=bits, model_bits=8, copies=2, seed=3, batch_size=13, threads=2,
                engine="integer")
    assert t.engine == "integer"
    w = (0.1 * np.random.default_rng(2).standard_normal(300)).astype(np.float32)
    for isa in _linear.available_isas():
        _linear.set_isa(isa)
        for copy, (r0, r1), step in [(0, (0, 13), 0), (1, (26, 39), 9), (1, (39, 40), 2)]:
            g, g0 = t.gradient(w, -0.3, r0, r1, copy, step)
            want, want0 = integer_reference(t, w, -0.3, r0, r1, copy, step, 3, bits, 8)
            np.testing.assert_array_equal(g.astype(np.float32), want, err_msg=isa)
            assert g0 == pytest.approx(want0, rel=1e-12)
    _linear.set_isa("")


def gradient_draws(t, w, w0, draws):
    return np.stack([t.gradient(w, w0, 0, 1, c, 0)[0] for c in range(draws)])


def z_scores(draws, expected):
    mean = draws.mean(0)
    se = draws.std(0, ddof=1) / np.sqrt(len(draws)) + 1e-15
    return (mean - expected) / se


def test_double_sampled_gradient_is_unbiased_and_naive_is_not():
    """E[Q2 (Q1.w + w0 - y)] = a (a.w + w0 - y) for independent Q1, Q2 (Section 4.1); the naive
    estimator converges to a (a.w + w0 - y) + D w instead (Section 3). A z-test over 4000 draws:
    |z| < 5 per coordinate for the unbiased estimator, far above for the biased one."""
    rng = np.random.default_rng(5)
    cols, draws = 16, 4000
    a = rng.uniform(-1, 1, size=(1, cols)).astype(np.float32)
    y = np.array([0.3], dtype=np.float32)
    w = rng.uniform(-1.5, 1.5, size=cols).astype(np.float32)
    exact = a[0].astype(np.float64) * (a[0] @ w.astype(np.float64) + 0.1 - 0.3)
    double = trainer(a, y, sampling="double", bits=2, copies=draws, scale=False, batch_size=1, seed=1)
    assert np.abs(z_scores(gradient_draws(double, w, 0.1, draws), exact)).max() < 5
    naive = trainer(a, y, sampling="naive", bits=2, copies=draws, scale=False, batch_size=1, seed=1)
    naive_draws = gradient_draws(naive, w, 0.1, draws)
    assert np.abs(z_scores(naive_draws, exact)).max() > 10
    levels = naive.store.levels()
    j = naive.store.intervals(0)[0]
    lo, hi = levels[np.arange(cols), j], levels[np.arange(cols), j + 1]
    biased = exact + (hi - a[0]) * (a[0] - lo) * w  # + D_a w
    assert np.abs(z_scores(naive_draws, biased)).max() < 5


def test_chebyshev_gradient_is_unbiased_for_the_polynomial():
    """With degree + 1 independent samples, E[y P(y Q1.w, ..., y Qd.w) Q0] = y P(y a.w) a exactly
    (Section 6.2), and |P - l'| is within the interpolation error; the plug-in estimator with one
    sample, l'(y Q.w), is biased by the curvature of l'."""
    rng = np.random.default_rng(6)
    cols, draws, degree, R = 12, 4000, 3, 4.0
    a = rng.uniform(-1, 1, size=(1, cols)).astype(np.float32)
    y = np.array([1.0], dtype=np.float32)
    w = (rng.uniform(-1, 1, size=cols) * 0.25).astype(np.float32)  # |Q.w| <= |w|_1 < R: no clamping
    assert np.abs(w).sum() < R
    t = trainer(a, y, loss="logistic", sampling="double", bits=2, degree=degree, chebyshev_range=R, copies=draws,
                scale=False, batch_size=1, seed=2)
    coef, err = _linear.chebyshev_logistic(degree, R)
    m = float(a[0] @ w.astype(np.float64))
    poly = sum(c * (m / R) ** i for i, c in enumerate(coef))
    expected = a[0] * poly
    draws_g = gradient_draws(t, w, 0.0, draws)
    assert np.abs(z_scores(draws_g, expected)).max() < 5
    assert abs(poly - ref.loss_slope("logistic", m, 1.0)) <= err + 1e-12

    w2 = (w * 8).astype(np.float32)  # margins where l' bends: plug-in rounding noise biases it
    m2 = float(a[0] @ w2.astype(np.float64))
    naive = trainer(a, y, loss="logistic", sampling="naive", bits=2, copies=draws, scale=False, batch_size=1,
                    seed=2)
    naive_draws = gradient_draws(naive, w2, 0.0, draws)
    assert np.abs(z_scores(naive_draws, a[0] * ref.loss_slope("logistic", m2, 1.0))).max() > 6


def test_chebyshev_interpolation_error_shrinks_with_degree():
    errors = [_linear.chebyshev_logistic(d, 6.0)[1] for d in (3, 7, 11, 15)]
    assert all(b < a for a, b in zip(errors, errors[1:]))
    assert errors[-1] < 0.01


def fit(X, y, **options):
    return trainer(X, y, **options).fit()


def synthetic(rows=2000, cols=20, seed=0):
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((rows, cols)).astype(np.float32)
    x = rng.standard_normal(cols)
    b = (A @ x + rng.standard_normal(rows)).astype(np.float32)
    return A, b


def test_double_sampling_reaches_fp32_loss_and_naive_plateaus_at_the_biased_solution():
    A, b = synthetic()
    common = dict(epochs=24, step_size=0.1, batch_size=8, schedule="inverse", decay=0.5, seed=4, copies=8)
    fp32 = fit(A, b, sampling="fp32", **common)["loss_history"][-1]
    double = fit(A, b, sampling="double", bits=3, **common)["loss_history"][-1]
    assert double < fp32 * 1.01
    naive_t = trainer(A, b, sampling="naive", bits=3, **common)
    naive = naive_t.fit()["loss_history"][-1]
    w, w0 = ref.naive_bias_solution(naive_t.scaled, naive_t.labels, naive_t.store.levels())
    predicted = ref.least_squares_objective(naive_t.scaled, naive_t.labels, w, w0)
    assert naive > fp32 * 1.2
    assert naive == pytest.approx(predicted, rel=0.05)


def test_end_to_end_low_precision_reaches_fp32_loss():
    A, b = synthetic(seed=1)
    common = dict(epochs=24, step_size=0.1, batch_size=8, schedule="inverse", decay=0.5, seed=5, copies=8)
    fp32 = fit(A, b, sampling="fp32", **common)["loss_history"][-1]
    for engine in ("float", "integer"):
        e2e = fit(A, b, sampling="double", bits=4, model_bits=8, grad_bits=8, engine=engine, **common)
        assert e2e["engine"] == engine
        assert e2e["loss_history"][-1] < fp32 * 1.01


@pytest.mark.parametrize("options", [
    dict(sampling="fp32"),
    dict(sampling="double", bits=4, model_bits=8, engine="integer"),
    dict(sampling="double", bits=3, grad_bits=6),
    dict(loss="hinge", sampling="double", bits=8, model_bits=8),
    dict(loss="hinge", sampling="double", bits=2),
    dict(loss="logistic", sampling="double", bits=4),
])
@pytest.mark.parametrize("batch_size", [8, 2])
def test_results_do_not_depend_on_threads_or_instruction_set(options, batch_size):
    # 67 rows: a short last batch; batches of 2 leave a thread of 3 without rows in the forward pass.
    X, y = problem(rows=67, cols=700, classify="loss" in options)
    runs = []
    for isa in _linear.available_isas():
        _linear.set_isa(isa)
        for threads in (1, 2, 3):
            r = fit(X, y, epochs=2, batch_size=batch_size, copies=2, seed=9, threads=threads, step_size=0.05,
                    **options)
            runs.append((isa, threads, r))
    _linear.set_isa("")
    for isa, threads, r in runs[1:]:
        np.testing.assert_array_equal(r["w"], runs[0][2]["w"], err_msg=f"{isa} threads={threads}")
        np.testing.assert_array_equal(r["loss_history"], runs[0][2]["loss_history"])


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("engine", [dict(engine="float"), dict(engine="integer", model_bits=8)])
def test_fresh_samples_equal_one_stored_copy_per_epoch(threads, engine):
    # The integer engine redraws a store cut into one panel per thread.
    X, y = problem(rows=60, cols=300)
    common = dict(sampling="double", bits=2, epochs=3, batch_size=8, seed=4, threads=threads, **engine)
    fresh_trainer = trainer(X, y, copies=0, **common)
    fresh = fresh_trainer.fit()
    stored = fit(X, y, copies=3, **common)
    np.testing.assert_array_equal(fresh["w"], stored["w"])
    np.testing.assert_array_equal(fresh["loss_history"], stored["loss_history"])
    again = fresh_trainer.fit()  # the store is back at the first realisation
    np.testing.assert_array_equal(again["w"], fresh["w"])
    assert fresh_trainer.store.copies == 1
    one = fit(X, y, copies=1, **common)
    assert not np.array_equal(one["w"], stored["w"])


@pytest.mark.parametrize("engine", ["float", "integer"])
def test_per_sample_sgd(engine):
    A, b = synthetic(rows=400, cols=8, seed=2)
    common = dict(epochs=10, step_size=0.05, batch_size=1, schedule="inverse", decay=0.5, seed=1, average=5)
    fp32 = fit(A, b, sampling="fp32", **common)["loss_history"][-1]
    r = fit(A, b, sampling="double", bits=8, model_bits=8, engine=engine, copies=0, **common)
    assert r["engine"] == engine
    assert r["loss_history"][-1] < 1.02 * fp32


def test_averaging_returns_the_mean_of_the_iterates():
    X, y = problem(rows=40, cols=30)
    common = dict(sampling="double", bits=4, batch_size=40, copies=2, seed=3, step_size=0.1)  # one step per epoch
    w1 = fit(X, y, epochs=1, **common)
    w2 = fit(X, y, epochs=2, **common)
    avg = fit(X, y, epochs=2, average=0, **common)
    np.testing.assert_allclose(avg["w"], (w1["w"] + w2["w"]) / 2, rtol=1e-6, atol=1e-7)
    assert avg["w0"] == pytest.approx((w1["w0"] + w2["w0"]) / 2)
    t = trainer(X, y, epochs=2, average=0, **common)
    assert avg["loss_history"][-1] == pytest.approx(t.objective(avg["w"], avg["w0"]), rel=1e-6)
    last = fit(X, y, epochs=2, average=1, **common)  # averaging one iterate is the iterate
    np.testing.assert_array_equal(last["w"], w2["w"])
    late = fit(X, y, epochs=2, average=1.5, **common)  # no step after 1.5 epochs (one step per epoch)
    np.testing.assert_array_equal(late["w"], w2["w"])


def test_loss_history_and_bytes():
    A, b = synthetic(rows=300, cols=50)
    r = fit(A, b, sampling="double", bits=4, epochs=3, copies=2)
    assert len(r["loss_history"]) == 4 and len(r["epoch_seconds"]) == 3
    t = trainer(A, b, sampling="double", bits=4, copies=2)
    w = r["w"]
    assert r["loss_history"][-1] == pytest.approx(t.objective(w, r["w0"]), rel=1e-6)
    assert r["loss_history"][-1] == pytest.approx(
        ref.least_squares_objective(t.scaled, t.labels, w.astype(np.float64), r["w0"]), rel=1e-5)
    # 56 features padded to 56: (4 + 2) bits each, plus a 4-byte label per row
    assert list(r["bytes_read"]) == [300 * (56 * 6 // 8 + 4)] * 3
    fp = fit(A, b, sampling="fp32", epochs=1)
    assert fp["bytes_read"][0] == 300 * (50 * 4 + 4)


def test_refetching_reads_few_rows_at_8_bits_and_matches_fp32_accuracy():
    X, y = problem(rows=600, cols=30, classify=True, seed=3)
    common = dict(loss="hinge", epochs=10, step_size=0.05, batch_size=8, l2=1e-3, seed=1)
    fp32 = fit(X, y, sampling="fp32", **common)
    r = fit(X, y, sampling="double", bits=8, copies=2, **common)
    assert 0 < r["refetch_fraction"][-1] < 0.2
    assert r["bytes_read"][-1] > r["store_bytes"] + 600 * 4  # refetched rows are counted

    def accuracy(res):
        return np.mean(np.sign(X @ res["coef"] + res["intercept"]) == y)

    assert accuracy(r) >= accuracy(fp32) - 0.01


def test_mean_label_starts_the_intercept_and_coef_maps_back():
    rng = np.random.default_rng(0)
    X = (rng.uniform(5, 9, size=(500, 3))).astype(np.float32)
    X[:, 2] = 4.0  # a constant feature: scaled to 0, coefficient 0
    y = (3 * X[:, 0] - 2 * X[:, 1] + 100).astype(np.float32)
    r = fit(X, y, sampling="fp32", epochs=60, step_size=0.2, batch_size=4, schedule="inverse", decay=0.2)
    assert r["coef"][2] == 0
    np.testing.assert_allclose(r["coef"][:2], [3, -2], atol=0.05)
    assert r["intercept"] == pytest.approx(100, abs=0.5)


@pytest.mark.parametrize("options,message", [
    (dict(bits=9), "bits must be one of 1"),
    (dict(bits=0), "bits must be one of 1"),
    (dict(model_bits=1), "model_bits must be 0 or None"),
    (dict(grad_bits=17), "grad_bits must be 0 or None"),
    (dict(sampling="stochastic"), "sampling must be one of fp32"),
    (dict(loss="huber"), "loss must be one of"),
    (dict(batch_size=0), "batch_size must be >= 1"),
    (dict(step_size=0.0), "step_size must be positive"),
    (dict(step_size=float("nan")), "step_size must be positive"),
    (dict(schedule="cosine"), "schedule must be one of"),
    (dict(schedule="exponential", decay=1.5), "decay must be in"),
    (dict(l2=-1.0), "l2 must be >= 0"),
    (dict(copies=-1), "copies must be >= 1, or 0 for fresh samples"),
    (dict(engine="gpu"), "engine must be one of"),
    (dict(engine="integer", bits=3, model_bits=8), "engine='integer' needs"),
    (dict(engine="integer", bits=4), "engine='integer' needs"),
    (dict(loss="logistic", degree=0), "degree must be from 1 to 30"),
    (dict(levels="log"), "levels must be 'uniform' or 'optimal'"),
    (dict(epochs=-1), "epochs must be >= 0"),
    (dict(threads=-2), "threads must be >= 0"),
    (dict(average=-2), "average must be None"),
    (dict(flavour=1), "unknown option 'flavour'"),
])
def test_bad_options_name_the_argument(options, message):
    X, y = problem(rows=10, cols=4, classify="loss" in options and options["loss"] != "least_squares")
    with pytest.raises(ValueError, match=message):
        trainer(X, y, **options)


def test_seed_range():
    X, y = problem(rows=10, cols=4)
    trainer(X, y, seed=2**64 - 1)
    for seed in (-1, 2**64):
        with pytest.raises(ValueError, match=r"seed must be an integer in \[0, 2\*\*64\)"):
            trainer(X, y, seed=seed)


def test_bad_data_names_the_argument():
    X, y = problem(rows=10, cols=4)
    bad = X.copy()
    bad[3, 2] = np.nan
    with pytest.raises(ValueError, match=r"X contains NaN or Inf \(at row 3, column 2\)"):
        trainer(bad, y)
    yb = y.copy()
    yb[5] = np.inf
    with pytest.raises(ValueError, match=r"y contains NaN or Inf \(at index 5\)"):
        trainer(X, yb)
    with pytest.raises(ValueError, match="y has 9 labels but X has 10 rows"):
        trainer(X, y[:9])
    with pytest.raises(ValueError, match="X is empty"):
        trainer(X[:0], y[:0])
    with pytest.raises(ValueError, match="X must be a 2-D array"):
        trainer(X[0], y[:1])
    with pytest.raises(ValueError, match="y must hold the labels -1 and \\+1 for loss 'hinge', found 0.5"):
        trainer(X, np.full(10, 0.5, np.float32), loss="hinge")
    with pytest.raises(ValueError, match=r"X must lie in \[-1, 1\] when scaling is off"):
        trainer(X * 5, y, scale=False)
