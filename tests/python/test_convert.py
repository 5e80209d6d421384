"""torch_zipml.convert on the repository's ResNets and on torchvision's resnet18 (when installed),
and the ResNet models themselves."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from torch_zipml.convert import QuantConfig, convert, layer_schemes
from torch_zipml.models import MODELS, ResNetCifar, resnet20
from torch_zipml.nn import ZipConv2d, ZipLinear
from torch_zipml.xnor import BWNConv2d, XNORConv2d


def fresh_resnet20(in_channels=3):
    torch.manual_seed(0)
    return resnet20(num_classes=10, in_channels=in_channels)


# ---- models --------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, convs, params", [("resnet20", 19, 269_722), ("resnet32", 31, 464_154),
                                                  ("resnet56", 55, 853_018)])
def test_resnets_have_the_paper_layer_counts(name, convs, params):
    """He et al. 2016, Section 4.2 (option A shortcuts: no projection parameters): 6n + 1
    convolutions and one linear layer; ResNet-20 has 0.27 M parameters."""
    model = MODELS[name]()
    assert sum(isinstance(m, nn.Conv2d) for m in model.modules()) == convs
    assert sum(p.numel() for p in model.parameters()) == params
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_resnet_rejects_a_depth_that_is_not_6n_plus_2():
    with pytest.raises(ValueError, match="depth must be 6n \\+ 2"):
        ResNetCifar(depth=21)


def test_option_a_shortcut_subsamples_and_zero_pads():
    block = resnet20().layer2[0]
    x = torch.randn(1, 16, 8, 8)
    s = block.shortcut(x)
    assert s.shape == (1, 32, 4, 4)
    assert torch.equal(s[:, :16], x[:, :, ::2, ::2]) and not s[:, 16:].any()


# ---- conversion ----------------------------------------------------------------------------------

@pytest.mark.parametrize("scheme, conv_type", [("zipml", ZipConv2d), ("bwn", BWNConv2d), ("xnor", XNORConv2d),
                                               ("fp32", nn.Conv2d)])
def test_convert_resnet20_keeps_weights_and_skips_first_and_last(scheme, conv_type):
    model = fresh_resnet20()
    before = {n: p for n, p in model.named_parameters()}
    keys = list(model.state_dict())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    convert(model, QuantConfig(scheme, seed=5))
    schemes = layer_schemes(model)
    assert len(schemes) == 20 and schemes["conv1"] == "fp32" and schemes["fc"] == "fp32"
    assert all(s == scheme for n, s in schemes.items() if n not in ("conv1", "fc"))
    assert type(model.layer2[1].conv2) is conv_type and type(model.conv1) is nn.Conv2d
    # The very same Parameters: the optimizer built before conversion still drives the model.
    assert all(p is before[n] for n, p in model.named_parameters())
    assert list(model.state_dict()) == keys
    loss = F.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.arange(4))
    loss.backward()
    w = model.layer1[0].conv1.weight.detach().clone()
    optimizer.step()
    assert not torch.equal(model.layer1[0].conv1.weight, w)


def test_convert_seeds_layer_i_with_seed_plus_i():
    model = convert(fresh_resnet20(), QuantConfig("zipml", seed=100))
    names = list(layer_schemes(model))
    for i, name in enumerate(names):
        m = model.get_submodule(name)
        if isinstance(m, ZipConv2d):
            assert m.seed == 100 + i
    torch.manual_seed(3)
    a = convert(fresh_resnet20(), QuantConfig("zipml"))  # seed=None: drawn, so reproducible
    torch.manual_seed(3)
    b = convert(fresh_resnet20(), QuantConfig("zipml"))
    assert a.layer1[0].conv1.seed == b.layer1[0].conv1.seed


def test_overrides_by_name_pattern_and_predicate_apply_in_order():
    config = QuantConfig("zipml", weight_bits=2, seed=0, overrides=[
        ("layer3.*", {"weight_bits": 4}),
        (lambda name, m: isinstance(m, nn.Conv2d) and m.stride == (2, 2), {"scheme": "bwn"}),
        ("conv1", {"scheme": "zipml", "weight_bits": 8}),          # re-enables the first layer
        ("fc", QuantConfig("zipml", weight_bits=3, granularity="channel", seed=9)),
    ])
    model = convert(fresh_resnet20(), config)
    assert model.layer1[0].conv1.weight_bits == 2
    assert model.layer3[1].conv1.weight_bits == 4
    assert type(model.layer2[0].conv1) is BWNConv2d and type(model.layer3[0].conv1) is BWNConv2d
    assert model.conv1.weight_bits == 8
    assert type(model.fc) is ZipLinear and model.fc.weight_bits == 3 and model.fc.granularity == "channel"
    assert model.fc.seed == 9 + 19


def test_convert_round_trip_to_fp32_restores_the_plain_model():
    model = fresh_resnet20()
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    reference = model(x)
    convert(model, QuantConfig("zipml", weight_bits=1, seed=0, skip_first_last=False))
    assert not torch.equal(model(x), reference)
    convert(model, QuantConfig("fp32"))
    assert all(type(m) in (nn.Conv2d, nn.Linear) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    assert torch.equal(model(x), reference)


def test_convert_a_single_layer_and_leave_foreign_subclasses_alone():
    conv = nn.Conv2d(3, 4, 3)
    new = convert(conv, QuantConfig("zipml", seed=0, skip_first_last=False))
    assert type(new) is ZipConv2d and new.weight is conv.weight
    mha = nn.MultiheadAttention(8, 2)
    convert(mha, QuantConfig("zipml", seed=0, skip_first_last=False))
    assert type(mha.out_proj) is nn.modules.linear.NonDynamicallyQuantizableLinear


def test_convert_errors_name_the_layer_and_the_remedy():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.Conv2d(4, 4, 3, groups=2), nn.Conv2d(4, 4, 1))
    with pytest.raises(ValueError, match="layer '1' cannot take scheme 'xnor'.*groups must be 1.*override"):
        convert(model, QuantConfig("xnor"))
    convert(model, QuantConfig("xnor", overrides=[("1", {"scheme": "bwn"})]))
    assert type(model[1]) is BWNConv2d
    with pytest.raises(ValueError, match="scheme must be one of"):
        QuantConfig("int8")
    with pytest.raises(ValueError, match="unknown fields \\['bits'\\]"):
        QuantConfig("zipml", overrides=[("fc", {"bits": 4})])
    with pytest.raises(TypeError, match="config must be a QuantConfig"):
        convert(model, {"scheme": "zipml"})
    lazy = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.LazyLinear(2))
    with pytest.raises(ValueError, match="layer '2' is lazy"):
        convert(lazy, QuantConfig("zipml"))


def test_plain_checkpoint_loads_into_a_converted_model_and_back():
    plain = fresh_resnet20()
    state = plain.state_dict()
    quantized = convert(fresh_resnet20(), QuantConfig("zipml", seed=0))
    quantized.load_state_dict(state, strict=True)
    back = resnet20()
    back.load_state_dict(quantized.state_dict(), strict=True)
    assert all(torch.equal(back.state_dict()[k], v) for k, v in state.items())


def test_convert_torchvision_resnet18():
    tv = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = tv.models.resnet18(num_classes=10)
    keys = list(model.state_dict())
    convert(model, QuantConfig("zipml", weight_bits=2, weight_levels="optimal", granularity="channel", seed=0))
    schemes = layer_schemes(model)
    assert len(schemes) == 21 and schemes["conv1"] == "fp32" and schemes["fc"] == "fp32"
    assert schemes["layer2.0.downsample.0"] == "zipml" and type(model.layer4[1].conv2) is ZipConv2d
    assert list(model.state_dict()) == keys
    out = model(torch.randn(2, 3, 32, 32))
    out.sum().backward()
    assert out.shape == (2, 10) and model.layer4[1].conv2.weight.grad is not None
    convert(model, QuantConfig("xnor"))
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
