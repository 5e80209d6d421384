"""The quantization operators against slow references (tests/python/reference.py) and the theory
of ZipML §2 and §4: exact bits for a seed, unbiasedness, variance, double sampling."""

import math

import numpy as np
import pytest
import torch

import reference as ref
import torch_zipml as z
from conftest import DTYPES
from stats import assert_unbiased, assert_variance

SEED = 20240607


def sample_input(shape=(6, 37), dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g).to(dtype)


def random_codebook(k, seed=1):
    g = torch.Generator().manual_seed(seed)
    pts = torch.rand(k, generator=g) * 2 - 1
    pts = torch.unique(pts)
    while pts.numel() < k:  # vanishingly rare collisions
        pts = torch.unique(torch.cat([pts, torch.rand(k - pts.numel(), generator=g) * 2 - 1]))
    return pts.sort().values


# ---- exact agreement with the reference --------------------------------------------------------

@pytest.mark.parametrize("bits", [1, 2, 3, 4, 5, 8])
@pytest.mark.parametrize("rounding", ["stochastic", "nearest"])
@pytest.mark.parametrize("granularity", ["tensor", "channel", "row"])
def test_fake_quantize_matches_reference_uniform(bits, rounding, granularity):
    x = sample_input((5, 3, 11))
    got = z.fake_quantize(x, bits, rounding=rounding, granularity=granularity, seed=SEED, offset=3)
    want = ref.fake_quantize(x, bits, rounding=rounding, granularity=granularity, seed=SEED, offset=3)
    assert torch.equal(got, want)


@pytest.mark.parametrize("k", [1, 2, 3, 16, 17, 256])
@pytest.mark.parametrize("rounding", ["stochastic", "nearest"])
def test_fake_quantize_matches_reference_codebook(k, rounding):
    x = sample_input((4, 50))
    book = random_codebook(k)
    got = z.fake_quantize(x, 8, levels=book, rounding=rounding, seed=SEED)
    want = ref.fake_quantize(x, 8, levels=book.numpy(), rounding=rounding, seed=SEED)
    assert torch.equal(got, want)


@pytest.mark.parametrize("dtype", DTYPES)
def test_dtypes_compute_in_float32(dtype):
    x = sample_input((3, 41), dtype)
    got = z.fake_quantize(x, 3, seed=SEED, granularity="channel")
    assert got.dtype == dtype
    assert torch.equal(got, ref.fake_quantize(x, 3, seed=SEED, granularity="channel"))


def test_optimal_levels_path_matches_reference():
    x = sample_input((8, 300))
    q = z.quantize(x, 3, levels="optimal", seed=SEED)
    codes, _, _ = ref.quantize_codes(x, 3, levels=q.levels.numpy(), scale=q.scale.numpy(), seed=SEED)
    assert torch.equal(q.codes.reshape(-1).long(), torch.from_numpy(codes))
    assert torch.equal(z.fake_quantize(x, 3, levels="optimal", seed=SEED), q.dequantize())


def test_given_scale_matches_reference():
    x = sample_input((4, 9))
    s = torch.tensor([0.5, 1.0, 2.0, 0.25]).reshape(4, 1)
    got = z.fake_quantize(x, 4, granularity=s, seed=SEED)
    assert torch.equal(got, ref.fake_quantize(x, 4, scale=s.numpy(), seed=SEED))


def test_quantize_dequantize_equals_fake_quantize():
    x = sample_input((7, 19))
    for levels in ["uniform", "optimal", random_codebook(5)]:
        q = z.quantize(x, 4, levels=levels, granularity="row", seed=SEED, offset=9)
        fq = z.fake_quantize(x, 4, levels=levels, granularity="row", seed=SEED, offset=9)
        assert q.codes.dtype == torch.uint8 and q.codes.shape == x.shape
        assert torch.equal(q.dequantize(), fq)
        assert torch.equal(z.dequantize(q.codes, q.scale, q.levels), fq)


def test_uniform_levels_and_scale_shapes():
    x = sample_input((3, 4, 5))
    assert torch.equal(z.quantize(x, 2).levels, torch.tensor([-1.0, -1 / 3, 1 / 3, 1.0]))
    assert z.quantize(x, 2, granularity="tensor").scale.shape == (1, 1, 1)
    assert z.quantize(x, 2, granularity="channel").scale.shape == (3, 1, 1)
    assert z.quantize(x, 2, granularity="row").scale.shape == (3, 4, 1)
    assert torch.equal(z.quantize(x, 2, granularity="channel").scale.reshape(-1), x.abs().amax(dim=(1, 2)))


def test_nearest_is_the_argmin():
    x = sample_input((1000,))
    for levels in [None, random_codebook(11)]:
        lv = "uniform" if levels is None else levels
        q = z.quantize(x, 4, levels=lv, rounding="nearest")
        v = (x / q.scale).clamp(q.levels[0], q.levels[-1])
        dist = (v[:, None] - q.levels[None, :]).abs()
        chosen = dist.gather(1, q.codes.long()[:, None]).squeeze(1)
        assert torch.all(chosen <= dist.min(dim=1).values + 1e-6)


def test_codes_round_trip_through_pack():
    x = sample_input((33, 7))
    for bits in range(1, 9):
        q = z.quantize(x, bits, seed=bits)
        packed = q.pack()
        assert packed.numel() == math.ceil(x.numel() * bits / 8) == q.nbytes - 4
        assert torch.equal(z.unpack(packed, bits, x.numel()).reshape(x.shape), q.codes)


def test_same_seed_same_bits_any_thread_count():
    x = sample_input((64, 1000))
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = z.fake_quantize(x, 3, seed=SEED)
        torch.set_num_threads(2)
        two = z.fake_quantize(x, 3, seed=SEED)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one, two)


def test_seed_none_follows_torch_manual_seed():
    x = sample_input((100,))
    torch.manual_seed(5)
    a = z.fake_quantize(x, 2)
    torch.manual_seed(5)
    b = z.fake_quantize(x, 2)
    c = z.fake_quantize(x, 2)
    assert torch.equal(a, b) and not torch.equal(b, c)


def test_non_contiguous_input_uses_logical_order():
    x = sample_input((20, 30))
    t = x.t()
    assert not t.is_contiguous()
    assert torch.equal(z.fake_quantize(t, 4, seed=SEED), z.fake_quantize(t.contiguous(), 4, seed=SEED))
    out = torch.empty(30, 20).t()
    z.fake_quantize(x, 4, seed=SEED, out=out)
    assert torch.equal(out, z.fake_quantize(x, 4, seed=SEED))


def test_out_variant_writes_in_place():
    x = sample_input((10, 10))
    out = torch.empty_like(x)
    ptr = out.data_ptr()
    res = z.fake_quantize(x, 2, seed=SEED, out=out)
    assert res.data_ptr() == ptr and torch.equal(out, z.fake_quantize(x, 2, seed=SEED))


@pytest.mark.parametrize("shape", [(0,), (0, 5), (5, 0), ()])
def test_empty_and_scalar_tensors(shape):
    x = torch.randn(shape)
    for g in ["tensor", "channel", "row"]:
        assert z.fake_quantize(x, 2, seed=1, granularity=g).shape == x.shape
        q = z.quantize(x, 2, seed=1, granularity=g)
        assert q.codes.shape == x.shape and torch.equal(q.dequantize(), z.fake_quantize(x, 2, seed=1, granularity=g))
        d = z.double_sample(x, 2, seed=1, granularity=g)
        assert d.first().shape == x.shape


def test_zero_tensor_quantizes_to_zero():
    x = torch.zeros(3, 4)
    for levels in ["uniform", "optimal"]:
        assert torch.equal(z.fake_quantize(x, 2, levels=levels, seed=1), x)


# ---- non-finite values --------------------------------------------------------------------------

def test_non_finite_inputs_propagate_as_nan_in_fake_quantize():
    x = sample_input((4, 8))
    x[1, 2] = float("nan")
    x[2, 3] = float("inf")
    # With a given finite scale only the non-finite elements become NaN.
    y = z.fake_quantize(x, 4, granularity=torch.tensor(3.0), seed=1)
    assert torch.isnan(y[1, 2]) and torch.isnan(y[2, 3]) and torch.isnan(y).sum() == 2
    # A computed max-abs scale is itself NaN/Inf: the whole group becomes NaN, the others survive.
    y = z.fake_quantize(x, 4, granularity="row", seed=1)
    assert torch.isnan(y[1]).all() and torch.isnan(y[2]).all()
    assert torch.isfinite(y[0]).all() and torch.isfinite(y[3]).all()


def test_invalid_given_scale_gives_nan_group():
    x = sample_input((3, 5))
    s = torch.tensor([[1.0], [-1.0], [float("nan")]])
    y = z.fake_quantize(x, 4, granularity=s, seed=1)
    assert torch.isfinite(y[0]).all() and torch.isnan(y[1:]).all()


def test_non_finite_inputs_raise_in_quantize_and_double_sample():
    x = sample_input((4, 8))
    x[0, 0] = float("inf")
    with pytest.raises(ValueError, match="NaN or Inf"):
        z.quantize(x, 4)
    with pytest.raises(ValueError, match="NaN or Inf"):
        z.double_sample(x, 4, granularity=torch.tensor(1.0))
    with pytest.raises(ValueError, match="NaN or Inf"):
        z.optimal_levels(x, 4)


# ---- theory: unbiasedness and variance (ZipML §2) ----------------------------------------------

DRAWS = 4000


def draws(x, bits, *, levels="uniform", round_fn=None):
    """DRAWS independent stochastic quantizations of the row vector x (one call: each row of the
    repeated tensor has its own Philox words), with the scale fixed to 1."""
    rep = x.expand(DRAWS, -1).contiguous()
    scale = torch.ones(DRAWS, 1)
    if round_fn is not None:
        return round_fn(rep)
    return z.fake_quantize(rep, bits, levels=levels, granularity=scale, seed=SEED)


def rounding_variance(x, levels):
    j = (torch.searchsorted(levels, x, right=True) - 1).clamp(0, levels.numel() - 2)
    return (levels[j + 1] - x) * (x - levels[j])


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_stochastic_rounding_is_unbiased_with_the_predicted_variance(bits):
    x = sample_input((300,)).clamp(-3, 3) / 3
    samples = draws(x, bits)
    var = rounding_variance(x, z.quantize(x, bits).levels)
    assert_unbiased(samples, x, var)
    assert_variance(samples, var)


def test_optimal_levels_rounding_is_unbiased():
    x = sample_input((200,)).clamp(-3, 3) / 3
    levels = z.optimal_levels(x, 8, scale=torch.tensor(1.0))
    samples = draws(x, 3, levels=levels)
    assert_unbiased(samples, x, rounding_variance(x, levels))


def test_unbiasedness_test_has_power():
    """A rounding whose round-up probability is off by 2% (or nearest rounding) must fail."""
    x = sample_input((300,)).clamp(-3, 3) / 3
    levels = z.quantize(x, 2).levels
    var = rounding_variance(x, levels)

    def skewed(rep):
        j = (torch.searchsorted(levels, rep, right=True) - 1).clamp(0, 2)
        frac = (rep - levels[j]) / (levels[j + 1] - levels[j])
        g = torch.Generator().manual_seed(1)
        up = torch.rand(rep.shape, generator=g) < (frac + 0.02).clamp(0, 1)
        return levels[j + up.long()]

    with pytest.raises(AssertionError):
        assert_unbiased(draws(x, 2, round_fn=skewed), x, var)
    nearest = lambda rep: z.fake_quantize(rep, 2, rounding="nearest", granularity=torch.ones(DRAWS, 1))
    with pytest.raises(AssertionError):
        assert_unbiased(draws(x, 2, round_fn=nearest), x, var)


# ---- double sampling (ZipML §3-4) ---------------------------------------------------------------

def test_double_sample_matches_reference_and_two_single_streams():
    x = sample_input((9, 31))
    for levels in ["uniform", random_codebook(6)]:
        d = z.double_sample(x, 3, levels=levels, granularity="channel", seed=SEED, offset=4)
        lv = None if isinstance(levels, str) else levels.numpy()
        index, up = ref.double_sample(x, 3, levels=lv, granularity="channel", seed=SEED, offset=4)
        assert torch.equal(d.index.reshape(-1).long(), torch.from_numpy(index))
        assert torch.equal(d.up.reshape(-1).long(), torch.from_numpy(up))
        first, second = d.decode()
        kw = dict(levels=levels, granularity="channel", seed=SEED)
        assert torch.equal(first, z.fake_quantize(x, 3, offset=4, **kw))
        assert torch.equal(second, z.fake_quantize(x, 3, offset=5, **kw))


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_double_sample_store_is_compact_and_decodes_exactly(bits):
    x = sample_input((10, 101))
    d = z.double_sample(x, bits, seed=SEED)
    k = 1 << bits
    index_bits = max(k - 2, 0).bit_length()
    assert d.index_bits == index_bits and int(d.index.max()) <= k - 2 and int(d.up.max()) <= 3
    n = x.numel()
    assert d.nbytes == math.ceil(n * index_bits / 8) + math.ceil(n * 2 / 8) + 4
    packed_index, packed_up = d.pack()
    unpacked_index = z.unpack(packed_index, index_bits, n) if index_bits else torch.zeros(n, dtype=torch.uint8)
    re = z.DoubleSampled(unpacked_index.reshape(x.shape), z.unpack(packed_up, 2, n).reshape(x.shape),
                         d.scale, d.levels, bits)
    assert torch.equal(re.first(), d.first()) and torch.equal(re.second(), d.second())


def test_double_samples_are_independent():
    x = sample_input((300,)).clamp(-3, 3) / 3
    rep = x.expand(DRAWS, -1).contiguous()
    d = z.double_sample(rep, 2, granularity=torch.ones(DRAWS, 1), seed=SEED)
    e1, e2 = (s.double() - x.double() for s in d.decode())
    var = rounding_variance(x, d.levels).double()
    keep = var > 0
    # Each product e1*e2 has mean 0 and variance var^2 if independent: z-score of the means.
    zs = (e1 * e2).mean(0)[keep] / (var[keep] / math.sqrt(DRAWS))
    from stats import assert_chi2
    assert_chi2(zs)
    assert_unbiased(d.first(), x, var)
    assert_unbiased(d.second(), x, var)


def test_double_sampled_gradient_is_unbiased_and_naive_is_biased():
    """g_DS = Q1(a) (Q2(a)^T w - b) is unbiased for a (a^T w - b); the naive Q(a) (Q(a)^T w - b)
    converges to a (a^T w - b) + D w with D = diag of the rounding variances (notes §3)."""
    n, draws_n = 12, 40000
    g = torch.Generator().manual_seed(3)
    a = (torch.rand(n, generator=g) * 2 - 1).double()
    w = torch.randn(n, generator=g).double()
    b = 0.3
    rep = a.float().expand(draws_n, -1).contiguous()
    ones = torch.ones(draws_n, 1)
    q1, q2 = (s.double() for s in z.double_sample(rep, 2, granularity=ones, seed=SEED).decode())
    exact = a * (a @ w - b)
    d = rounding_variance(a.float(), z.quantize(a.float(), 2).levels).double()
    g_ds = q1 * ((q2 @ w) - b)[:, None]
    g_naive = q1 * ((q1 @ w) - b)[:, None]
    var_ds = g_ds.var(0)
    var_naive = g_naive.var(0)
    assert_unbiased(g_ds, exact, var_ds)
    assert_unbiased(g_naive, exact + d * w, var_naive)
    with pytest.raises(AssertionError):
        assert_unbiased(g_naive, exact, var_naive)


# ---- quantize_grad (unbiased gradient quantization for the backward pass) -----------------------

def test_quantize_grad_is_identity_forward_and_quantizes_backward():
    x = sample_input((5, 40)).requires_grad_()
    y = z.quantize_grad(x, 4, seed=SEED, offset=2)
    assert torch.equal(y, x)
    upstream = sample_input((5, 40), seed=9)
    y.backward(upstream)
    assert torch.equal(x.grad, z.fake_quantize(upstream, 4, seed=SEED, offset=2))


def test_quantize_grad_is_unbiased():
    g = sample_input((300,), seed=4)
    x = torch.zeros(DRAWS, 300, requires_grad=True)
    y = z.quantize_grad(x, 2, granularity="row", seed=SEED)
    y.backward(g.expand(DRAWS, -1))
    s = g.abs().max()
    var = rounding_variance(g / s, z.quantize(g, 2).levels) * s * s
    assert_unbiased(x.grad, g, var)


# ---- autograd -----------------------------------------------------------------------------------

def test_fake_quantize_backward_is_straight_through():
    x = sample_input((6, 10)).requires_grad_()
    up = sample_input((6, 10), seed=2)
    z.fake_quantize(x, 2, seed=1).backward(up)
    assert torch.equal(x.grad, up)


@pytest.mark.parametrize("levels", ["uniform", "optimal", "codebook"])
def test_fake_quantize_backward_clips_where_the_quantizer_clips(levels):
    x = (sample_input((6, 10)) * 2).requires_grad_()
    s = torch.tensor(1.5)
    lv = torch.tensor([-0.5, 0.0, 0.25, 0.75]) if levels == "codebook" else levels
    up = sample_input((6, 10), seed=2)
    z.fake_quantize(x, 2, levels=lv, granularity=s, seed=1).backward(up)
    # The surrogate's derivative: clamp(x, lo * s, hi * s), lo/hi the ends of the levels used.
    table = z.quantize(x.detach(), 2, levels=lv, granularity=s).levels
    xr = x.detach().clone().requires_grad_()
    torch.clamp(xr, float(table[0] * s), float(table[-1] * s)).backward(up)
    assert torch.equal(x.grad, xr.grad)
    assert (x.grad == 0).any()


@pytest.mark.filterwarnings("ignore:Input #.* is not a double precision")
def test_dequantize_gradcheck_in_scale_and_levels():
    x = sample_input((4, 6))
    q = z.quantize(x, 3, granularity="channel", seed=1)
    scale = q.scale.clone().requires_grad_()
    levels = q.levels.clone().requires_grad_()
    fn = lambda s, l: z.dequantize(q.codes, s, l)
    # float32 internally: a wide finite-difference step; the function is linear in each input.
    assert torch.autograd.gradcheck(fn, (scale, levels), eps=1e-2, atol=1e-3, rtol=1e-3)


# ---- errors -------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "call, exc, message",
    [
        (lambda x: z.fake_quantize(x, 0), ValueError, "bits must be an integer from 1 to 8, got 0"),
        (lambda x: z.quantize(x, 9), ValueError, "bits must be an integer from 1 to 8, got 9"),
        (lambda x: z.fake_quantize(x.long(), 2), TypeError, "x must be float32, float64, float16 or bfloat16"),
        (lambda x: z.fake_quantize(x, 2, rounding="up"), ValueError, "rounding must be 'stochastic' or 'nearest'"),
        (lambda x: z.fake_quantize(x, 2, granularity="col"), ValueError, "granularity must be 'tensor', 'channel'"),
        (lambda x: z.fake_quantize(x, 2, levels="best"), ValueError, "levels must be 'uniform', 'optimal' or"),
        (lambda x: z.fake_quantize(x, 2, levels=torch.tensor([0.5, -0.5])), ValueError, "strictly increasing"),
        (lambda x: z.fake_quantize(x, 2, levels=torch.tensor([-2.0, 0.5])), ValueError, r"lie in \[-1, 1\]"),
        (lambda x: z.fake_quantize(x, 1, levels=torch.tensor([-1.0, 0.0, 1.0])), ValueError, "1 to 2\\^bits = 2"),
        (lambda x: z.fake_quantize(x, 2, levels=torch.tensor([-1, 1])), TypeError, "codebook must be float32"),
        (lambda x: z.fake_quantize(x, 2, levels=torch.zeros(2, device="meta")), ValueError, "codebook is on meta"),
        (lambda x: z.fake_quantize(x, 2, granularity=torch.ones(3)), ValueError, "fits neither a per-tensor"),
        (lambda x: z.dequantize(torch.zeros(3, dtype=torch.uint8), torch.ones(1), torch.zeros(2, dtype=torch.float64)),
         TypeError, "levels must be float32"),
        (lambda x: z.dequantize(torch.full((3,), 4, dtype=torch.uint8), torch.ones(1), torch.zeros(4)),
         ValueError, "code is >= the number of levels"),
        (lambda x: z.pack(torch.full((5,), 4, dtype=torch.uint8), 2), ValueError, "does not fit in bits=2"),
        (lambda x: z.pack(torch.zeros(5, dtype=torch.int32), 2), TypeError, "codes must be uint8"),
        (lambda x: z.unpack(torch.zeros(1, dtype=torch.uint8), 4, 3), ValueError, "need 2 bytes"),
        (lambda x: z.optimal_levels(x, 1), ValueError, "num_levels must be from 2 to 256"),
        (lambda x: z.fake_quantize(x, 2, seed=-1), ValueError, "seed must be an integer"),
    ],
)
def test_bad_input_names_the_argument(call, exc, message):
    with pytest.raises(exc, match=message):
        call(sample_input((4, 5)))


def test_fake_quantize_out_must_match():
    x = sample_input((4, 5))
    with pytest.raises(TypeError, match="out must have the dtype of x"):
        z.fake_quantize(x, 2, out=torch.empty(4, 5, dtype=torch.float64))
    with pytest.raises(ValueError, match="out must have the shape of x"):
        z.fake_quantize(x, 2, out=torch.empty(5, 4))
