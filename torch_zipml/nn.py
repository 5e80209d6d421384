"""Drop-in low-precision layers: ZipConv2d and ZipLinear (ZipML, arXiv 1611.05402, Section 7).

`ZipConv2d` is an `nn.Conv2d` (and `ZipLinear` an `nn.Linear`) whose forward pass uses a quantized
copy of the FP32 master weight: the layer keeps `weight` and `bias` exactly as its PyTorch twin does
(same constructor arguments, same `state_dict` keys, so a plain checkpoint loads either way), and
quantizes the weight on the fly with the fused operator `torch_zipml.fake_quantize`, whose
straight-through backward (registered in C++) hands dL/dW_q to the master weight. Biases stay FP32,
as in the paper's Caffe code.

Exact semantics of one forward pass (the C++ twin reproduces them bit for bit). Let `t` be the
layer's step counter. In training mode the pass uses `t` and then sets `step = t + 1`; in eval mode
it uses the fixed `EVAL_STEP = 2**61 - 1` and leaves the counter alone. With `base = 4 * t`:

1. input (only if `act_bits`):
   x = fake_quantize(x, act_bits, rounding=r, levels="uniform", granularity="tensor",
                     seed=seed, offset=base + 2)
2. weight gradient (only if `grad_bits`, and only while the weight requires a gradient):
   w = quantize_grad(weight, grad_bits, granularity=granularity, seed=seed, offset=base + 1)
   (identity forward; the backward quantizes dL/dw stochastically and unbiasedly, QSGD-style)
3. weight:
   w = fake_quantize(w, weight_bits, rounding=r, levels=weight_levels, granularity=granularity,
                     seed=seed, offset=base + 0, candidates=candidates)
4. y = conv2d(x, w, bias, stride, padding, dilation, groups)   (resp. linear(x, w, bias))

where r is `rounding`, except in eval mode with `eval_rounding="nearest"`, where r = "nearest".
So the Philox stream of every quantization is a pure function of (seed, step, stream number):
(seed, 4t + 0) for the weight, 4t + 1 for its gradient, 4t + 2 for the input. Offset 4t + 3 is
unused (reserved). `torch_zipml.convert` gives the i-th Conv2d/Linear of a model (registration
order) the seed `config.seed + i`; a layer built directly with `seed=None` draws its seed from
PyTorch's default generator (reproducible under `torch.manual_seed`).

Eval mode. By default (`eval_rounding="sample"`) the eval network is one fixed draw of the
stochastic weights (stream EVAL_STEP): deterministic, and what one would deploy from the codes.
With `eval_rounding="nearest"` the eval network rounds to the nearest level instead (biased, but the
least-squares choice). Weights are re-quantized at every eval forward (cheap; no cache to go stale).
Batch-norm running statistics gathered in training average over many weight draws and do not fit
any single eval network: at 2 bits, a ResNet-20 evaluated with them scored 13% where the same
weights with re-estimated statistics scored 38%. `calibrate_batchnorm(model, batches)` returns a
copy whose statistics are re-estimated for the eval network; the trainer evaluates through it.

Step counters and seeds are deliberately not in `state_dict` (its keys stay those of nn.Conv2d /
nn.Linear, so checkpoints move freely between the plain and the quantized model, strictly, both
ways). Save and restore them with `rng_state(model)` / `set_rng_state(model, state)`; the trainer
(`torch_zipml.train`) does.

torch.compile: the quantization (steps 1-3) runs eagerly under `torch.compiler.disable`, because the
Philox offset changes every step and the operators take it as a Python int: traced, it would be
specialised and recompiled every step. The rest of the model compiles; `fullgraph=True` cannot.
"""

from __future__ import annotations

import copy
from typing import Dict, Iterable, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from .ops import draw_seed, fake_quantize, quantize_grad

__all__ = [
    "from_layer",
    "ZipConv2d",
    "ZipLinear",
    "EVAL_STEP",
    "calibrate_batchnorm",
    "rng_state",
    "set_rng_state",
]

EVAL_STEP = 2**61 - 1  # the step eval-mode forwards use: offsets 4 * EVAL_STEP + k < 2**63
STREAM_WEIGHT, STREAM_GRAD, STREAM_INPUT = 0, 1, 2
STREAMS_PER_STEP = 4

_LEVELS = ("uniform", "optimal")
_ROUNDINGS = ("stochastic", "nearest")
_GRANULARITIES = ("tensor", "channel")
_EVAL_ROUNDINGS = ("sample", "nearest")


def _check_bits(name: str, bits, optional: bool) -> Optional[int]:
    if bits is None and optional:
        return None
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 8:
        accepted = "an integer from 1 to 8" + (" or None" if optional else "")
        raise ValueError(f"{name} must be {accepted}, got {bits!r}")
    return bits


def _check_choice(name: str, value, choices) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


class _ZipQuantized:
    """The quantization state and arithmetic shared by ZipConv2d and ZipLinear (a mixin for a
    subclass of nn.Conv2d / nn.Linear, which owns `weight` and `bias`)."""

    weight: torch.Tensor

    def _init_quantization(self, weight_bits, weight_levels, rounding, granularity, grad_bits,
                           act_bits, seed, eval_rounding, candidates) -> None:
        self.weight_bits = _check_bits("weight_bits", weight_bits, optional=False)
        self.grad_bits = _check_bits("grad_bits", grad_bits, optional=True)
        self.act_bits = _check_bits("act_bits", act_bits, optional=True)
        self.rounding = _check_choice("rounding", rounding, _ROUNDINGS)
        self.granularity = _check_choice("granularity", granularity, _GRANULARITIES)
        self.eval_rounding = _check_choice("eval_rounding", eval_rounding, _EVAL_ROUNDINGS)
        if isinstance(candidates, bool) or not isinstance(candidates, int) or candidates < 2:
            raise ValueError(f"candidates must be an integer >= 2, got {candidates!r}")
        self.candidates = candidates
        if isinstance(weight_levels, torch.Tensor):
            if weight_levels.dim() != 1 or not 1 <= weight_levels.numel() <= 2**weight_bits:
                raise ValueError(
                    f"weight_levels as a tensor must be 1-D with 1 to 2**weight_bits = {2**weight_bits} "
                    f"levels, got shape {tuple(weight_levels.shape)}")
            # A non-persistent buffer: follows .to(device), stays out of state_dict.
            self.register_buffer("weight_codebook",
                                 weight_levels.detach().to(torch.float32, copy=True), persistent=False)
            self.weight_levels = "codebook"
        else:
            if weight_levels not in _LEVELS:
                raise ValueError(f"weight_levels must be 'uniform', 'optimal' or a tensor of levels, "
                                 f"got {weight_levels!r}")
            self.weight_levels = weight_levels
            self.weight_codebook = None
        if seed is None:
            seed = draw_seed()
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**64:
            raise ValueError(f"seed must be an integer in [0, 2**64) or None, got {seed!r}")
        self.seed = seed
        self.step = 0

    def _levels(self) -> Union[str, torch.Tensor]:
        return self.weight_codebook if self.weight_levels == "codebook" else self.weight_levels

    @torch.compiler.disable
    def quantize_operands(self, x: torch.Tensor):
        """(input, weight) as the layer's forward pass uses them; advances the step in training."""
        if self.training:
            step = self.step
            self.step = step + 1
            rounding = self.rounding
        else:
            step = EVAL_STEP
            rounding = "nearest" if self.eval_rounding == "nearest" else self.rounding
        base = STREAMS_PER_STEP * step
        if self.act_bits is not None:
            x = fake_quantize(x, self.act_bits, rounding=rounding, levels="uniform", granularity="tensor",
                              seed=self.seed, offset=base + STREAM_INPUT)
        w = self.weight
        if self.grad_bits is not None and w.requires_grad and torch.is_grad_enabled():
            w = quantize_grad(w, self.grad_bits, granularity=self.granularity, seed=self.seed,
                              offset=base + STREAM_GRAD)
        w = fake_quantize(w, self.weight_bits, rounding=rounding, levels=self._levels(),
                          granularity=self.granularity, seed=self.seed, offset=base + STREAM_WEIGHT,
                          candidates=self.candidates)
        return x, w

    def _quantization_repr(self) -> str:
        levels = (f"codebook{tuple(round(v, 4) for v in self.weight_codebook.tolist())}"
                  if self.weight_levels == "codebook" else self.weight_levels)
        parts = [f"weight_bits={self.weight_bits}", f"weight_levels={levels}", f"rounding={self.rounding}",
                 f"granularity={self.granularity}"]
        if self.grad_bits is not None:
            parts.append(f"grad_bits={self.grad_bits}")
        if self.act_bits is not None:
            parts.append(f"act_bits={self.act_bits}")
        if self.eval_rounding != "sample":
            parts.append(f"eval_rounding={self.eval_rounding}")
        parts.append(f"seed={self.seed}")
        return ", ".join(parts)


def from_layer(cls, layer: nn.Module, **options) -> nn.Module:
    """A `cls` layer (nn.Conv2d, nn.Linear or a subclass) with the hyper-parameters of `layer` (a
    Conv2d or Linear) that takes over its weight and bias Parameters themselves, so an optimizer built
    on `layer` keeps working, and its training mode. `options` go to cls (e.g. weight_bits)."""
    if isinstance(layer, nn.Conv2d):
        new = cls(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.padding,
                  layer.dilation, layer.groups, layer.bias is not None, layer.padding_mode, device="meta", **options)
    elif isinstance(layer, nn.Linear):
        new = cls(layer.in_features, layer.out_features, layer.bias is not None, device="meta", **options)
    else:
        raise TypeError(f"from_layer: layer must be an nn.Conv2d or nn.Linear, got {type(layer).__name__}")
    new.weight = layer.weight
    new.bias = layer.bias
    if getattr(new, "weight_codebook", None) is not None:
        new.weight_codebook = new.weight_codebook.to(layer.weight.device)
    new.train(layer.training)
    return new


class ZipConv2d(_ZipQuantized, nn.Conv2d):
    """nn.Conv2d whose forward pass uses the ZipML-quantized weight (see the module docstring for
    the exact per-forward semantics and Philox streams).

    Args (after those of nn.Conv2d, keyword only):
        weight_bits: 1 to 8 bits per weight (2**weight_bits levels).
        weight_levels: "uniform" (evenly spaced on [-1, 1] in units of the scale), "optimal" (the
            variance-optimal levels of the current weights, Section 5, recomputed every forward) or a
            sorted 1-D tensor of levels in [-1, 1].
        rounding: "stochastic" (unbiased, Section 2) or "nearest".
        granularity: "tensor" (one scale max|W|) or "channel" (one per output channel); with
            "optimal", one set of levels for the whole tensor, in units of each channel's scale.
        grad_bits: None, or quantize the weight gradient stochastically to this many bits.
        act_bits: None, or fake-quantize the input (uniform levels, per-tensor scale max|x|). The
            levels are symmetric, so on non-negative inputs (after a ReLU) the negative half is unused.
        seed: the layer's Philox key; None draws one from PyTorch's default generator.
        eval_rounding: "sample" (a fixed stochastic draw in eval mode) or "nearest".
        candidates: candidate points of the optimal-levels dynamic program.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True, padding_mode: str = "zeros", device=None, dtype=None, *,
                 weight_bits: int = 2, weight_levels: Union[str, torch.Tensor] = "uniform",
                 rounding: str = "stochastic", granularity: str = "tensor", grad_bits: Optional[int] = None,
                 act_bits: Optional[int] = None, seed: Optional[int] = None, eval_rounding: str = "sample",
                 candidates: int = 1024) -> None:
        nn.Conv2d.__init__(self, in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                           padding_mode, device, dtype)
        self._init_quantization(weight_bits, weight_levels, rounding, granularity, grad_bits, act_bits, seed,
                                eval_rounding, candidates)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, w = self.quantize_operands(x)
        return self._conv_forward(x, w, self.bias)

    def extra_repr(self) -> str:
        return nn.Conv2d.extra_repr(self) + ", " + self._quantization_repr()



class ZipLinear(_ZipQuantized, nn.Linear):
    """nn.Linear whose forward pass uses the ZipML-quantized weight; arguments as for ZipConv2d
    ("channel" granularity: one scale per output feature)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None, *,
                 weight_bits: int = 2, weight_levels: Union[str, torch.Tensor] = "uniform",
                 rounding: str = "stochastic", granularity: str = "tensor", grad_bits: Optional[int] = None,
                 act_bits: Optional[int] = None, seed: Optional[int] = None, eval_rounding: str = "sample",
                 candidates: int = 1024) -> None:
        nn.Linear.__init__(self, in_features, out_features, bias, device, dtype)
        self._init_quantization(weight_bits, weight_levels, rounding, granularity, grad_bits, act_bits, seed,
                                eval_rounding, candidates)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, w = self.quantize_operands(x)
        return F.linear(x, w, self.bias)

    def extra_repr(self) -> str:
        return nn.Linear.extra_repr(self) + ", " + self._quantization_repr()



@torch.no_grad()
def calibrate_batchnorm(model: nn.Module, batches: Iterable[torch.Tensor]) -> nn.Module:
    """A copy of `model`, in eval mode, whose batch-norm running statistics are re-estimated
    ("precise BN") for the network eval mode runs: the inputs of `batches` go through the copy with
    its quantized layers in eval mode (the fixed draw, or nearest rounding) and its batch norms in
    training mode, which average the batch statistics with equal weights (momentum=None). The
    model itself is left untouched. Any model works; for plain layers this re-estimates the
    statistics of the final weights."""
    calibrated = copy.deepcopy(model)
    norms = [m for m in calibrated.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    calibrated.eval()
    for m in norms:
        m.train()
    seen = 0
    for x in batches:
        calibrated(x)
        seen += 1
    if norms and not seen:
        raise ValueError("calibrate_batchnorm: no batches given")
    for m, original in zip(norms, (m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm))):
        m.momentum = original.momentum
    return calibrated.eval()


def rng_state(model: nn.Module) -> Dict[str, Dict[str, int]]:
    """{module name: {"seed", "step"}} for every ZipConv2d / ZipLinear of the model: what, besides
    state_dict, a checkpoint needs to continue the exact Philox streams."""
    return {name: {"seed": m.seed, "step": m.step}
            for name, m in model.named_modules() if isinstance(m, _ZipQuantized)}


def set_rng_state(model: nn.Module, state: Dict[str, Dict[str, int]]) -> None:
    """Restores what rng_state returned; the model must have the same quantized layers."""
    layers = {name: m for name, m in model.named_modules() if isinstance(m, _ZipQuantized)}
    if set(layers) != set(state):
        missing, unexpected = sorted(set(layers) - set(state)), sorted(set(state) - set(layers))
        raise ValueError(f"set_rng_state: the state does not match the model's quantized layers "
                         f"(missing: {missing}, unexpected: {unexpected})")
    for name, m in layers.items():
        m.seed = int(state[name]["seed"])
        m.step = int(state[name]["step"])
