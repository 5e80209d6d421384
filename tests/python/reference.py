"""Slow, obvious references for the zipml kernels, written from the definitions (numpy, float32).

The draws and the stochastic rounding rule are those of torch_zipml.linear.reference (Philox4x32-10
as Random123 specifies it); quantization follows kernels/common/quantize.h and ZipML §2:
v = clamp(x * (1/s), L_0, L_K-1), v in [L_j, L_j+1], frac = (v - L_j) / (L_j+1 - L_j) (for the
uniform grid t = (v + 1)(K - 1)/2, j = min(floor t, K - 2), frac = t - j), stochastic rounding up iff
u < frac for u = (r + w 2^-32) 2^-16 (r: the element's 16-bit draw, half i % 2 of word i // 2; w: its
tie word, word 2^63 + i, read only where r = floor(frac 2^16) < frac 2^16), nearest up iff
frac >= 1/2, value = L_code * s.
"""

from __future__ import annotations

import numpy as np
import torch

# One numpy definition of the draws and the rounding rule, shared with the linear solvers' tests.
from torch_zipml.linear.reference import philox_draws, stochastic_up  # noqa: F401


def uniform_levels(k: int) -> np.ndarray:
    step = np.float32(1.0) / np.float32(k - 1)
    return (np.arange(k, dtype=np.float32) * 2 - np.float32(k - 1)).astype(np.float32) * step


def _locate(v: np.ndarray, levels: np.ndarray, uniform: bool):
    k = len(levels)
    if uniform:
        t = (v + np.float32(1.0)) * np.float32(0.5 * (k - 1))
        j = np.minimum(t.astype(np.int64), k - 2)
        return j, (t - j.astype(np.float32)).astype(np.float32)
    if k < 2:
        return np.zeros(v.shape, np.int64), np.zeros(v.shape, np.float32)
    j = np.clip(np.searchsorted(levels, v, side="right") - 1, 0, k - 2)
    lo, hi = levels[j], levels[j + 1]
    return j, ((v - lo) / (hi - lo)).astype(np.float32)


def inverse_scale(s: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", over="ignore"):
        inv = np.float32(1.0) / s.astype(np.float32)
    return np.where((s > 0) & (inv <= np.finfo(np.float32).max), inv, np.float32(0)).astype(np.float32)


def groups(x: torch.Tensor, granularity: str) -> int:
    if x.dim() == 0 or granularity == "tensor":
        return 1
    if granularity == "channel":
        return x.shape[0]
    return x.numel() // x.shape[-1] if x.shape[-1] else 0


def absmax_scale(x: torch.Tensor, granularity: str) -> np.ndarray:
    g = groups(x, granularity)
    flat = x.detach().to(torch.float32).reshape(max(g, 1), -1) if x.numel() else None
    if flat is None:
        return np.zeros(g, np.float32)
    return flat.abs().amax(dim=1).numpy().astype(np.float32)


def quantize_codes(x: torch.Tensor, bits: int, *, levels=None, scale=None, granularity="tensor",
                   rounding="stochastic", seed=0, offset=0, stream_offset=0):
    """Reference codes (int64, flat) and the (scale per group, levels) used. `levels`=None: uniform."""
    xs = x.detach().to(torch.float32).contiguous().reshape(-1).numpy()
    uniform = levels is None
    table = uniform_levels(1 << bits) if uniform else np.asarray(levels, np.float32)
    s = absmax_scale(x, granularity) if scale is None else np.asarray(scale, np.float32).reshape(-1)
    g = max(len(s), 1)
    inner = xs.size // g if xs.size else 1
    s_el = np.repeat(s, inner) if xs.size else np.zeros(0, np.float32)
    v = np.minimum(np.maximum(xs * np.repeat(inverse_scale(s), inner), table[0]), table[-1])
    j, frac = _locate(v.astype(np.float32), table, uniform)
    if rounding == "nearest":
        up = frac >= np.float32(0.5)
    else:
        up = stochastic_up(frac, seed, offset + stream_offset, np.arange(xs.size))
    return (j + up).astype(np.int64), s_el, table


def fake_quantize(x: torch.Tensor, bits: int, **kw) -> torch.Tensor:
    codes, s_el, table = quantize_codes(x, bits, **kw)
    xs = x.detach().to(torch.float32).contiguous().reshape(-1).numpy()
    out = (table[codes] * s_el).astype(np.float32)
    bad = ~np.isfinite(xs) | ~((s_el >= 0) & (s_el <= np.finfo(np.float32).max))
    out[bad] = np.nan
    return torch.from_numpy(out).reshape(x.shape).to(x.dtype)


def double_sample(x: torch.Tensor, bits: int, **kw):
    """(index, up) of the compact two-sample store, from streams offset and offset + 1."""
    c1, _, _ = quantize_codes(x, bits, stream_offset=0, **kw)
    c2, _, table = quantize_codes(x, bits, stream_offset=1, **kw)
    xs = x.detach().to(torch.float32).contiguous().reshape(-1).numpy()
    s = kw.get("scale")
    s = absmax_scale(x, kw.get("granularity", "tensor")) if s is None else np.asarray(s, np.float32).reshape(-1)
    inner = xs.size // max(len(s), 1) if xs.size else 1
    v = np.minimum(np.maximum(xs * np.repeat(inverse_scale(s), inner), table[0]), table[-1])
    j, _ = _locate(v.astype(np.float32), table, kw.get("levels") is None)
    return j, (c1 - j) | ((c2 - j) << 1)


def pack(codes: np.ndarray, bits: int) -> np.ndarray:
    """Bit by bit: code i occupies bits [i*bits, (i+1)*bits) of a little-endian stream."""
    out = np.zeros((len(codes) * bits + 7) // 8, np.uint8)
    for i, c in enumerate(codes):
        for b in range(bits):
            if (int(c) >> b) & 1:
                pos = i * bits + b
                out[pos // 8] |= 1 << (pos % 8)
    return out


def rounding_variance(x: np.ndarray, levels: np.ndarray) -> float:
    """Total stochastic-rounding variance sum (u - x)(x - l) of values x on sorted levels."""
    j = np.clip(np.searchsorted(levels, x, side="right") - 1, 0, len(levels) - 2)
    return float(np.sum((levels[j + 1] - x) * (x - levels[j])))
