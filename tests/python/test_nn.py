"""ZipConv2d / ZipLinear (torch_zipml.nn) and the XNOR-Net baselines (torch_zipml.xnor).

The quantized layers are checked against the operators they are defined by (the semantics the C++
twin must reproduce), the baselines against slow loop references and closed-form gradients."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import torch_zipml as tz
from torch_zipml.nn import (EVAL_STEP, ZipConv2d, ZipLinear, calibrate_batchnorm, from_layer, rng_state,
                            set_rng_state)
from torch_zipml.xnor import BWNConv2d, BWNLinear, XNORConv2d, XNORLinear, binarize, binary_weight


def conv_pair(**quant):
    torch.manual_seed(0)
    plain = nn.Conv2d(3, 8, 3, padding=1)
    zip_conv = from_layer(ZipConv2d, plain, **{"seed": 11, **quant})
    return plain, zip_conv


# ---- construction and state_dict ------------------------------------------------------------------

@pytest.mark.parametrize("kwargs", [
    dict(),
    dict(stride=2, padding=2, dilation=2),
    dict(groups=4, bias=False),
    dict(padding="same", padding_mode="reflect"),
])
def test_zipconv2d_shapes_match_conv2d(kwargs):
    x = torch.randn(2, 8, 11, 13)
    plain = nn.Conv2d(8, 12, 3, **kwargs)
    zc = ZipConv2d(8, 12, 3, **kwargs, weight_bits=4, seed=1)
    assert zc(x).shape == plain(x).shape
    assert isinstance(zc, nn.Conv2d)


def test_ziplinear_shapes_match_linear():
    x = torch.randn(2, 5, 16)
    assert ZipLinear(16, 7, seed=1)(x).shape == nn.Linear(16, 7)(x).shape
    assert ZipLinear(16, 7, bias=False, seed=1).bias is None


@pytest.mark.parametrize("make_plain, make_zip", [
    (lambda: nn.Conv2d(3, 8, 3), lambda: ZipConv2d(3, 8, 3, weight_levels=torch.tensor([-0.5, 0.5]), seed=0)),
    (lambda: nn.Linear(6, 4), lambda: ZipLinear(6, 4, weight_bits=3, grad_bits=8, act_bits=8, seed=0)),
    (lambda: nn.Conv2d(3, 8, 3), lambda: BWNConv2d(3, 8, 3)),
    (lambda: nn.Linear(6, 4), lambda: XNORLinear(6, 4)),
])
def test_state_dict_interchangeable_both_ways(make_plain, make_zip):
    plain, quant = make_plain(), make_zip()
    quant(torch.randn(2, 3, 5, 5) if isinstance(plain, nn.Conv2d) else torch.randn(2, 6))  # advances a step
    assert list(quant.state_dict()) == list(plain.state_dict())
    quant.load_state_dict(plain.state_dict(), strict=True)
    assert torch.equal(quant.weight, plain.weight)
    fresh = make_plain()
    fresh.load_state_dict(quant.state_dict(), strict=True)
    assert torch.equal(fresh.weight, plain.weight) and torch.equal(fresh.bias, plain.bias)


def test_rejects_bad_options_naming_the_argument():
    with pytest.raises(ValueError, match="weight_bits must be an integer from 1 to 8"):
        ZipConv2d(3, 8, 3, weight_bits=9)
    with pytest.raises(ValueError, match="rounding must be one of 'stochastic', 'nearest'"):
        ZipConv2d(3, 8, 3, rounding="up")
    with pytest.raises(ValueError, match="weight_levels must be 'uniform', 'optimal' or a tensor"):
        ZipLinear(3, 8, weight_levels="best")
    with pytest.raises(ValueError, match="granularity must be one of 'tensor', 'channel'"):
        ZipLinear(3, 8, granularity="row")
    with pytest.raises(ValueError, match="grad_bits must be an integer from 1 to 8 or None"):
        ZipLinear(3, 8, grad_bits=0)
    with pytest.raises(ValueError, match="seed must be an integer"):
        ZipLinear(3, 8, seed=-1)
    with pytest.raises(ValueError, match="eval_rounding must be one of 'sample', 'nearest'"):
        ZipLinear(3, 8, eval_rounding="mean")
    with pytest.raises(ValueError, match="1 to 2\\*\\*weight_bits = 4 levels"):
        ZipLinear(3, 8, weight_bits=2, weight_levels=torch.linspace(-1, 1, 5))


# ---- exact forward semantics (what the C++ twin reproduces) -------------------------------------------

@pytest.mark.parametrize("quant", [
    dict(weight_bits=2),
    dict(weight_bits=1, granularity="channel"),
    dict(weight_bits=4, weight_levels="optimal", granularity="channel"),
    dict(weight_bits=3, rounding="nearest"),
    dict(weight_bits=2, weight_levels=torch.tensor([-1.0, -0.2, 0.3, 1.0])),
])
def test_zipconv2d_forward_is_the_documented_op_sequence(quant):
    plain, zc = conv_pair(**quant)
    x = torch.randn(2, 3, 9, 9)
    levels = quant.get("weight_levels", "uniform")
    for step in range(3):
        w_q = tz.fake_quantize(plain.weight, quant["weight_bits"], rounding=quant.get("rounding", "stochastic"),
                               levels=levels, granularity=quant.get("granularity", "tensor"), seed=11,
                               offset=4 * step)
        assert torch.equal(zc(x), F.conv2d(x, w_q, plain.bias, padding=1))
        assert zc.step == step + 1


def test_ziplinear_act_bits_quantizes_the_input_on_stream_2():
    torch.manual_seed(0)
    lin = ZipLinear(16, 4, weight_bits=3, act_bits=4, seed=5)
    x = torch.randn(6, 16)
    lin(x)
    x_q = tz.fake_quantize(x, 4, seed=5, offset=4 * 1 + 2)
    w_q = tz.fake_quantize(lin.weight, 3, seed=5, offset=4 * 1 + 0)
    assert torch.equal(lin(x), F.linear(x_q, w_q, lin.bias))


def test_eval_uses_a_fixed_draw_or_nearest_and_keeps_the_step():
    plain, zc = conv_pair(weight_bits=2)
    x = torch.randn(2, 3, 9, 9)
    zc(x)
    zc.eval()
    fixed = tz.fake_quantize(plain.weight, 2, seed=11, offset=4 * EVAL_STEP)
    assert torch.equal(zc(x), F.conv2d(x, fixed, plain.bias, padding=1))
    assert torch.equal(zc(x), zc(x)) and zc.step == 1
    zc.eval_rounding = "nearest"
    nearest = tz.fake_quantize(plain.weight, 2, rounding="nearest")
    assert torch.equal(zc(x), F.conv2d(x, nearest, plain.bias, padding=1))


def test_optimal_levels_are_the_values_the_weights_take():
    _, zc = conv_pair(weight_bits=2, weight_levels="optimal")
    w = zc.weight.detach()
    w_q = zc.quantize_operands(torch.zeros(1))[1]
    levels = tz.optimal_levels(w, 4) * w.abs().max()
    assert w_q.unique().numel() <= 4 and torch.isin(w_q.unique(), levels).all()


def test_calibrate_batchnorm_fits_the_eval_network_and_leaves_the_model_alone():
    torch.manual_seed(0)
    model = nn.Sequential(ZipConv2d(3, 4, 3, weight_bits=2, seed=1), nn.BatchNorm2d(4))
    for _ in range(3):
        model(torch.randn(8, 3, 6, 6))  # training-mode running statistics over three weight draws
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batches = [torch.randn(8, 3, 6, 6) for _ in range(4)]
    calibrated = calibrate_batchnorm(model, batches)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items()) and model.training
    assert model[0].step == 3 and calibrated[0].step == 3 and not calibrated.training
    # The eval network's convolution outputs, batch by batch: the statistics are their equal-weight
    # average (batch means; unbiased batch variances).
    w = tz.fake_quantize(model[0].weight.detach(), 2, seed=1, offset=4 * EVAL_STEP)
    outs = [F.conv2d(x, w, model[0].bias.detach()) for x in batches]
    mean = torch.stack([o.mean((0, 2, 3)) for o in outs]).mean(0)
    var = torch.stack([o.var((0, 2, 3), unbiased=True) for o in outs]).mean(0)
    bn = calibrated[1]
    assert torch.allclose(bn.running_mean, mean, atol=1e-5) and torch.allclose(bn.running_var, var, atol=1e-4)
    assert bn.momentum == 0.1 and int(bn.num_batches_tracked) == 4
    with pytest.raises(ValueError, match="no batches"):
        calibrate_batchnorm(model, [])


# ---- gradients -----------------------------------------------------------------------------------

def test_ste_gradient_equals_the_surrogate_gradient():
    plain, zc = conv_pair(weight_bits=2)
    x = torch.randn(2, 3, 9, 9, requires_grad=True)
    c = torch.randn(2, 8, 9, 9)
    (zc(x) * c).sum().backward()
    # The surrogate: the same convolution with the quantized weight as a leaf.
    w_q = tz.fake_quantize(plain.weight.detach(), 2, seed=11, offset=0).requires_grad_()
    x2 = x.detach().clone().requires_grad_()
    (F.conv2d(x2, w_q, plain.bias, padding=1) * c).sum().backward()
    assert torch.equal(zc.weight.grad, w_q.grad)
    assert torch.equal(x.grad, x2.grad)


def test_ste_gradient_is_masked_where_a_narrow_codebook_clips():
    codebook = torch.tensor([-0.5, -0.1, 0.1, 0.5])
    plain, zc = conv_pair(weight_bits=2, weight_levels=codebook)
    x = torch.randn(2, 3, 9, 9)
    c = torch.randn(2, 8, 9, 9)
    (zc(x) * c).sum().backward()
    w_q = tz.fake_quantize(plain.weight.detach(), 2, levels=codebook, seed=11).requires_grad_()
    (F.conv2d(x, w_q, plain.bias, padding=1) * c).sum().backward()
    inside = (plain.weight.detach().abs() / plain.weight.detach().abs().max()) <= 0.5
    assert 0 < inside.sum() < inside.numel()
    assert torch.equal(zc.weight.grad, w_q.grad * inside)


def _z_scores(mean, exact, per_sample_var, n):
    """|mean - exact| in standard errors; elements with no variance (on a level) must be exact up to
    float32 summation error."""
    err = (mean - exact).abs()
    se = (per_sample_var / n).sqrt()
    tol = 1e-5 * exact.abs().max()
    return torch.where(se > 0, err / se.clamp_min(1e-30), torch.where(err > tol, math.inf, 0.0))


def test_grad_bits_is_unbiased_and_a_biased_quantizer_fails_the_same_test():
    """W.grad = Q(G) with G = c^T x fixed (the loss is linear in the output, so G does not depend
    on the weight draw). Over n steps (fresh Philox streams) the mean of Q(G) must be within 5
    standard errors of G, element by element, with the variance of stochastic rounding,
    (u - G)(G - l) for the levels l <= G <= u: P(|z| > 5) = 6e-7 per element."""
    torch.manual_seed(0)
    bits, n = 2, 400
    lin = ZipLinear(16, 8, weight_bits=8, grad_bits=bits, seed=3)
    x, c = torch.randn(4, 16), torch.randn(4, 8)
    exact = c.t() @ x
    total = torch.zeros_like(exact)
    for _ in range(n):
        lin.weight.grad = None
        (lin(x) * c).sum().backward()
        assert lin.weight.grad.unique().numel() <= 2**bits  # each draw is on the grid
        total += lin.weight.grad
    mean = total / n
    s = exact.abs().max()
    step = 2 * s / (2**bits - 1)
    lower = -s + torch.floor((exact + s) / step) * step
    var = ((lower + step - exact) * (exact - lower)).clamp_min(0)
    assert _z_scores(mean, exact, var, n).max() < 5
    # The same statistic on a biased quantizer (nearest rounding, the same grid) must fail.
    biased = tz.fake_quantize(exact, bits, rounding="nearest")
    assert _z_scores(biased, exact, var, n).max() > 5


# ---- reproducibility -----------------------------------------------------------------------------

def test_a_seed_makes_runs_reproducible_and_rng_state_restores_the_stream():
    def run(seed, steps=3):
        torch.manual_seed(0)
        model = nn.Sequential(ZipConv2d(3, 4, 3, seed=seed, weight_bits=2),
                              ZipConv2d(4, 2, 3, seed=seed + 1, weight_bits=2, grad_bits=4))
        x = torch.randn(2, 3, 8, 8)
        outs = []
        for _ in range(steps):
            y = model(x)
            y.sum().backward()
            outs.append(y.detach())
        return model, outs

    model_a, a = run(7)
    _, b = run(7)
    _, c = run(8)
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert not torch.equal(a[-1], c[-1])
    assert rng_state(model_a) == {"0": {"seed": 7, "step": 3}, "1": {"seed": 8, "step": 3}}
    model_d, _ = run(7, steps=1)
    set_rng_state(model_d, rng_state(model_a))
    model_d.load_state_dict(model_a.state_dict())
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(model_d(x), model_a(x))
    with pytest.raises(ValueError, match="missing: \\['1'\\]"):
        set_rng_state(model_d, {"0": {"seed": 1, "step": 0}})


def test_seed_none_draws_from_torch_default_generator():
    torch.manual_seed(123)
    a = ZipConv2d(3, 4, 3)
    torch.manual_seed(123)
    b = ZipConv2d(3, 4, 3)
    assert a.seed == b.seed and torch.equal(a.weight, b.weight)


def test_torch_compile_matches_eager_and_does_not_recompile_per_step():
    from torch._dynamo.testing import CompileCounterWithBackend

    def make():
        torch.manual_seed(0)
        return nn.Sequential(ZipConv2d(3, 4, 3, padding=1, seed=1, weight_levels="optimal", grad_bits=8),
                             nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), ZipLinear(64, 3, seed=2))

    eager, compiled = make(), make()
    counter = CompileCounterWithBackend("aot_eager")
    torch._dynamo.reset()
    fn = torch.compile(compiled, backend=counter)
    x = torch.randn(2, 3, 4, 4)
    frames = None
    for step in range(3):
        y_e, y_c = eager(x), fn(x)
        assert torch.equal(y_e, y_c)
        y_e.square().sum().backward()
        y_c.square().sum().backward()
        assert torch.equal(eager[0].weight.grad, compiled[0].weight.grad)
        if step == 1:
            frames = counter.frame_count
    assert frames > 0 and counter.frame_count == frames  # no recompilation as the step advances
    assert compiled[0].step == 3 and compiled[4].step == 3
    torch._dynamo.reset()


# ---- XNOR-Net baselines against slow references ----------------------------------------------------

def test_binarize_maps_zero_to_minus_one_with_clipped_ste():
    v = torch.tensor([-2.0, -1.0, -0.3, 0.0, 0.4, 1.0, 1.5], requires_grad=True)
    b = binarize(v)
    assert b.tolist() == [-1, -1, -1, -1, 1, 1, 1]
    b.backward(torch.ones_like(v))
    assert v.grad.tolist() == [0, 1, 1, 1, 1, 1, 0]


def _slow_binary_weight(w):
    out = torch.empty_like(w)
    for c in range(w.shape[0]):
        flat = w[c].reshape(-1).tolist()
        alpha = sum(abs(v) for v in flat) / len(flat)
        out[c] = torch.tensor([alpha if v > 0 else -alpha for v in flat]).reshape(w[c].shape)
    return out


def _slow_conv(x, w, stride, padding):
    """Direct convolution loops (no bias), float64."""
    n, c, h, wd = x.shape
    o, _, kh, kw = w.shape
    xp = F.pad(x, (padding, padding, padding, padding))
    ho, wo = (h + 2 * padding - kh) // stride + 1, (wd + 2 * padding - kw) // stride + 1
    y = torch.zeros(n, o, ho, wo, dtype=torch.float64)
    for b in range(n):
        for k in range(o):
            for i in range(ho):
                for j in range(wo):
                    patch = xp[b, :, i * stride:i * stride + kh, j * stride:j * stride + kw]
                    y[b, k, i, j] = (patch.double() * w[k].double()).sum()
    return y


def test_bwn_conv_matches_slow_reference():
    torch.manual_seed(0)
    layer = BWNConv2d(3, 4, 3, stride=2, padding=1)
    x = torch.randn(2, 3, 7, 7)
    ref = _slow_conv(x, _slow_binary_weight(layer.weight.detach()), 2, 1) + layer.bias.detach().view(1, -1, 1, 1)
    assert torch.allclose(layer(x).double(), ref, atol=1e-5)


def test_xnor_conv_matches_slow_reference():
    torch.manual_seed(0)
    layer = XNORConv2d(3, 4, 3, stride=1, padding=1)
    x = torch.relu(torch.randn(2, 3, 6, 6))  # post-ReLU: exact zeros binarize to -1
    xb = torch.where(x > 0, 1.0, -1.0)
    # K by explicit patch means of A = mean_c |x| (zero padding counts as 0).
    a = F.pad(x.abs().mean(1), (1, 1, 1, 1))
    k = torch.tensor([[[a[b, i:i + 3, j:j + 3].double().mean() for j in range(6)] for i in range(6)]
                      for b in range(2)])
    ref = _slow_conv(xb, _slow_binary_weight(layer.weight.detach()), 1, 1) * k.unsqueeze(1)
    ref = ref + layer.bias.detach().view(1, -1, 1, 1)
    assert torch.allclose(layer(x).double(), ref, atol=1e-5)


def test_xnor_linear_matches_slow_reference():
    torch.manual_seed(0)
    layer = XNORLinear(5, 3)
    x = torch.randn(4, 5)
    wb = _slow_binary_weight(layer.weight.detach())
    ref = torch.tensor([[sum((1.0 if x[b, i] > 0 else -1.0) * wb[o, i].item() for i in range(5))
                         * x[b].abs().mean().item() + layer.bias[o].item() for o in range(3)] for b in range(4)])
    assert torch.allclose(layer(x), ref, atol=1e-5)


def test_bwn_weight_gradient_matches_closed_form():
    """dL/dW_j = alpha g_j 1[|W_j| <= clip] + sign(W_j)/n sum_i g_i sign(W_i), per output channel."""
    torch.manual_seed(0)
    layer = BWNLinear(6, 3, bias=False, clip=0.3)
    x, c = torch.randn(5, 6), torch.randn(5, 3)
    (layer(x) * c).sum().backward()
    w = layer.weight.detach()
    g = c.t() @ x  # dL/dW_b
    sign = torch.where(w > 0, 1.0, -1.0)
    alpha = w.abs().mean(1, keepdim=True)
    expected = alpha * g * (w.abs() <= 0.3) + sign / w.shape[1] * (g * sign).sum(1, keepdim=True)
    assert (w.abs() > 0.3).any() and (w.abs() <= 0.3).any()
    assert torch.allclose(layer.weight.grad, expected, atol=1e-6)


def test_xnor_linear_input_gradient_matches_closed_form():
    """out_j = K sum_i s_i Wb_ji + b_j, s = binarize(x), K = mean|x|:
    dL/dx_i = K 1[|x_i| <= 1] sum_j g_j Wb_ji + sign(x_i)/n sum_j g_j sum_i' s_i' Wb_ji'."""
    torch.manual_seed(0)
    layer = XNORLinear(6, 3)
    x = (torch.randn(4, 6) * 1.2).requires_grad_()
    c = torch.randn(4, 3)
    (layer(x) * c).sum().backward()
    xd = x.detach()
    wb = binary_weight(layer.weight.detach())
    s = torch.where(xd > 0, 1.0, -1.0)
    k = xd.abs().mean(1, keepdim=True)
    expected = k * (xd.abs() <= 1) * (c @ wb) + s / 6 * ((c * (s @ wb.t())).sum(1, keepdim=True))
    assert torch.allclose(x.grad, expected, atol=1e-5)


def test_xnor_conv_rejects_groups():
    with pytest.raises(ValueError, match="groups must be 1"):
        XNORConv2d(4, 4, 3, groups=2)
