"""Low-precision linear models (ZipML, Zhang et al., ICML 2017, arXiv 1611.05402, Sections 3-6).

Estimators in the scikit-learn style (fit / predict / score) whose training reads the data from a
quantized sample store at 1 to 8 bits per value:

    from torch_zipml.linear import LinearRegression
    model = LinearRegression(bits=4, sampling="double", epochs=20).fit(X, y)
    model.loss_history_, model.bytes_read_

The solvers are the C++ library in linear/ (torch_zipml._linear); `python -m torch_zipml.linear`
(the `zipml-linear` command) trains, evaluates and reports from the shell.
"""

import torch  # noqa: F401  (loads libtorch before the extension)

from .. import _linear
from ._estimators import LinearRegression, LogisticRegression, LSSVM, SVM, model_from_dict, model_to_dict
from .data import fashion_mnist_pair, load, load_csv, load_idx, load_libsvm, synthetic_regression

SampleStore = _linear.SampleStore
Trainer = _linear.Trainer


def isa(name: str = "") -> str:
    """The kernel variant in use ("scalar", "avx2", "avx512"); pass a name (or "auto") to select
    one. All variants compute identical bits."""
    if name:
        _linear.set_isa("" if name == "auto" else name)
    return _linear.isa()


def available_isas():
    """The kernel variants this processor runs."""
    return list(_linear.available_isas())


__all__ = [
    "LinearRegression",
    "LSSVM",
    "LogisticRegression",
    "SVM",
    "SampleStore",
    "Trainer",
    "available_isas",
    "fashion_mnist_pair",
    "isa",
    "load",
    "load_csv",
    "load_idx",
    "load_libsvm",
    "model_from_dict",
    "model_to_dict",
    "synthetic_regression",
]
