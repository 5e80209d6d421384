"""Python front of the zipml operators (torch.ops.zipml, defined in csrc/ops/schemas.cpp).

Each public function resolves its Python-friendly arguments (a seed of None, levels or granularity
given as tensors) and calls one operator; autograd for the operators is registered in C++. Below
them, the fake (meta) implementations that let torch.compile trace every operator.

Method: ZipML, Zhang et al., ICML 2017 (arXiv 1611.05402); section numbers refer to it.
"""

from __future__ import annotations

from typing import Optional, Union

import torch

from ._types import DoubleSampled, QuantizedTensor

__all__ = [
    "quantize",
    "dequantize",
    "fake_quantize",
    "quantize_grad",
    "double_sample",
    "optimal_levels",
    "pack",
    "unpack",
    "draw_seed",
    "cpu_isa",
]

_ops = torch.ops.zipml
_UINT64 = (1 << 64) - 1

Levels = Union[str, torch.Tensor]
Granularity = Union[str, torch.Tensor]


def draw_seed() -> int:
    """A fresh seed from PyTorch's default CPU generator: reproducible under torch.manual_seed, and
    the same value zipml::draw_seed() takes in C++."""
    return int(torch.randint(2**63 - 1, (), dtype=torch.int64).item())


def _seed(seed: Optional[int]) -> int:
    if seed is None:
        return draw_seed()
    seed = int(seed)
    if not 0 <= seed <= _UINT64:
        raise ValueError(f"seed must be an integer in [0, 2**64), got {seed}")
    return seed - (1 << 64) if seed >= 1 << 63 else seed  # the operator takes int64 bits


def _levels(levels: Levels):
    if isinstance(levels, torch.Tensor):
        return "codebook", levels
    return levels, None


def _granularity(granularity: Granularity):
    if isinstance(granularity, torch.Tensor):
        return "auto", granularity
    return granularity, None


def quantize(
    x: torch.Tensor,
    bits: int,
    *,
    rounding: str = "stochastic",
    levels: Levels = "uniform",
    granularity: Granularity = "tensor",
    seed: Optional[int] = None,
    offset: int = 0,
    candidates: int = 1024,
) -> QuantizedTensor:
    """Quantizes x to `bits`-bit codes: x ~ levels[codes] * scale (Section 2).

    Args:
        x: a float32, float64, float16 or bfloat16 tensor, any shape and strides.
        bits: 1 to 8.
        rounding: "stochastic" (unbiased: E[levels[code]] * scale = x) or "nearest".
        levels: "uniform" (2**bits points with endpoints -1 and 1), "optimal" (variance-optimal
            for x, Section 5) or a sorted tensor of at most 2**bits values in [-1, 1].
        granularity: which elements share a scale max|x|: "tensor", "channel" (dim 0), "row"
            (all dims but the last), or a scale tensor of one of those shapes.
        seed, offset: the Philox stream; seed=None draws one from torch's default generator.
        candidates: candidate points of the optimal-levels dynamic program.

    Non-finite values raise ValueError (codes cannot hold them); fake_quantize propagates them.
    """
    lv, codebook = _levels(levels)
    gran, scale = _granularity(granularity)
    codes, scale_out, table = _ops.quantize(
        x, bits, rounding=rounding, levels=lv, codebook=codebook, granularity=gran, scale=scale,
        seed=_seed(seed), offset=offset, candidates=candidates,
    )
    return QuantizedTensor(codes, scale_out, table, bits, uniform=lv == "uniform")


def dequantize(codes: torch.Tensor, scale: torch.Tensor, levels: torch.Tensor,
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """levels[codes] * scale, in `dtype`. Differentiable in scale and levels."""
    return _ops.dequantize(codes, scale, levels, dtype=dtype)


def fake_quantize(
    x: torch.Tensor,
    bits: int,
    *,
    rounding: str = "stochastic",
    levels: Levels = "uniform",
    granularity: Granularity = "tensor",
    seed: Optional[int] = None,
    offset: int = 0,
    candidates: int = 1024,
    out: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """quantize then dequantize, fused in one pass: the operator used in training (Section 7).

    Arguments as for quantize. The backward is the straight-through estimator: the gradient passes
    where x lies within the levels' range and is zero where a given scale (or a codebook narrower
    than [-1, 1]) clips x. NaN and Inf inputs give NaN outputs, as does a NaN, Inf or negative
    scale for its whole group. `out` receives the result without allocating (no autograd).
    """
    lv, codebook = _levels(levels)
    gran, scale = _granularity(granularity)
    kwargs = dict(rounding=rounding, levels=lv, codebook=codebook, granularity=gran, scale=scale,
                  seed=_seed(seed), offset=offset, candidates=candidates)
    if out is not None:
        _ops.fake_quantize.out(x, bits, out=out, **kwargs)
        return out
    return _ops.fake_quantize(x, bits, **kwargs)


def quantize_grad(x: torch.Tensor, bits: int, *, granularity: str = "tensor",
                  seed: Optional[int] = None, offset: int = 0) -> torch.Tensor:
    """Identity in the forward pass; in the backward pass the gradient is quantized
    stochastically to `bits` on the uniform grid with a max-abs scale: unbiased, QSGD-style."""
    return _ops.quantize_grad(x, bits, granularity=granularity, seed=_seed(seed), offset=offset)


def double_sample(
    x: torch.Tensor,
    bits: int,
    *,
    levels: Levels = "uniform",
    granularity: Granularity = "tensor",
    seed: Optional[int] = None,
    offset: int = 0,
    candidates: int = 1024,
) -> DoubleSampled:
    """Two independent stochastic quantizations of x (Section 4, double sampling), stored compactly:
    both samples of a value lie in the same interval [L_j, L_j+1], so the store keeps j once plus
    one round-up bit per sample. Uses Philox streams `offset` and `offset + 1`."""
    lv, codebook = _levels(levels)
    gran, scale = _granularity(granularity)
    index, up, scale_out, table = _ops.double_sample(
        x, bits, levels=lv, codebook=codebook, granularity=gran, scale=scale,
        seed=_seed(seed), offset=offset, candidates=candidates,
    )
    return DoubleSampled(index, up, scale_out, table, bits, uniform=lv == "uniform")


def optimal_levels(x: torch.Tensor, num_levels: int, *, candidates: int = 1024,
                   scale: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The num_levels levels minimising the total stochastic-rounding variance of x (Section 5),
    sorted, in units of the scale (max|x| unless given), i.e. the codebook quantize takes.

    Exact (the brute-force optimum) when x has at most `candidates` elements; otherwise optimal
    over a grid of about `candidates` points that contains the uniform levels, so never worse than
    uniform. The dynamic program is O(K M log M) by divide and conquer over the Monge cost."""
    return _ops.optimal_levels(x, num_levels, candidates=candidates, scale=scale)


def pack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """uint8 codes < 2**bits packed into ceil(n * bits / 8) bytes, least significant bits first."""
    return _ops.pack(codes, bits)


def unpack(packed: torch.Tensor, bits: int, numel: int) -> torch.Tensor:
    """The first `numel` codes of a packed stream, as a 1-D uint8 tensor."""
    return _ops.unpack(packed, bits, numel)


def cpu_isa(isa: str = "") -> str:
    """The CPU kernel variant in use ("scalar", "avx2", "avx512"); pass a name (or "auto") to
    select one. All variants compute identical bits."""
    return _ops._cpu_isa(isa)


# ---- fake (meta) implementations, for torch.compile ---------------------------------------------

def _check_devices(op: str, x: torch.Tensor, **others) -> None:
    """As the real kernels do: every tensor argument on x's device (meta tensors would otherwise
    route a mixed call here)."""
    for name, t in others.items():
        if t is not None and t.device != x.device:
            raise ValueError(f"{op}: {name} is on {t.device} but x is on {x.device}")


def _scale_shape(x: torch.Tensor, granularity: str, scale: Optional[torch.Tensor]):
    if granularity == "auto":
        if scale.numel() == 1:
            granularity = "tensor"
        elif list(scale.shape) in ([x.shape[0]] + [1] * (x.dim() - 1), [x.shape[0]]):
            granularity = "channel"
        else:
            granularity = "row"
    shape = [1] * x.dim()
    if x.dim() and granularity == "channel":
        shape[0] = x.shape[0]
    if x.dim() and granularity == "row":
        shape[:-1] = x.shape[:-1]
    return shape


def _num_levels(bits, levels, codebook):
    return codebook.shape[0] if levels == "codebook" else 1 << bits


@torch.library.register_fake("zipml::quantize")
def _(x, bits, *, levels="uniform", codebook=None, granularity="tensor", scale=None, **_):
    _check_devices("quantize", x, codebook=codebook, scale=scale)
    codes = torch.empty(x.shape, dtype=torch.uint8, device=x.device)
    s = x.new_empty(_scale_shape(x, granularity, scale), dtype=torch.float32)
    return codes, s, x.new_empty(_num_levels(bits, levels, codebook), dtype=torch.float32)


@torch.library.register_fake("zipml::dequantize")
def _(codes, scale, levels, *, dtype=torch.float32):
    return torch.empty(codes.shape, dtype=dtype, device=codes.device)


@torch.library.register_fake("zipml::fake_quantize")
def _(x, bits, *, codebook=None, scale=None, **_):
    _check_devices("fake_quantize", x, codebook=codebook, scale=scale)
    return torch.empty(x.shape, dtype=x.dtype, device=x.device)


@torch.library.register_fake("zipml::fake_quantize.out")
def _(x, bits, *, out, **_):
    return None


@torch.library.register_fake("zipml::quantize_grad")
def _(x, bits, **_):
    return torch.empty(x.shape, dtype=x.dtype, device=x.device)


@torch.library.register_fake("zipml::double_sample")
def _(x, bits, *, levels="uniform", codebook=None, granularity="tensor", scale=None, **_):
    _check_devices("double_sample", x, codebook=codebook, scale=scale)
    index = torch.empty(x.shape, dtype=torch.uint8, device=x.device)
    s = x.new_empty(_scale_shape(x, granularity, scale), dtype=torch.float32)
    return index, torch.empty_like(index), s, x.new_empty(_num_levels(bits, levels, codebook), dtype=torch.float32)


@torch.library.register_fake("zipml::double_sample_decode")
def _(index, up, scale, levels, *, dtype=torch.float32):
    return (torch.empty(index.shape, dtype=dtype, device=index.device),
            torch.empty(index.shape, dtype=dtype, device=index.device))


@torch.library.register_fake("zipml::optimal_levels")
def _(x, num_levels, **_):
    return x.new_empty(num_levels, dtype=torch.float32)


def _packed_bytes(numel, bits):
    return (numel * bits + 7) // 8


@torch.library.register_fake("zipml::pack")
def _(codes, bits):
    return codes.new_empty(_packed_bytes(codes.numel(), bits))


@torch.library.register_fake("zipml::unpack")
def _(packed, bits, numel):
    return packed.new_empty(numel)


@torch.library.register_fake("zipml::_fake_quantize_into")
def _(x, scale, table, num_levels, rounding, seed, offset, out):
    return None


@torch.library.register_fake("zipml::_quantize_codes")
def _(x, scale, table, num_levels, rounding, seed, offset):
    return torch.empty(x.shape, dtype=torch.uint8, device=x.device)


@torch.library.register_fake("zipml::_double_sample_codes")
def _(x, scale, table, num_levels, seed, offset):
    return (torch.empty(x.shape, dtype=torch.uint8, device=x.device),
            torch.empty(x.shape, dtype=torch.uint8, device=x.device))


@torch.library.register_fake("zipml::_dequantize_codes")
def _(codes, up, up_bit, scale, table, dtype):
    return torch.empty(codes.shape, dtype=dtype, device=codes.device)


@torch.library.register_fake("zipml::_ste_mask")
def _(x, levels, codebook, granularity, scale):
    return torch.empty(x.shape, dtype=x.dtype, device=x.device)


@torch.library.register_fake("zipml::_level_histogram")
def _(x, scale, bins):
    return x.new_empty((bins, 2), dtype=torch.float64), x.new_empty(2, dtype=torch.float32)


@torch.library.register_fake("zipml::_pack")
def _(codes, bits):
    return codes.new_empty(_packed_bytes(codes.numel(), bits))


@torch.library.register_fake("zipml::_unpack")
def _(packed, bits, numel):
    return packed.new_empty(numel)
