"""The scikit-learn-style estimators of torch_zipml.linear."""

import numpy as np
import pytest
import torch

from torch_zipml.linear import LinearRegression, LogisticRegression, LSSVM, SVM, synthetic_regression


def classification(rows=400, cols=10, seed=0, labels=(-1, 1)):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((rows, cols)).astype(np.float32)
    w = rng.standard_normal(cols)
    y = np.where(X @ w + 0.3 * rng.standard_normal(rows) > 0, labels[1], labels[0])
    return X, y


def test_linear_regression_fits_predicts_and_scores():
    A, b, _ = synthetic_regression(1000, 10, seed=1)
    model = LinearRegression(bits=4, epochs=15, step_size=0.1, schedule="inverse", decay=0.5, seed=2)
    assert model.fit(A, b) is model
    assert model.coef_.shape == (10,) and isinstance(model.intercept_, float)
    assert len(model.loss_history_) == 16 and model.loss_history_[-1] < model.loss_history_[0]
    assert len(model.bytes_read_) == 15 and model.bytes_read_[0] == 1000 * (16 * 6 // 8 + 4)
    assert model.engine_ == "float" and model.n_features_in_ == 10
    pred = model.predict(A)
    assert pred.shape == (1000,)
    np.testing.assert_allclose(pred, A.astype(np.float64) @ model.coef_ + model.intercept_)
    exact = np.linalg.lstsq(np.hstack([A, np.ones((1000, 1))]), b, rcond=None)[0]
    best = 1 - ((A @ exact[:10] + exact[10] - b) ** 2).sum() / ((b - b.mean()) ** 2).sum()
    assert model.score(A, b) > best - 0.01


def test_torch_tensors_are_accepted():
    A, b, _ = synthetic_regression(200, 5, seed=3)
    m1 = LinearRegression(epochs=3, seed=1).fit(A, b)
    m2 = LinearRegression(epochs=3, seed=1).fit(torch.from_numpy(A), torch.from_numpy(b))
    np.testing.assert_array_equal(m1.coef_, m2.coef_)
    np.testing.assert_array_equal(m1.predict(torch.from_numpy(A)), m1.predict(A))


def test_seed_makes_training_reproducible():
    A, b, _ = synthetic_regression(300, 8, seed=4)
    a = LinearRegression(bits=2, epochs=3, seed=7).fit(A, b).coef_
    assert np.array_equal(a, LinearRegression(bits=2, epochs=3, seed=7).fit(A, b).coef_)
    assert not np.array_equal(a, LinearRegression(bits=2, epochs=3, seed=8).fit(A, b).coef_)


@pytest.mark.parametrize("labels", [(-1, 1), (0, 1)])
@pytest.mark.parametrize("cls,kwargs", [
    (LSSVM, {}),
    (LogisticRegression, dict(degree=5)),
    (SVM, dict(loss="hinge")),
    (SVM, dict(loss="squared_hinge")),
])
def test_classifiers(labels, cls, kwargs):
    X, y = classification(labels=labels)
    common = dict(epochs=8, step_size=0.05, l2=1e-3, seed=1, **kwargs)
    model = cls(bits=8, **common).fit(X, y)
    np.testing.assert_array_equal(model.classes_, np.array(labels, dtype=np.float32))
    pred = model.predict(X)
    assert set(np.unique(pred)) <= set(labels)
    assert model.score(X, y) > cls(sampling="fp32", **common).fit(X, y).score(X, y) - 0.01 > 0.85
    if cls is SVM:
        assert len(model.refetch_fraction_) == 8


def test_logistic_predict_proba():
    X, y = classification()
    model = LogisticRegression(epochs=5, seed=0).fit(X, y)
    p = model.predict_proba(X)
    assert p.shape == (400, 2)
    np.testing.assert_allclose(p.sum(1), 1.0)
    np.testing.assert_array_equal(p[:, 1] > 0.5, model.predict(X) == 1)


def test_params_protocol_and_sklearn_clone():
    model = LogisticRegression(bits=4, degree=9, n_jobs=2)
    params = model.get_params()
    assert params["bits"] == 4 and params["degree"] == 9 and params["n_jobs"] == 2
    assert "sampling" in params and "chebyshev_range" in params
    model.set_params(bits=2, sampling="naive")
    assert model.bits == 2 and model.sampling == "naive"
    with pytest.raises(ValueError, match="invalid parameter 'colour'"):
        model.set_params(colour=1)
    assert "bits=2" in repr(model) and "degree=9" in repr(model)
    sklearn_base = pytest.importorskip("sklearn.base")
    clone = sklearn_base.clone(model)
    assert clone.get_params() == model.get_params() and clone is not model


def test_estimator_errors_name_the_argument():
    X, y = classification()
    with pytest.raises(ValueError, match=r"y must hold the labels -1 and \+1 \(or 0 and 1\)"):
        SVM().fit(X, y + 1)
    with pytest.raises(ValueError, match="y must contain two classes"):
        LogisticRegression().fit(X, np.ones(len(y)))
    with pytest.raises(ValueError, match="loss must be 'hinge' or 'squared_hinge'"):
        SVM(loss="log").fit(X, y)
    with pytest.raises(RuntimeError, match="not fitted yet"):
        LinearRegression().predict(X)
    model = LinearRegression(epochs=1).fit(X, y)
    with pytest.raises(ValueError, match="X has 3 features but LinearRegression was fitted on 10"):
        model.predict(X[:, :3])
    with pytest.raises(ValueError, match="n_jobs must be None, -1 or a positive integer"):
        LinearRegression(n_jobs=0).fit(X, y)
    with pytest.raises(ValueError, match="bits must be an integer"):
        LinearRegression(bits=4.5).fit(X, y)
    with pytest.raises(ValueError, match="model_bits must be None or an integer"):
        LinearRegression(model_bits="8").fit(X, y)
    with pytest.raises(ValueError, match="bits must be one of 1, 2, 3, 4, 5, 6, 7, 8, got 16"):
        LinearRegression(bits=16).fit(X, y)
    with pytest.raises(ValueError, match="X contains NaN or Inf"):
        LinearRegression().fit(np.full((3, 2), np.nan), np.zeros(3))
    with pytest.raises(ValueError, match="y has 5 labels but X has 400 rows"):
        LinearRegression().fit(X, y[:5])
    with pytest.raises(ValueError, match="X is empty"):
        LinearRegression().fit(np.zeros((0, 3)), np.zeros(0))
    with pytest.raises(ValueError, match="X must be a 2-D array"):
        LinearRegression().fit(np.zeros(3), np.zeros(3))
    with pytest.raises(ValueError, match="X must be numeric"):
        LinearRegression().fit(np.array([["a", "b"]]), np.zeros(1))
