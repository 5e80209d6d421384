"""torch_zipml.convert: swap the Conv2d / Linear layers of any model for their low-precision twins.

    model = torchvision.models.resnet18()            # or torch_zipml.models.resnet20()
    torch_zipml.convert(model, QuantConfig("zipml", weight_bits=2, weight_levels="optimal", seed=0))

Schemes: "fp32" (plain nn.Conv2d / nn.Linear), "bwn" and "xnor" (XNOR-Net baselines,
torch_zipml.xnor), "zipml" (ZipConv2d / ZipLinear, torch_zipml.nn). The new layers share the old
ones' weight and bias Parameters (an optimizer built before conversion keeps working) and take their
training mode; they have the same state_dict keys, so checkpoints load across schemes.

Which layers: modules whose class is exactly nn.Conv2d or nn.Linear, or one of this package's
layers (so converting twice, or back to "fp32", works). Other subclasses are left alone, since their
forward may do something else (nn.MultiheadAttention's out_proj, for one, is never called).
Layers are numbered i = 0, 1, ... in registration order (model.named_modules()), which for the usual
models is execution order. With skip_first_last the first and the last of them stay "fp32" (the
XNOR-Net convention). Overrides then apply, in order, to the layers they match. ZipML layer i gets
the Philox seed `seed + i` (mod 2**64) of its resolved config; with seed=None, convert draws one base
seed from PyTorch's default generator.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from dataclasses import dataclass, field
from typing import Callable, Dict, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from .nn import ZipConv2d, ZipLinear, from_layer
from .ops import draw_seed
from .xnor import BWNConv2d, BWNLinear, XNORConv2d, XNORLinear

__all__ = ["QuantConfig", "convert", "layer_schemes", "SCHEMES"]

SCHEMES = ("fp32", "bwn", "xnor", "zipml")

Selector = Union[str, Callable[[str, nn.Module], bool]]
Override = Tuple[Selector, Union[dict, "QuantConfig"]]

_CONV_CLASSES = {"fp32": nn.Conv2d, "bwn": BWNConv2d, "xnor": XNORConv2d, "zipml": ZipConv2d}
_LINEAR_CLASSES = {"fp32": nn.Linear, "bwn": BWNLinear, "xnor": XNORLinear, "zipml": ZipLinear}
_ELIGIBLE = tuple(set(_CONV_CLASSES.values()) | set(_LINEAR_CLASSES.values()))


@dataclass
class QuantConfig:
    """What convert puts in place of each Conv2d / Linear.

    scheme: "fp32", "bwn", "xnor" or "zipml".
    weight_bits, weight_levels, rounding, granularity, grad_bits, act_bits, eval_rounding,
    candidates: the ZipConv2d / ZipLinear options (scheme "zipml").
    clip: the straight-through clipping threshold of "bwn" and "xnor".
    seed: base Philox seed of the "zipml" layers (layer i gets seed + i); None draws one.
    skip_first_last: keep the first and last eligible layers in full precision.
    overrides: (selector, change) pairs; a selector is a module name or fnmatch pattern
        ("layer1.*") or a predicate f(name, module); a change is a dict of fields to replace
        (e.g. {"scheme": "fp32"} or {"weight_bits": 4}) or a whole QuantConfig.
    """

    scheme: str = "zipml"
    weight_bits: int = 2
    weight_levels: Union[str, torch.Tensor] = "uniform"
    rounding: str = "stochastic"
    granularity: str = "tensor"
    grad_bits: Optional[int] = None
    act_bits: Optional[int] = None
    eval_rounding: str = "sample"
    candidates: int = 1024
    clip: float = 1.0
    seed: Optional[int] = None
    skip_first_last: bool = True
    overrides: Sequence[Override] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if self.scheme not in SCHEMES:
            raise ValueError(f"QuantConfig: scheme must be one of {', '.join(map(repr, SCHEMES))}, "
                             f"got {self.scheme!r}")
        for selector, change in self.overrides:
            if not (isinstance(selector, str) or callable(selector)):
                raise TypeError(f"QuantConfig: an override selector must be a module name, a pattern or a "
                                f"predicate f(name, module), got {selector!r}")
            if isinstance(change, dict):
                unknown = set(change) - {f.name for f in dataclasses.fields(QuantConfig)}
                if unknown:
                    raise ValueError(f"QuantConfig: override for {selector!r} names unknown fields "
                                     f"{sorted(unknown)}")
            elif not isinstance(change, QuantConfig):
                raise TypeError(f"QuantConfig: an override must be a dict of fields or a QuantConfig, "
                                f"got {type(change).__name__}")

    def replace(self, **changes) -> "QuantConfig":
        return dataclasses.replace(self, **changes)

    def zipml_kwargs(self, seed: int) -> dict:
        return dict(weight_bits=self.weight_bits, weight_levels=self.weight_levels, rounding=self.rounding,
                    granularity=self.granularity, grad_bits=self.grad_bits, act_bits=self.act_bits, seed=seed,
                    eval_rounding=self.eval_rounding, candidates=self.candidates)


def _matches(selector: Selector, name: str, module: nn.Module) -> bool:
    if isinstance(selector, str):
        return fnmatch.fnmatchcase(name, selector)
    return bool(selector(name, module))


def _eligible_layers(model: nn.Module):
    return [(name, m) for name, m in model.named_modules() if type(m) in _ELIGIBLE]


def _layer_config(config: QuantConfig, name: str, module: nn.Module, first_or_last: bool) -> QuantConfig:
    resolved = config.replace(scheme="fp32") if config.skip_first_last and first_or_last else config
    for selector, change in config.overrides:
        if _matches(selector, name, module):
            resolved = change if isinstance(change, QuantConfig) else resolved.replace(**change)
    return resolved


def _build(name: str, module: nn.Module, config: QuantConfig, index: int) -> nn.Module:
    cls = (_CONV_CLASSES if isinstance(module, nn.Conv2d) else _LINEAR_CLASSES)[config.scheme]
    if config.scheme == "zipml":
        base = draw_seed() if config.seed is None else config.seed
        kwargs = config.zipml_kwargs((base + index) % 2**64)
    elif config.scheme in ("bwn", "xnor"):
        kwargs = dict(clip=config.clip)
    else:
        kwargs = {}
    try:
        return from_layer(cls, module, **kwargs)
    except ValueError as e:
        raise ValueError(f"convert: layer {name!r} cannot take scheme {config.scheme!r}: {e} "
                         f"(exclude it with an override, e.g. ({name!r}, {{'scheme': 'fp32'}}))") from None


def convert(model: nn.Module, config: QuantConfig) -> nn.Module:
    """Replaces, in place, each eligible Conv2d / Linear of `model` by the layer its resolved config
    names, keeping the weights (see the module docstring). Returns the model (the new layer when
    `model` itself is a layer)."""
    if not isinstance(config, QuantConfig):
        raise TypeError(f"convert: config must be a QuantConfig, got {type(config).__name__}")
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.lazy.LazyModuleMixin) and m.has_uninitialized_params():
            raise ValueError(f"convert: layer {name!r} is lazy and not initialised yet; run one forward pass first")
    layers = _eligible_layers(model)
    if config.seed is None:  # one drawn base seed for every layer whose config has none
        config = config.replace(seed=draw_seed())
    for index, (name, module) in enumerate(layers):
        layer_config = _layer_config(config, name, module, index in (0, len(layers) - 1))
        if layer_config.scheme == "fp32" and type(module) in (nn.Conv2d, nn.Linear):
            continue  # already a plain layer
        new = _build(name, module, layer_config, index)
        if name == "":
            return new
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, new)
    return model


def layer_schemes(model: nn.Module) -> Dict[str, str]:
    """{layer name: scheme} for the eligible layers of a model, in registration order."""
    schemes = {}
    for name, m in _eligible_layers(model):
        table = _CONV_CLASSES if isinstance(m, nn.Conv2d) else _LINEAR_CLASSES
        schemes[name] = next(s for s, cls in table.items() if type(m) is cls)
    return schemes
