"""The instruction-set variants of the CPU kernels (scalar, AVX2, AVX-512) compute identical bits.

The scalar span kernels (kernels/cpu/span_scalar.cpp, over kernels/common/quantize.h) are the
reference; the SIMD variants (kernels/cpu/simd_span.h) must reproduce fake_quantize values (NaN
positions and bits included), quantize codes and double-sampling indices and round-up bits for every
kind of levels, rounding, dtype, size and span alignment, and whatever the thread count. Variants the
processor lacks are skipped. At the end, the CPU drivers' fast paths (bit packing, the tabulated
dequantization of long spans, the level histogram) against slow, obvious references.
"""

import math

import numpy as np
import pytest
import torch

import reference as ref
import torch_zipml

ISAS = ("scalar", "avx2", "avx512")
SEED = 0x5EED_2017_1611_0540  # any 64-bit seed; above 2**63 to exercise the unsigned range


def _available(isa):
    try:
        torch_zipml.cpu_isa(isa)
        return True
    except RuntimeError:
        return False
    finally:
        torch_zipml.cpu_isa("auto")


AVAILABLE = [isa for isa in ISAS if _available(isa)]
SIMD = [isa for isa in AVAILABLE if isa != "scalar"]
needs_simd = pytest.mark.skipif(not SIMD, reason="this processor has neither AVX2 nor AVX-512")


@pytest.fixture(autouse=True)
def _restore_isa():
    yield
    torch_zipml.cpu_isa("auto")


def _bitwise(t):
    """An integer view of t: equal views mean equal bits, NaN payloads and signed zeros included."""
    if t.is_floating_point():
        return t.contiguous().view({2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])
    return t


def _run(isa, x, bits, rounding, **kw):
    """Everything the span kernels compute for x under one variant, as named tensors (or the error)."""
    assert torch_zipml.cpu_isa(isa) == isa
    out = {"fake": torch_zipml.fake_quantize(x, bits, rounding=rounding, seed=SEED, offset=7, **kw)}
    try:
        out["codes"] = torch_zipml.quantize(x, bits, rounding=rounding, seed=SEED, offset=7, **kw).codes
    except ValueError as e:
        out["codes"] = type(e)
    try:
        ds = torch_zipml.double_sample(x, bits, seed=SEED, offset=3, **kw)
        out["index"], out["up"] = ds.index, ds.up
    except ValueError as e:
        out["index"] = type(e)
    return out


def _assert_same_bits(x, bits, rounding="stochastic", isas=None, **kw):
    isas = AVAILABLE if isas is None else isas
    results = {isa: _run(isa, x, bits, rounding, **kw) for isa in isas}
    reference = results[isas[0]]
    for isa in isas[1:]:
        got = results[isa]
        assert got.keys() == reference.keys(), (isa, got.keys())
        for name, want in reference.items():
            if isinstance(want, type):
                assert got[name] is want, f"{isa} {name}: {got[name]} where {isas[0]} raised {want}"
                continue
            assert got[name].dtype == want.dtype and got[name].shape == want.shape
            same = _bitwise(got[name]) == _bitwise(want)
            assert bool(same.all()), (
                f"{isa} differs from {isas[0]} in {name} at {int((~same).sum())} of {same.numel()} elements, "
                f"first at flat index {int((~same).flatten().nonzero()[0])} (bits={bits}, {rounding}, {kw})")
    return reference


def _data(n, dtype=torch.float32, seed=0, special=False):
    """Normal data; `special` mixes in NaN, +-Inf, huge, denormal and signed-zero values."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=g)
    if special and n:
        picks = torch.randint(n, (max(1, n // 50),), generator=g)
        values = torch.tensor([math.nan, math.inf, -math.inf, 3.0e38, -3.0e38, 1.0e-40, -1.0e-40, -0.0, 0.0])
        x[picks] = values[torch.randint(len(values), picks.shape, generator=g)]
    return x.to(dtype)


def test_variants_are_selectable():
    """cpu_isa really switches variant (else every comparison below would be vacuous)."""
    assert "scalar" in AVAILABLE
    for isa in AVAILABLE:
        assert torch_zipml.cpu_isa(isa) == isa
        assert torch_zipml.cpu_isa() == isa
    assert torch_zipml.cpu_isa("auto") == AVAILABLE[-1]
    with pytest.raises(RuntimeError, match="scalar, avx2 or avx512"):
        torch_zipml.cpu_isa("sse9")


@needs_simd
def test_stochastic_outputs_depend_on_the_words():
    """The variants draw real Philox words: stochastic and nearest rounding disagree, and two seeds
    give different samples, on every variant alike."""
    x = _data(4096)
    for isa in AVAILABLE:
        torch_zipml.cpu_isa(isa)
        a = torch_zipml.fake_quantize(x, 2, seed=1)
        b = torch_zipml.fake_quantize(x, 2, seed=2)
        c = torch_zipml.fake_quantize(x, 2, rounding="nearest")
        assert not torch.equal(a, b) and not torch.equal(a, c)


@needs_simd
@pytest.mark.parametrize("n", [0, 1, 3, 16, 17, 63, 64, 65, 1000, 100003])
@pytest.mark.parametrize("rounding", ["stochastic", "nearest"])
def test_sizes(n, rounding):
    for bits in (1, 4, 8):
        _assert_same_bits(_data(n, seed=n), bits, rounding)


@needs_simd
@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("rounding", ["stochastic", "nearest"])
def test_uniform_grid(bits, rounding):
    x = _data(100003, seed=bits)
    # exact ties of nearest rounding: x = 0 is the midpoint of the 1-bit grid {-1, 1}
    x[:64] = torch.linspace(-1, 1, 64)
    x[64:96] = 0.0
    _assert_same_bits(x, bits, rounding)
    _assert_same_bits(x, bits, rounding, granularity=torch.tensor(0.75))  # clips


def _codebook(k, seed):
    g = torch.Generator().manual_seed(seed)
    while True:
        levels = torch.unique(torch.rand(k, generator=g) * 2 - 1)  # sorted
        if levels.numel() == k:
            return levels


@needs_simd
@pytest.mark.parametrize("k", [1, 2, 5, 16, 17, 100, 256])
@pytest.mark.parametrize("rounding", ["stochastic", "nearest"])
def test_codebooks(k, rounding):
    bits = max(1, math.ceil(math.log2(k)))
    levels = _codebook(k, seed=k)
    for n in (1000, 100003):
        x = _data(n, seed=n + k)
        _assert_same_bits(x, bits, rounding, levels=levels)
        _assert_same_bits(x, bits, rounding, levels=levels, granularity=torch.tensor(0.5))
    # the levels themselves and the midpoints between them, exactly: ties and boundaries
    on = torch.cat([levels, (levels[1:] + levels[:-1]) / 2, torch.tensor([-1.0, 1.0])])
    _assert_same_bits(on, bits, rounding, levels=levels, granularity=torch.tensor(1.0))


@needs_simd
@pytest.mark.parametrize("rounding", ["stochastic", "nearest"])
def test_dyadic_codebook_ties(rounding):
    """Values on the exact midpoints of a dyadic codebook: fraction exactly 1/2."""
    levels = torch.tensor([-1.0, -0.5, 0.0, 0.5, 1.0])
    x = torch.tensor([-0.75, -0.25, 0.25, 0.75] * 100)
    out = _assert_same_bits(x, 3, rounding, levels=levels, granularity=torch.tensor(1.0))
    if rounding == "nearest":  # ties round up
        assert torch.equal(out["fake"], x + 0.25)


@needs_simd
@pytest.mark.parametrize("bits", [2, 4, 6, 8])
def test_optimal_levels(bits):
    x = _data(100003, seed=bits)
    for rounding in ("stochastic", "nearest"):
        _assert_same_bits(x, bits, rounding, levels="optimal")
        _assert_same_bits(x[:300], bits, rounding, levels="optimal")  # distinct values as candidates


@needs_simd
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("rounding", ["stochastic", "nearest"])
def test_dtypes(dtype, rounding):
    x = _data(100003, dtype, seed=3, special=True)
    for bits in (1, 3, 8):
        _assert_same_bits(x, bits, rounding)
    _assert_same_bits(x, 5, rounding, levels=_codebook(17, seed=5))


@needs_simd
@pytest.mark.parametrize("rounding", ["stochastic", "nearest"])
def test_unaligned_spans(rounding):
    """Spans that start at any element index: rows of odd length, odd channels, strided views."""
    x = _data(5 * 1001, seed=11).reshape(5, 1001)
    for bits in (2, 7):
        _assert_same_bits(x, bits, rounding, granularity="row")
        _assert_same_bits(x, bits, rounding, granularity="channel")
        _assert_same_bits(x[:, 1:], bits, rounding, granularity="row")  # non-contiguous
        _assert_same_bits(x.t(), bits, rounding, granularity="channel")  # 1001 channels of 5
    for rows, length in ((23, 17), (9, 37), (3, 129)):  # short spans at odd offsets (below 16: scalar)
        _assert_same_bits(_data(rows * length, seed=length).reshape(rows, length), 3, rounding, granularity="row")
    y = _data(13 * 7 * 3, seed=12).reshape(13, 7, 3)
    for granularity in ("row", "channel"):
        _assert_same_bits(y, 3, rounding, granularity=granularity)
        _assert_same_bits(y[::2, :, 1:], 4, rounding, granularity=granularity)
        _assert_same_bits(y, 4, rounding, granularity=granularity, levels=_codebook(9, seed=2))
        _assert_same_bits(y, 8, rounding, granularity=granularity, levels=_codebook(200, seed=3))
    scales = torch.rand(13, 7, 1) + 0.1  # a given per-row scale, clipping some values
    _assert_same_bits(y, 3, rounding, granularity=scales)


@pytest.mark.parametrize("isa", AVAILABLE)
def test_stochastic_rounding_at_its_threshold(isa):
    """Round up iff u < frac, u = (r + w 2^-32) 2^-16, also where frac * 2^16 = f sits at the element's
    draw r or one step either side, and in the ties r < f < r + 1 that only the tie word w decides:
    inputs a random tensor meets with probability 2^-16 per element. On the 1-bit grid with scale 1,
    x = -1 + f * 2^-15 gives t = frac = f * 2^-16 exactly. Covers the integer code of the uniform grid
    (quantize, fake_quantize), the float comparison (a codebook, double sampling) and the lanes the
    SIMD kernels recompute: a kernel that ignored w would round every tie the same way."""
    n, seed, offset = 4099, 12345, 6
    r = ref.philox_draws(seed, offset, np.arange(n)).astype(np.int64)
    step = np.array([-1.0, 0.0, 1.0, 2.0**-9, 0.5, 1.0 - 2.0**-9])[np.arange(n) % 6]
    f = np.clip(r + step, 0.0, 65536.0)
    x = torch.from_numpy((-1.0 + f * 2.0**-15).astype(np.float32))
    assert torch.equal(x.double(), torch.from_numpy(-1.0 + f * 2.0**-15))  # exact in float32
    expected = ref.stochastic_up((f * 2.0**-16).astype(np.float32), seed, offset, np.arange(n))
    tie = (f > r) & (f < r + 1)
    assert expected[tie].any() and not expected[tie].all()  # the tie word decides both ways
    assert np.array_equal(expected[~tie], (r < f)[~tie])
    expected = torch.from_numpy(expected).to(torch.uint8)
    assert torch.equal(expected, torch.from_numpy(ref.quantize_codes(x, 1, scale=[1.0], seed=seed,
                                                                     offset=offset)[0]).to(torch.uint8))
    assert torch_zipml.cpu_isa(isa) == isa
    one = torch.tensor(1.0)
    for levels in ("uniform", torch.tensor([-1.0, 1.0])):
        q = torch_zipml.quantize(x, 1, levels=levels, seed=seed, offset=offset, granularity=one)
        assert torch.equal(q.codes, expected)
        fake = torch_zipml.fake_quantize(x, 1, levels=levels, seed=seed, offset=offset, granularity=one)
        assert torch.equal(fake, expected.float() * 2 - 1)
    ds = torch_zipml.double_sample(x, 1, seed=seed, offset=offset, granularity=one)
    assert torch.equal(ds.first(), expected.float() * 2 - 1)
    second = ref.quantize_codes(x, 1, scale=[1.0], seed=seed, offset=offset, stream_offset=1)[0]
    assert torch.equal(ds.second(), torch.from_numpy(second).float() * 2 - 1)


@needs_simd
@pytest.mark.parametrize("rounding", ["stochastic", "nearest"])
def test_special_values(rounding):
    x = _data(10007, seed=5, special=True)
    for bits in (1, 4, 8):
        out = _assert_same_bits(x, bits, rounding)
        assert out["codes"] is ValueError and out["index"] is ValueError  # NaN/Inf: codes cannot hold them
        fake = _bitwise(out["fake"])
        assert torch.equal(fake[~torch.isfinite(x)], torch.full_like(fake[~torch.isfinite(x)], 0x7FC00000))
    for levels in (_codebook(16, seed=1), _codebook(100, seed=2)):
        _assert_same_bits(x, 8, rounding, levels=levels)
    finite = torch.nan_to_num(x, nan=0.0, posinf=3.0e38, neginf=-3.0e38)  # huge and denormal values
    for bits in (2, 8):
        _assert_same_bits(finite, bits, rounding)
    _assert_same_bits(finite, 6, rounding, levels=_codebook(33, seed=4))


@needs_simd
@pytest.mark.parametrize("scale", [0.0, 1.0e-40, 1.0e-30, 0.5, 2.0])
@pytest.mark.parametrize("rounding", ["stochastic", "nearest"])
def test_scales(scale, rounding):
    """A zero scale, a denormal one (1/s overflows: v = 0), a tiny one (every value clips) and
    given ones; and an all-zero tensor, whose computed scale is 0."""
    x = _data(3001, seed=7)
    s = torch.tensor(scale)
    for bits in (1, 3):
        _assert_same_bits(x, bits, rounding, granularity=s)
    _assert_same_bits(x, 8, rounding, granularity=s, levels=_codebook(64, seed=6))
    _assert_same_bits(x.reshape(3001, 1), 2, rounding, granularity=torch.full((3001, 1), scale))
    _assert_same_bits(torch.zeros(1000), 4, rounding)


@needs_simd
@pytest.mark.parametrize("rounding", ["stochastic", "nearest"])
def test_streaming_stores_of_large_outputs(rounding):
    """fake_quantize outputs of 64 MB and more are written with non-temporal stores (SpanParams::
    stream_out); aligned and unaligned, with per-row scales, they hold the scalar reference's bits."""
    x = _data((1 << 24) + 5, seed=13)  # just past the 64 MB threshold
    for view, kw in ((x, {}), (x[3:], dict(levels=_codebook(9, seed=4))), (x[:-5].reshape(4096, -1), dict(granularity="row"))):
        want = None
        for isa in AVAILABLE:
            torch_zipml.cpu_isa(isa)
            got = torch_zipml.fake_quantize(view, 4, rounding=rounding, seed=SEED, **kw)
            want = got if want is None else want
            assert torch.equal(_bitwise(got), _bitwise(want)), (isa, kw)


@pytest.mark.parametrize("isa", AVAILABLE)
def test_thread_count(isa):
    """One thread or two, the same bits: the words depend on the element index alone."""
    x = _data((1 << 18) + 3, seed=9)
    previous = torch.get_num_threads()
    try:
        runs = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            runs.append(_run(isa, x, 4, "stochastic", levels=_codebook(12, seed=1)))
            runs.append(_run(isa, x, 3, "nearest", granularity="tensor"))
            runs.append(_run(isa, x, 5, "stochastic", levels="optimal"))  # the histogram, in pieces
    finally:
        torch.set_num_threads(previous)
    for one, two in zip(runs[:3], runs[3:]):
        for name in one:
            assert torch.equal(_bitwise(one[name]), _bitwise(two[name])), name


# ---- the drivers' fast paths -------------------------------------------------------------------------

def _pack_reference(codes, bits):
    """Code i in bits [i*b, (i+1)*b) of a little-endian bit stream (kernels/common/pack.h)."""
    c = codes.numpy().astype(np.uint16)
    stream = ((c[:, None] >> np.arange(bits)) & 1).astype(np.uint8).reshape(-1)
    return torch.from_numpy(np.packbits(stream, bitorder="little"))


@pytest.mark.parametrize("bits", range(1, 9))
def test_pack_and_unpack_match_the_bit_stream(bits):
    g = torch.Generator().manual_seed(bits)
    for n in (0, 1, 7, 8, 9, 63, 100003):
        codes = torch.randint(1 << bits, (n,), generator=g, dtype=torch.uint8)
        packed = torch_zipml.pack(codes, bits)
        assert torch.equal(packed, _pack_reference(codes, bits)), n
        assert torch.equal(torch_zipml.unpack(packed, bits, n), codes), n
        if n:  # unpacking fewer codes than the stream holds reads only their bytes
            assert torch.equal(torch_zipml.unpack(packed, bits, n - 1), codes[:-1])
    if bits < 8:
        codes = torch.zeros(100003, dtype=torch.uint8)
        for at in (50001, 100002):  # inside the 8-code groups, and in the tail
            bad = codes.clone()
            bad[at] = 1 << bits
            with pytest.raises(ValueError, match=f"does not fit in bits={bits}"):
                torch_zipml.pack(bad, bits)


def _assert_same_values(got, want):
    """Bitwise equal, NaNs aside (torch's own conversions write other NaN payloads): NaN alike."""
    nan = torch.isnan(want)
    assert torch.equal(torch.isnan(got), nan)
    assert torch.equal(_bitwise(got)[~nan], _bitwise(want)[~nan])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_dequantize_long_spans_match_the_reference(dtype):
    """Spans of a few codes compute L[code] * s per element; long ones look it up in a table of
    the 257 products: both are L[code] * s rounded in float32, then converted to dtype."""
    g = torch.Generator().manual_seed(1)
    levels = _codebook(200, seed=8)
    codes = torch.randint(200, (64, 1000), generator=g, dtype=torch.uint8)
    per_channel = torch.rand(64, 1, generator=g) + 0.5
    per_channel[1] = math.nan  # an invalid scale: its group is NaN
    for scale in (torch.tensor([[2.5]]), torch.tensor([[math.nan]]), per_channel):
        want = (levels[codes.long()] * scale).to(dtype)
        _assert_same_values(torch_zipml.dequantize(codes, scale, levels, dtype=dtype), want)
    bad = codes.clone()
    bad[40, 500] = 200
    with pytest.raises(ValueError, match="code is >= the number of levels"):
        torch_zipml.dequantize(bad, torch.tensor([[1.0]]), levels)
    index = codes.clamp(max=198)  # interval indices: j <= K-2
    up = torch.randint(4, codes.shape, generator=g, dtype=torch.uint8)
    first, second = torch.ops.zipml.double_sample_decode(index, up, torch.tensor([[0.5]]), levels, dtype=dtype)
    for bit, got in ((0, first), (1, second)):
        _assert_same_values(got, (levels[index.long() + ((up.long() >> bit) & 1)] * 0.5).to(dtype))


@pytest.mark.parametrize("groups", [1, 7])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_level_histogram_matches_the_reference(dtype, groups):
    """Per bin the count (exact) and the sum of v; a run of values in one bin (the kernel spreads
    consecutive values over interleaved sub-histograms) and groups of an odd size."""
    x = _data(7 * 42857, dtype, seed=4)
    x[:5] = torch.tensor([10.0, -10.0, 0.0, 1.0e-40, -3.0]).to(dtype)  # clipped, zero, denormal
    x[1000:3001] = 0.25
    x[5000:9000:2] = 0.0
    scale = torch.tensor([3.0]) if groups == 1 else torch.linspace(1.0, 4.0, groups)
    bins = 1035
    stats, extremes = torch.ops.zipml._level_histogram(x, scale, bins)
    assert stats.shape == (bins, 2)
    v = (x.float().view(groups, -1) * (1.0 / scale).view(groups, 1)).clamp(-1.0, 1.0).flatten()
    b = ((v + 1.0) * (0.5 * bins)).to(torch.int64).clamp(max=bins - 1)
    assert torch.equal(stats[:, 0], torch.bincount(b, minlength=bins).double())
    assert torch.allclose(stats[:, 1], torch.bincount(b, v.double(), minlength=bins), rtol=1e-12, atol=1e-12)
    assert torch.equal(extremes, torch.stack([v.min(), v.max()]))
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = torch.ops.zipml._level_histogram(x, scale, bins)
    finally:
        torch.set_num_threads(previous)
    assert torch.equal(one[0], stats) and torch.equal(one[1], extremes)  # the same bits, any thread count
    x[123456] = math.inf
    with pytest.raises(ValueError, match="NaN or Inf"):
        torch.ops.zipml._level_histogram(x, scale, bins)


def _absmax_reference(x, groups):
    """max(|min|, |max|) of each run of x's elements, in x's dtype, as float32: NaN where one occurs."""
    runs = x.reshape(groups, -1)
    return torch.maximum(runs.amin(1).abs(), runs.amax(1).abs()).float()


@pytest.mark.parametrize("isa", AVAILABLE)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_absmax_matches_the_reference(isa, dtype):
    """The computed scale's one-pass max-abs: every run length (SIMD body and tail, runs split into
    pieces), NaN and +-Inf in some runs only, huge and denormal values, the extreme at either sign."""
    torch_zipml.cpu_isa(isa)
    for groups, inner in ((1, 1), (1, 63), (5, 17), (3, 64 * 1024 + 77), (1, 3 * 64 * 1024), (1000, 3)):
        x = _data(groups * inner, seed=inner, special=inner > 17).to(dtype)
        x[-1] = -1.0e4 if dtype != torch.float16 else -6.0e4  # a negative extreme in the last run's tail
        got = torch.ops.zipml._absmax(x, groups)
        torch.testing.assert_close(got, _absmax_reference(x, groups), rtol=0, atol=0, equal_nan=True)
    x = _data(3 * 300, seed=5).to(dtype).reshape(3, 300)
    x[0, 7], x[1, 299], x[2, 150] = -math.inf, math.nan, 2.5  # one run each: Inf, NaN (in the tail), finite
    want = torch.tensor([math.inf, math.nan, x[2].float().abs().max()])
    torch.testing.assert_close(torch.ops.zipml._absmax(x, 3), want, rtol=0, atol=0, equal_nan=True)
    assert torch.equal(torch.ops.zipml._absmax(torch.empty(0, 4, dtype=dtype), 1), torch.zeros(1))
    with pytest.raises(RuntimeError, match="groups must be at least 1 and divide the 10 elements of x, got 3"):
        torch.ops.zipml._absmax(torch.ones(10, dtype=dtype), 3)


def test_absmax_on_meta_tensors():
    """Devices without an _absmax kernel (meta, here) get the composite of amin and amax: shapes."""
    x = torch.empty(6, 5, device="meta")
    assert torch.ops.zipml._absmax(x, 6).shape == (6,)
    assert torch_zipml.fake_quantize(x, 4, granularity="channel").shape == x.shape
