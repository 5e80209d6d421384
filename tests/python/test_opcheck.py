"""torch.library.opcheck on every zipml operator (schema, fake kernels, autograd registration,
AOT dispatch), and torch.compile(fullgraph=True) over fake_quantize."""

import pytest
import torch

import torch_zipml as z

ops = torch.ops.zipml


def x_(shape=(4, 9), requires_grad=False, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    return torch.randn(shape, generator=g, dtype=dtype).requires_grad_(requires_grad)


def samples():
    book = torch.tensor([-0.8, -0.1, 0.3, 0.9])
    q = z.quantize(x_(), 3, granularity="channel", seed=1)
    d = z.double_sample(x_(), 2, seed=1)
    codes = z.quantize(x_((37,)), 3, seed=2).codes
    return [
        (ops.fake_quantize.default, (x_(requires_grad=True), 2), dict(seed=1)),
        (ops.fake_quantize.default, (x_(requires_grad=True), 4),
         dict(rounding="nearest", granularity="channel", seed=1)),
        (ops.fake_quantize.default, (x_(requires_grad=True), 2),
         dict(levels="codebook", codebook=book, granularity="auto", scale=torch.tensor([1.5]), seed=3)),
        (ops.fake_quantize.default, (x_(requires_grad=True, dtype=torch.float64), 3),
         dict(levels="optimal", granularity="row", seed=2)),
        (ops.fake_quantize.out, (x_(), 2), dict(seed=1, out=torch.empty(4, 9))),
        (ops.quantize.default, (x_(), 3), dict(granularity="row", seed=5)),
        (ops.quantize.default, (x_(), 4), dict(levels="optimal", seed=5)),
        (ops.dequantize.default, (q.codes, q.scale.requires_grad_(), q.levels.requires_grad_()), {}),
        (ops.quantize_grad.default, (x_(requires_grad=True), 4), dict(seed=7)),
        (ops.double_sample.default, (x_(), 2), dict(seed=3)),
        (ops.double_sample_decode.default, (d.index, d.up, d.scale, d.levels), dict(dtype=torch.float16)),
        (ops.optimal_levels.default, (x_((2000,)), 8), dict(candidates=256)),
        (ops.optimal_levels.default, (x_((20,)), 4), {}),
        (ops.pack.default, (codes, 3), {}),
        (ops.unpack.default, (z.pack(codes, 3), 3, 37), {}),
        # the computed scale: a CPU kernel, and a composite that must also trace with symbolic shapes
        (ops._absmax.default, (x_(), 4), {}),
        (ops._absmax.default, (x_(dtype=torch.bfloat16), 1), {}),
    ]


@pytest.mark.parametrize("op, args, kwargs", samples(), ids=lambda v: str(v) if not isinstance(v, (tuple, dict)) else "")
def test_opcheck(op, args, kwargs):
    torch.library.opcheck(op, args, kwargs)


def test_compile_fullgraph_matches_eager():
    w = x_((16, 8), requires_grad=True)

    def f(inp, weight):
        wq = z.fake_quantize(weight, 2, seed=11, granularity="channel")
        return torch.nn.functional.linear(inp, wq).relu().sum()

    inp = x_((5, 8))
    eager = f(inp, w)
    (g_eager,) = torch.autograd.grad(eager, w)
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    out = compiled(inp, w)
    (g_comp,) = torch.autograd.grad(out, w)
    assert torch.equal(out, eager) and torch.equal(g_comp, g_eager)


def test_compile_inductor_fullgraph():
    def f(weight):
        q = z.fake_quantize(weight, 4, seed=3)
        return q.square(), q.square().sum()

    w = x_((32, 32))
    (squares, total), (squares_eager, total_eager) = torch.compile(f, fullgraph=True)(w), f(w)
    assert torch.equal(squares, squares_eager)  # elementwise: the same bits
    torch.testing.assert_close(total, total_eager)  # inductor may sum in another order
