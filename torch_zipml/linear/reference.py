"""Slow, obvious numpy references of the linear solvers, written from the definitions (Philox4x32-10
of Salmon et al. SC'11; stochastic rounding, ZipML Section 2; the estimators of Sections 3, 4 and 6)
for the tests and for the closed-form solutions the benchmarks compare against.
"""

from __future__ import annotations

import numpy as np

MODEL_STREAM = 1 << 56
RESIDUAL_STREAM = 2 << 56
GRADIENT_STREAM = 3 << 56

_MASK32 = np.uint64(0xFFFFFFFF)


def philox_words(seed: int, offset: int, index) -> np.ndarray:
    """The Philox4x32-10 word of each element index in stream (seed, offset): counter
    (index // 4 as 64 bits, offset as 64 bits), key seed, word index % 4 of the output."""
    index = np.asarray(index, dtype=np.uint64)
    block = index >> np.uint64(2)
    c = [block & _MASK32, block >> np.uint64(32),
         np.full_like(block, offset & 0xFFFFFFFF), np.full_like(block, (offset >> 32) & 0xFFFFFFFF)]
    k0, k1 = np.uint64(seed & 0xFFFFFFFF), np.uint64((seed >> 32) & 0xFFFFFFFF)
    for r in range(10):
        if r:
            k0 = (k0 + np.uint64(0x9E3779B9)) & _MASK32
            k1 = (k1 + np.uint64(0xBB67AE85)) & _MASK32
        p0 = np.uint64(0xD2511F53) * c[0]
        p1 = np.uint64(0xCD9E8D57) * c[2]
        c = [(p1 >> np.uint64(32)) ^ c[1] ^ k0, p1 & _MASK32, (p0 >> np.uint64(32)) ^ c[3] ^ k1, p0 & _MASK32]
    lane = (index & np.uint64(3)).astype(np.int64)
    return np.choose(lane, c).astype(np.uint32)


def philox_draws(seed: int, offset: int, index) -> np.ndarray:
    """The 16-bit draw of each element index in stream (seed, offset): half index % 2 (the low half
    first) of word index // 2."""
    index = np.asarray(index, dtype=np.uint64)
    words = philox_words(seed, offset, index >> np.uint64(1))
    return (words >> (16 * (index & np.uint64(1))).astype(np.uint32)) & np.uint32(0xFFFF)


TIE_WORDS = 1 << 63


def stochastic_up(frac, seed: int, offset: int, index) -> np.ndarray:
    """Stochastic rounding of float32 fractions: up iff u < frac for u = (r + w 2^-32) 2^-16, r the
    element's draw and w its tie word (word 2^63 + index of the stream). With f = frac 2^16, r decides
    unless r = floor(f) < f; only there is w read: up iff w < ceil((f - r) 2^32). Exact in float64."""
    f = np.asarray(frac, dtype=np.float32).astype(np.float64) * 65536.0
    index = np.asarray(index, dtype=np.uint64)
    r = philox_draws(seed, offset, index).astype(np.float64)
    up = r < np.floor(f)
    tie = (r == np.floor(f)) & (f > r)
    w = philox_words(seed, offset, index[tie] | np.uint64(TIE_WORDS)).astype(np.float64)
    up[tie] = w < np.ceil((f[tie] - r[tie]) * 2.0**32)
    return up


def quantize_uniform(x, scale: float, count: int, seed: int, offset: int, index) -> np.ndarray:
    """Stochastic rounding of x / scale on the uniform grid of `count` levels on [-1, 1] with the
    elements `index` of stream (seed, offset): the codes, in the float32 arithmetic of
    kernels/common/quantize.h."""
    x = np.asarray(x, dtype=np.float32)
    s = np.float32(scale)
    inv = np.float32(1.0) / s if s > 0 and np.isfinite(np.float32(1.0) / s) else np.float32(0.0)
    v = np.clip(x * inv, np.float32(-1.0), np.float32(1.0)).astype(np.float32)
    t = (v + np.float32(1.0)) * (np.float32(0.5) * np.float32(count - 1))
    j = np.minimum(t.astype(np.int64), count - 2)
    frac = (t - j.astype(np.float32)).astype(np.float32)
    return j + stochastic_up(frac, seed, offset, index)


def symmetric_quantize(v, bits: int, seed: int, offset: int, index) -> np.ndarray:
    """Stochastic rounding on the symmetric grid of 2**bits - 1 levels (model, gradient,
    residuals) with scale max|v|: the integer levels -(2**(bits-1) - 1) .. 2**(bits-1) - 1."""
    v = np.asarray(v, dtype=np.float32)
    scale = np.float32(np.abs(v).max()) if v.size else np.float32(0)
    codes = quantize_uniform(v, scale, (1 << bits) - 1, seed, offset, index)
    return codes - ((1 << (bits - 1)) - 1), scale


def symmetric_values(levels: np.ndarray, bits: int, scale) -> np.ndarray:
    """Float values of symmetric-grid integer levels as the solver computes them: L[code] * scale
    with L[i] = (2i - (K - 1)) * (1 / (K - 1)) in float32."""
    count = (1 << bits) - 1
    code = levels + ((1 << (bits - 1)) - 1)
    step = np.float32(1.0) / np.float32(count - 1)
    return ((2 * code - (count - 1)).astype(np.float32) * step).astype(np.float32) * np.float32(scale)


def uniform_level_values(codes, bits: int) -> np.ndarray:
    """The uniform data grid's values of codes (2**bits levels on [-1, 1])."""
    count = 1 << bits
    step = np.float32(1.0) / np.float32(count - 1)
    return (2 * np.asarray(codes, dtype=np.int64) - (count - 1)).astype(np.float32) * step


def loss_slope(loss: str, z, y):
    z = np.asarray(z, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if loss in ("least_squares", "lssvm"):
        return z - y
    m = y * z
    if loss == "logistic":
        return -y / (1.0 + np.exp(m))
    if loss == "hinge":
        return np.where(m < 1, -y, 0.0)
    if loss == "squared_hinge":
        return -2.0 * y * np.maximum(0.0, 1.0 - m)
    raise ValueError(loss)


def chebyshev_estimate(coef, rng_factors: np.ndarray, y) -> np.ndarray:
    """y * P(...) with P(m) = sum_i coef[i] (m / R)^i evaluated by Horner on independent factors:
    rng_factors[:, i] holds the clamped (y z_i / R) of sample i."""
    degree = len(coef) - 1
    acc = np.zeros(rng_factors.shape[0])
    for i in range(degree, 0, -1):
        acc = (acc + coef[i]) * rng_factors[:, i - 1]
    return np.asarray(y) * (acc + coef[0])


def naive_bias_solution(U: np.ndarray, y: np.ndarray, levels: np.ndarray, l2: float = 0.0):
    """The point naive sampling converges to (Section 3): the minimiser of the least-squares
    objective plus (1/2K) w' (sum_k D_k) w, D_k = diag Var[Q(u_k)], i.e. the solution of
    (A'A + sum_k D_k + K l2 I) w = A' y on the features with an unpenalised intercept column.
    levels: cols x L sorted levels of each feature (the store's). Returns (w, w0)."""
    U = np.asarray(U, dtype=np.float64)
    return ridge_with_intercept(U, y, rounding_variances(U, levels).sum(0) + U.shape[0] * l2)


def rounding_variances(U: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """D: the stochastic-rounding variance (L_j+1 - u)(u - L_j) of every value (rows x cols)."""
    U = np.asarray(U, dtype=np.float64)
    D = np.empty_like(U)
    for c in range(U.shape[1]):
        L = np.asarray(levels[c], dtype=np.float64)
        j = np.clip(np.searchsorted(L, U[:, c], side="right") - 1, 0, len(L) - 2)
        D[:, c] = (L[j + 1] - U[:, c]) * (U[:, c] - L[j])
    return D


def double_sampling_excess(U: np.ndarray, y: np.ndarray, levels: np.ndarray, samples_averaged: int) -> float:
    """The excess loss that the quantization noise of double sampling leaves in averaged SGD after
    `samples_averaged` samples, tr(H^-1 S) / (2N) (Polyak and Juditsky), where S is the covariance
    that Section 4.2 gives for one sample at the optimum x (residual r, rounding variances D):
    S = (r^2 + x'Dx) D + (x'Dx) a a'. Fresh samples make this noise independent across epochs, so it
    does not cancel over an epoch the way the sampling of rows does."""
    U = np.asarray(U, dtype=np.float64)
    rows, cols = U.shape
    w, w0 = ridge_with_intercept(U, y, 0.0)
    r = U @ w + w0 - np.asarray(y, dtype=np.float64)
    D = rounding_variances(U, levels)
    Ua = np.hstack([U, np.ones((rows, 1))])
    Hinv = np.linalg.inv(Ua.T @ Ua / rows)
    xdx = D @ (w * w)
    tr_hd = D @ np.diag(Hinv)[:cols]
    aha = np.einsum("ij,ij->i", Ua @ Hinv, Ua)
    trace = np.mean((r * r + xdx) * tr_hd + xdx * aha)
    return float(trace / (2.0 * samples_averaged))


def ridge_with_intercept(U: np.ndarray, y: np.ndarray, penalty) -> tuple:
    """argmin (1/2K)|U w + w0 - y|^2 + (1/2K) w' diag(penalty) w: returns (w, w0)."""
    U = np.asarray(U, dtype=np.float64)
    rows, cols = U.shape
    Ua = np.hstack([U, np.ones((rows, 1))])
    M = Ua.T @ Ua
    M[np.arange(cols), np.arange(cols)] += np.broadcast_to(penalty, (cols,))
    sol = np.linalg.solve(M, Ua.T @ np.asarray(y, dtype=np.float64))
    return sol[:cols], sol[cols]


def least_squares_objective(U, y, w, w0, l2: float = 0.0) -> float:
    r = np.asarray(U, dtype=np.float64) @ w + w0 - y
    return float(0.5 * np.mean(r * r) + 0.5 * l2 * np.dot(w, w))
