"""XNOR-Net baselines in the same framework as ZipConv2d: BWN and XNOR layers (Rastegari, Ordonez,
Redmon, Farhadi, "XNOR-Net: ImageNet Classification Using Binary Convolutional Neural Networks",
ECCV 2016), so that the comparison with ZipML's quantized weights (arXiv 1611.05402, Section 7)
uses one model, one recipe and one trainer.

Exact semantics (for the C++ twin):

* binarize(v) = +1 where v > 0, -1 elsewhere (so an exact 0, e.g. a ReLU output that is off,
  maps to -1 and still carries information); backward: the straight-through estimator with the
  usual clipping, dL/dv = dL/db * 1[|v| <= clip] (hard-tanh STE, clip = 1 by default).
* binary weight (BWN, Section 3.1): alpha_c = mean |W_c| over the output channel c (all dims but
  0), W_b = binarize(W) * alpha_c. alpha is differentiable, so the weight gradient is the exact
  chain rule through W_b (Section 3.1's gradient, with the cross terms through alpha kept):
      dL/dW_j = alpha * g_j * 1[|W_j| <= clip] + sign(W_j) / n * sum_i g_i * sign(W_i)
  (per output channel of n elements, g = dL/dW_b, sign meaning binarize).
* BWNConv2d / BWNLinear: the layer with W_b in place of W (inputs FP32, bias FP32).
* XNORConv2d (Section 3.2): binary weights and binary inputs with the scaling factor K:
      A = mean over input channels of |x|                 (N, 1, H, W)
      K = conv2d(A, k, stride, padding, dilation), k = 1/(kh*kw) everywhere   (N, 1, H', W')
      y = conv2d(binarize(x), W_b, no bias, stride, padding, dilation) * K + bias
  K is a function of the input and is differentiated through. Zero padding pads the binary input
  with 0 (as a convolution on sign(x) does); groups must be 1 and padding_mode "zeros".
* XNORLinear: K = mean |x| over the features (N, 1); y = linear(binarize(x), W_b) * K + bias.

These are drop-in nn.Conv2d / nn.Linear subclasses with identical state_dicts. The convention of
keeping the first and last layers in full precision is applied by torch_zipml.convert
(skip_first_last). On ResNet the layers are swapped in as they are (every convolution follows a
ReLU), not re-arranged into XNOR-Net's BN -> binarize -> conv block.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


__all__ = ["binarize", "binary_weight", "BWNConv2d", "BWNLinear", "XNORConv2d", "XNORLinear"]


class _Binarize(torch.autograd.Function):
    @staticmethod
    def forward(ctx, v: torch.Tensor, clip: float) -> torch.Tensor:
        ctx.save_for_backward(v)
        ctx.clip = clip
        one = torch.ones((), dtype=v.dtype, device=v.device)
        return torch.where(v > 0, one, -one)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (v,) = ctx.saved_tensors
        return grad * (v.abs() <= ctx.clip).to(grad.dtype), None


def binarize(v: torch.Tensor, clip: float = 1.0) -> torch.Tensor:
    """+1 where v > 0, else -1; straight-through gradient where |v| <= clip."""
    return _Binarize.apply(v, clip)


def binary_weight(w: torch.Tensor, clip: float = 1.0) -> torch.Tensor:
    """binarize(w) * alpha with alpha = mean |w| per output channel (dim 0)."""
    alpha = w.abs().mean(dim=tuple(range(1, w.dim())), keepdim=True)
    return binarize(w, clip) * alpha


def _check_clip(clip) -> float:
    if isinstance(clip, bool) or not isinstance(clip, (int, float)) or not clip > 0:
        raise ValueError(f"clip must be a positive number, got {clip!r}")
    return float(clip)


class BWNConv2d(nn.Conv2d):
    """nn.Conv2d with binary weights sign(W) * mean|W| per output channel (XNOR-Net's BWN)."""

    def __init__(self, *args, clip: float = 1.0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.clip = _check_clip(clip)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, binary_weight(self.weight, self.clip), self.bias)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", clip={self.clip}"


class BWNLinear(nn.Linear):
    """nn.Linear with binary weights sign(W) * mean|W| per output feature."""

    def __init__(self, *args, clip: float = 1.0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.clip = _check_clip(clip)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, binary_weight(self.weight, self.clip), self.bias)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", clip={self.clip}"


class XNORConv2d(nn.Conv2d):
    """nn.Conv2d with binary weights and binary inputs, scaled by alpha (per output channel) and K
    (per output position), as XNOR-Net computes it. groups=1 and padding_mode='zeros' only."""

    def __init__(self, *args, clip: float = 1.0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self.groups != 1:
            raise ValueError(f"XNORConv2d: groups must be 1 (K is a mean over all input channels), got {self.groups}")
        if self.padding_mode != "zeros":
            raise ValueError(f"XNORConv2d: padding_mode must be 'zeros', got {self.padding_mode!r}")
        if isinstance(self.padding, str):
            raise ValueError(f"XNORConv2d: padding must be given as numbers, got {self.padding!r}")
        self.clip = _check_clip(clip)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kh, kw = self.kernel_size
        box = torch.full((1, 1, kh, kw), 1.0 / (kh * kw), dtype=x.dtype, device=x.device)
        k = F.conv2d(x.abs().mean(dim=1, keepdim=True), box, None, self.stride, self.padding, self.dilation)
        w_b = binary_weight(self.weight, self.clip)
        y = F.conv2d(binarize(x, self.clip), w_b, None, self.stride, self.padding, self.dilation) * k
        return y if self.bias is None else y + self.bias.view(1, -1, 1, 1)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", clip={self.clip}"


class XNORLinear(nn.Linear):
    """nn.Linear with binary weights and binary inputs, scaled by alpha (per output feature) and
    K = mean |x| (per sample)."""

    def __init__(self, *args, clip: float = 1.0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.clip = _check_clip(clip)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = x.abs().mean(dim=-1, keepdim=True)
        y = F.linear(binarize(x, self.clip), binary_weight(self.weight, self.clip)) * k
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        return super().extra_repr() + f", clip={self.clip}"
