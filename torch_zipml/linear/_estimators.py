"""Estimators in the scikit-learn style over the C++ solvers of linear/ (torch_zipml._linear).

Method: ZipML, Zhang et al., ICML 2017 (arXiv 1611.05402). Section numbers refer to it.
"""

from __future__ import annotations

import inspect
from typing import Optional

import numpy as np

from .. import _linear

__all__ = ["LinearRegression", "LSSVM", "LogisticRegression", "SVM", "model_from_dict", "model_to_dict"]


def as_float32_matrix(X, name: str = "X") -> np.ndarray:
    """X (numpy array, torch tensor or nested sequence) as a C-contiguous float32 matrix."""
    if hasattr(X, "detach"):  # torch.Tensor
        X = X.detach().cpu().numpy()
    X = np.asarray(X)
    if X.dtype == object or not (np.issubdtype(X.dtype, np.number) or X.dtype == bool):
        raise ValueError(f"{name} must be numeric, got dtype {X.dtype}")
    if X.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (samples x features), got shape {X.shape}")
    if X.shape[0] == 0:
        raise ValueError(f"{name} is empty: it needs at least one sample (row)")
    if X.shape[1] == 0:
        raise ValueError(f"{name} has no features (columns)")
    X = np.ascontiguousarray(X, dtype=np.float32)
    if not np.isfinite(X).all():
        raise ValueError(f"{name} contains NaN or Inf; features must be finite")
    return X


def as_float32_vector(y, rows: int, name: str = "y") -> np.ndarray:
    if hasattr(y, "detach"):
        y = y.detach().cpu().numpy()
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of labels, got shape {y.shape}")
    if y.shape[0] != rows:
        raise ValueError(f"{name} has {y.shape[0]} labels but X has {rows} rows")
    if not np.issubdtype(y.dtype, np.number) and y.dtype != bool:
        raise ValueError(f"{name} must be numeric, got dtype {y.dtype}")
    y = np.ascontiguousarray(y, dtype=np.float32)
    if not np.isfinite(y).all():
        raise ValueError(f"{name} contains NaN or Inf; labels must be finite")
    return y


class _ZipMLLinear:
    """A linear model trained by low-precision SGD (ZipML).

    Args:
        bits: bits per stored data value, 1 to 8 (the sample store of Section 4).
        sampling: "fp32" (full-precision data), "nearest" (deterministic rounding), "naive" (one
            stochastic sample used for both factors of the gradient: biased, Section 3) or "double"
            (the unbiased estimators: double sampling for least squares, Section 4; the Chebyshev
            estimator for logistic regression and refetching for SVMs, Section 6).
        levels: "uniform" (the 2**bits-point grid on [-1, 1]) or "optimal" (variance-optimal levels
            of each feature, Section 5).
        model_bits, grad_bits: None for full precision, else 2 to 16: the model as read for the dot
            products and the gradient sent to the update are quantized stochastically (Section 4.6).
        epochs, step_size, batch_size: SGD; schedule "constant", "inverse" (step / (1 + decay t)),
            "inverse_sqrt" or "exponential" (step * decay**t), t the training time in epochs (it
            grows within an epoch, batch by batch).
        l2: L2 penalty, objective = mean loss + l2 / 2 |w|^2 (intercept not penalised).
        copies: independent quantized copies of the data stored, one per epoch in turn; 1 keeps
            one fixed realisation; 0 draws fresh samples for every epoch (one copy, redrawn between
            epochs outside the timed training: what `epochs` stored copies would hold).
        seed: every random choice (shuffling, quantization) follows from it.
        n_jobs: threads (None: 1, -1: all).
        engine: "auto", "float" or "integer" (the integer SIMD path: uniform 1, 2, 4 or 8-bit data
            and model_bits <= 8; it also rounds each mini-batch's residuals to 8 bits, unbiasedly).
        scale: scale each feature to [-1, 1] on the training data (False: X is already in [-1, 1]).
        average: None, or the training time (in epochs, fractions allowed) from which the SGD
            iterates are averaged (Polyak-Ruppert); the fitted model and the loss history from then
            on are the average's.
        device: "cpu" (the solvers of linear/), or "fpga-sim": the FPGA accelerator of fpga/ in C
            simulation (Section 10; torch_zipml.fpga.train: power-of-two steps, uniform levels,
            full-precision model; epoch_seconds_ are its clocks on the assumed HARP v1 platform).

    Fitted attributes: coef_, intercept_ (on the original features), loss_history_ (the objective
    on the full-precision training data before training and after every epoch), bytes_read_ (bytes
    of samples, labels and refetched rows read in every epoch), epoch_seconds_, refetch_fraction_,
    engine_, isa_, n_features_in_.
    """

    _loss = "least_squares"
    _classifier = False

    def __init__(self, *, bits: int = 8, sampling: str = "double", levels: str = "uniform",
                 model_bits: Optional[int] = None, grad_bits: Optional[int] = None, epochs: int = 10,
                 step_size: float = 0.1, batch_size: int = 16, seed: int = 0, l2: float = 0.0,
                 schedule: str = "constant", decay: float = 0.0, copies: int = 4,
                 n_jobs: Optional[int] = None, engine: str = "auto", scale: bool = True,
                 fit_intercept: bool = True, candidates: int = 1024, average: Optional[float] = None,
                 device: str = "cpu"):
        self.bits = bits
        self.sampling = sampling
        self.levels = levels
        self.model_bits = model_bits
        self.grad_bits = grad_bits
        self.epochs = epochs
        self.step_size = step_size
        self.batch_size = batch_size
        self.seed = seed
        self.l2 = l2
        self.schedule = schedule
        self.decay = decay
        self.copies = copies
        self.n_jobs = n_jobs
        self.engine = engine
        self.scale = scale
        self.fit_intercept = fit_intercept
        self.candidates = candidates
        self.average = average
        self.device = device

    # -- scikit-learn protocol ------------------------------------------------------------------

    @classmethod
    def _param_names(cls):
        names = []
        for klass in cls.__mro__:
            if "__init__" in klass.__dict__:
                for p in inspect.signature(klass.__init__).parameters.values():
                    if p.kind == p.KEYWORD_ONLY and p.name not in names:
                        names.append(p.name)
        return names

    def get_params(self, deep: bool = True) -> dict:
        return {name: getattr(self, name) for name in self._param_names()}

    def set_params(self, **params):
        valid = self._param_names()
        for name, value in params.items():
            if name not in valid:
                raise ValueError(f"invalid parameter {name!r} for {type(self).__name__}; valid: {', '.join(valid)}")
            setattr(self, name, value)
        return self

    def __repr__(self):
        defaults = {p.name: p.default for klass in type(self).__mro__ if "__init__" in klass.__dict__
                    for p in inspect.signature(klass.__init__).parameters.values() if p.kind == p.KEYWORD_ONLY}
        changed = [f"{k}={v!r}" for k, v in self.get_params().items() if defaults.get(k, object()) != v]
        return f"{type(self).__name__}({', '.join(changed)})"

    # -- training -------------------------------------------------------------------------------

    def _options(self) -> dict:
        n_jobs = self.n_jobs
        if n_jobs is None:
            threads = 1
        elif n_jobs == -1:
            threads = 0
        elif isinstance(n_jobs, (int, np.integer)) and n_jobs >= 1:
            threads = int(n_jobs)
        else:
            raise ValueError(f"n_jobs must be None, -1 or a positive integer, got {n_jobs!r}")
        for name in ("model_bits", "grad_bits"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, (int, np.integer)) or isinstance(v, bool)):
                raise ValueError(f"{name} must be None or an integer from 2 to 16, got {v!r}")
        if not isinstance(self.bits, (int, np.integer)) or isinstance(self.bits, bool):
            raise ValueError(f"bits must be an integer from 1 to 8, got {self.bits!r}")
        return dict(
            loss=self._loss, sampling=self.sampling, bits=int(self.bits), levels=self.levels,
            candidates=int(self.candidates), model_bits=self.model_bits or 0, grad_bits=self.grad_bits or 0,
            epochs=int(self.epochs), batch_size=int(self.batch_size), step_size=float(self.step_size),
            schedule=self.schedule, decay=float(self.decay), l2=float(self.l2), copies=int(self.copies),
            seed=int(self.seed), threads=threads, engine=self.engine, scale=bool(self.scale),
            fit_intercept=bool(self.fit_intercept), average=self.average, **self._extra_options())

    def _extra_options(self) -> dict:
        return {}

    def _encode_labels(self, y: np.ndarray) -> np.ndarray:
        return y

    def fit(self, X, y):
        """Trains on X (samples x features: numpy array or torch tensor) and labels y."""
        X = as_float32_matrix(X)
        y = as_float32_vector(y, X.shape[0])
        if self.device == "cpu":
            r = _linear.Trainer(X, self._encode_labels(y), self._options()).fit()
        elif self.device == "fpga-sim":
            from .. import fpga
            r = fpga.train(X, self._encode_labels(y), self._options())
        else:
            raise ValueError(f"device must be 'cpu' or 'fpga-sim', got {self.device!r}")
        self.coef_ = np.asarray(r["coef"], dtype=np.float64)
        self.intercept_ = float(r["intercept"])
        self.loss_history_ = np.asarray(r["loss_history"])
        self.bytes_read_ = np.asarray(r["bytes_read"])
        self.epoch_seconds_ = np.asarray(r["epoch_seconds"])
        self.refetch_fraction_ = np.asarray(r["refetch_fraction"])
        self.engine_ = r["engine"]
        self.isa_ = r["isa"]
        self.n_features_in_ = X.shape[1]
        self._trainer_result = r
        return self

    def _check_fitted(self, X):
        if not hasattr(self, "coef_"):
            raise RuntimeError(f"this {type(self).__name__} is not fitted yet; call fit first")
        X = as_float32_matrix(X)
        if X.shape[1] != self.n_features_in_:
            raise ValueError(f"X has {X.shape[1]} features but {type(self).__name__} was fitted on "
                             f"{self.n_features_in_}")
        return X

    def decision_function(self, X) -> np.ndarray:
        """X @ coef_ + intercept_ (float64)."""
        X = self._check_fitted(X)
        return X.astype(np.float64) @ self.coef_ + self.intercept_


class LinearRegression(_ZipMLLinear):
    """Least-squares linear regression by low-precision SGD; double sampling makes the quantized
    gradient unbiased (Section 4). score is the coefficient of determination R^2."""

    _loss = "least_squares"

    def predict(self, X) -> np.ndarray:
        return self.decision_function(X)

    def score(self, X, y) -> float:
        pred = self.predict(X)
        y = as_float32_vector(y, pred.shape[0]).astype(np.float64)
        ss_res = float(((y - pred) ** 2).sum())
        ss_tot = float(((y - y.mean()) ** 2).sum())
        return 1.0 - ss_res / ss_tot if ss_tot > 0 else (1.0 if ss_res == 0 else 0.0)


class _Classifier(_ZipMLLinear):
    """Binary classifier on labels -1/+1 or 0/1 (classes_ keeps which); score is the accuracy."""

    _classifier = True

    def _encode_labels(self, y: np.ndarray) -> np.ndarray:
        classes = np.unique(y)
        if not (set(classes.tolist()) <= {-1.0, 1.0} or set(classes.tolist()) <= {0.0, 1.0}):
            raise ValueError(f"y must hold the labels -1 and +1 (or 0 and 1) for {type(self).__name__}, "
                             f"found {classes[:10].tolist()}")
        if classes.size != 2:
            raise ValueError(f"y must contain two classes for {type(self).__name__}, found only {classes.tolist()}")
        self.classes_ = classes
        return np.where(y == classes[1], 1.0, -1.0).astype(np.float32)

    def predict(self, X) -> np.ndarray:
        return np.where(self.decision_function(X) > 0, self.classes_[1], self.classes_[0])

    def score(self, X, y) -> float:
        pred = self.predict(X)
        y = as_float32_vector(y, pred.shape[0])
        return float((pred == y).mean())


class LSSVM(_Classifier):
    """The least-squares SVM: least squares on -1/+1 labels (double sampling, Section 4)."""

    _loss = "lssvm"


class LogisticRegression(_Classifier):
    """Logistic regression. With sampling="double" the gradient factor l'(m) is replaced by its
    Chebyshev interpolant of `degree` on [-chebyshev_range, chebyshev_range], evaluated with degree + 1
    independent quantized samples so the estimate is unbiased for the polynomial (Section 6.2)."""

    _loss = "logistic"

    def __init__(self, *, degree: int = 7, chebyshev_range: float = 6.0, **kwargs):
        super().__init__(**kwargs)
        self.degree = degree
        self.chebyshev_range = chebyshev_range

    def _extra_options(self) -> dict:
        return dict(degree=int(self.degree), chebyshev_range=float(self.chebyshev_range))

    def predict_proba(self, X) -> np.ndarray:
        p = 1.0 / (1.0 + np.exp(-self.decision_function(X)))
        return np.stack([1.0 - p, p], axis=1)


class SVM(_Classifier):
    """Linear SVM, loss "hinge" or "squared_hinge" (the L2-SVM). With sampling="double" the
    refetching heuristic (Section 6.3) reads the full-precision row only for samples whose margin
    the quantized data leave undecided; refetch_fraction_ reports how many per epoch."""

    def __init__(self, *, loss: str = "hinge", **kwargs):
        super().__init__(**kwargs)
        self.loss = loss

    @property
    def _loss(self):
        if self.loss not in ("hinge", "squared_hinge"):
            raise ValueError(f"loss must be 'hinge' or 'squared_hinge', got {self.loss!r}")
        return self.loss


ESTIMATORS = {cls.__name__: cls for cls in (LinearRegression, LSSVM, LogisticRegression, SVM)}


def model_to_dict(model) -> dict:
    """A fitted estimator as plain data (JSON-ready): its class, parameters, model and history."""
    if not hasattr(model, "coef_"):
        raise RuntimeError(f"this {type(model).__name__} is not fitted yet; call fit first")
    data = {
        "estimator": type(model).__name__,
        "params": model.get_params(),
        "coef": model.coef_.tolist(),
        "intercept": model.intercept_,
        "n_features": int(model.n_features_in_),
        "loss_history": model.loss_history_.tolist(),
        "bytes_read": model.bytes_read_.tolist(),
        "epoch_seconds": model.epoch_seconds_.tolist(),
        "refetch_fraction": model.refetch_fraction_.tolist(),
        "engine": model.engine_,
        "isa": model.isa_,
    }
    if hasattr(model, "classes_"):
        data["classes"] = model.classes_.tolist()
    return data


def model_from_dict(data: dict):
    """The estimator model_to_dict described, fitted (predict and score work)."""
    try:
        cls = ESTIMATORS[data["estimator"]]
        model = cls(**data["params"])
        model.coef_ = np.asarray(data["coef"], dtype=np.float64)
        model.intercept_ = float(data["intercept"])
        model.n_features_in_ = int(data["n_features"])
        for name in ("loss_history", "bytes_read", "epoch_seconds", "refetch_fraction"):
            setattr(model, name + "_", np.asarray(data.get(name, [])))
        model.engine_ = data.get("engine")
        model.isa_ = data.get("isa")
        if "classes" in data:
            model.classes_ = np.asarray(data["classes"], dtype=np.float32)
    except (KeyError, TypeError) as e:
        raise ValueError(f"not a torch_zipml.linear model description: {e!r}") from None
    if model.coef_.shape != (model.n_features_in_,):
        raise ValueError("model description: coef does not have n_features values")
    return model
