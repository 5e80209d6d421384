"""Data for the linear solvers: LIBSVM and CSV files (parsed in C++, errors name file and line),
IDX files (MNIST, Fashion-MNIST), and the data sets of the paper's experiments: synthetic
regression with a planted model (Section 8.1: Gaussian features, a sparse true model, Gaussian
label noise), heart_scale and Fashion-MNIST class pairs."""

from __future__ import annotations

import gzip
import os
from typing import Optional, Sequence, Tuple

import numpy as np

from .. import _linear

__all__ = [
    "load_libsvm",
    "load_csv",
    "load_idx",
    "load",
    "synthetic_regression",
    "fashion_mnist_pair",
    "HEART_SCALE",
    "FASHION_MNIST",
]

HEART_SCALE = "/usr/share/doc/liblinear-tools/examples/heart_scale"
FASHION_MNIST = "/usr/share/datasets/fashion-mnist"


def load_libsvm(path: str, n_features: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """(X, y) from a LIBSVM text file ("label index:value ..."); n_features=0 infers it."""
    return _linear.read_libsvm(os.fspath(path), int(n_features))


def load_csv(path: str, label_column: int = -1, delimiter: str = ",") -> Tuple[np.ndarray, np.ndarray]:
    """(X, y) from a CSV file; the label is column `label_column` (negative: from the end); a
    header line is skipped when one of its fields is not a number."""
    return _linear.read_csv(os.fspath(path), int(label_column), delimiter)


def load(path: str, fmt: Optional[str] = None, **kwargs) -> Tuple[np.ndarray, np.ndarray]:
    """(X, y) from a LIBSVM or CSV file; fmt None guesses from the extension (.csv is CSV)."""
    if fmt is None:
        fmt = "csv" if os.fspath(path).lower().endswith(".csv") else "libsvm"
    if fmt == "libsvm":
        return load_libsvm(path, **kwargs)
    if fmt == "csv":
        return load_csv(path, **kwargs)
    raise ValueError(f"format must be 'libsvm' or 'csv', got {fmt!r}")


_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def load_idx(path: str) -> np.ndarray:
    """An IDX file (the MNIST format; .gz is decompressed) as a numpy array."""
    path = os.fspath(path)
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_TYPES:
        raise ValueError(f"{path}: not an IDX file (bad magic number)")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path}: truncated IDX header")
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_TYPES[data[2]])
    count = int(np.prod(shape)) if shape else 1
    if len(data) != header + count * dtype.itemsize:
        raise ValueError(f"{path}: IDX payload has {len(data) - header} bytes, the header announces "
                         f"{count * dtype.itemsize}")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)


def fashion_mnist_pair(classes: Sequence[int] = (0, 6), split: str = "train",
                       root: str = FASHION_MNIST) -> Tuple[np.ndarray, np.ndarray]:
    """Two Fashion-MNIST classes as a binary problem: X (n x 784 float32 in [0, 1]), y in {-1, +1}
    (+1 for classes[1]). The default pair, T-shirt/top against shirt, is the hardest one."""
    prefix = {"train": "train", "test": "t10k"}.get(split)
    if prefix is None:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if len(classes) != 2 or classes[0] == classes[1] or not all(0 <= c <= 9 for c in classes):
        raise ValueError(f"classes must be two different labels from 0 to 9, got {classes!r}")
    images = load_idx(os.path.join(root, f"{prefix}-images-idx3-ubyte.gz"))
    labels = load_idx(os.path.join(root, f"{prefix}-labels-idx1-ubyte.gz"))
    keep = (labels == classes[0]) | (labels == classes[1])
    X = images[keep].reshape(int(keep.sum()), -1).astype(np.float32) / 255.0
    y = np.where(labels[keep] == classes[1], 1.0, -1.0).astype(np.float32)
    return X, y


_FEATURES = {
    "normal": lambda rng, shape: rng.standard_normal(shape),
    "laplace": lambda rng, shape: rng.laplace(size=shape),
    "exponential": lambda rng, shape: rng.exponential(size=shape),
    "lognormal": lambda rng, shape: rng.lognormal(sigma=1.0, size=shape),
    "student_t": lambda rng, shape: rng.standard_t(3.0, size=shape),
    "signed_lognormal": lambda rng, shape: rng.choice([-1.0, 1.0], size=shape) * rng.lognormal(sigma=1.0, size=shape),
}


def synthetic_regression(rows: int, features: int, *, noise: float = 1.0, sparsity: float = 0.1,
                         distribution: str = "normal", seed: int = 0) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Regression with a planted model, like the paper's Synthetic sets (Section 8.1): features
    N(0, 1), or from a heavy-tailed or skewed distribution ("laplace", "student_t" with 3 degrees of
    freedom, "signed_lognormal" (a random sign times a log-normal), "exponential", "lognormal":
    after min-max scaling most values crowd in a small part of the range, where variance-optimal
    levels pay), a true model with a `sparsity` fraction of N(0, 1) non-zeros (at least one), labels
    A x + N(0, noise^2). Returns (A float32, b float32, x float64)."""
    if distribution not in _FEATURES:
        raise ValueError(f"distribution must be one of {', '.join(_FEATURES)}, got {distribution!r}")
    rng = np.random.default_rng(seed)
    A = _FEATURES[distribution](rng, (rows, features))
    x = np.where(rng.random(features) < sparsity, rng.standard_normal(features), 0.0)
    if not x.any():
        x[rng.integers(features)] = rng.standard_normal()
    b = A @ x + noise * rng.standard_normal(rows)
    return A.astype(np.float32), b.astype(np.float32), x
