"""torch-zipml: end-to-end low-precision training (ZipML, Zhang et al., ICML 2017,
arXiv 1611.05402) as PyTorch operators."""

import torch  # noqa: F401  (loads libtorch before the extension)

from . import _C  # noqa: F401  (registers torch.ops.zipml)
from ._types import DoubleSampled, QuantizedTensor
from .ops import (
    cpu_isa,
    dequantize,
    double_sample,
    draw_seed,
    fake_quantize,
    optimal_levels,
    pack,
    quantize,
    quantize_grad,
    unpack,
)
from .nn import ZipConv2d, ZipLinear  # noqa: E402  (needs the operators above)
from .xnor import BWNConv2d, BWNLinear, XNORConv2d, XNORLinear  # noqa: E402
from .convert import QuantConfig, convert  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "BWNConv2d",
    "BWNLinear",
    "DoubleSampled",
    "QuantConfig",
    "QuantizedTensor",
    "XNORConv2d",
    "XNORLinear",
    "ZipConv2d",
    "ZipLinear",
    "convert",
    "cpu_isa",
    "dequantize",
    "double_sample",
    "draw_seed",
    "fake_quantize",
    "optimal_levels",
    "pack",
    "quantize",
    "quantize_grad",
    "unpack",
]
