"""The inner loops of linear/ (linear/kernels.h) in every instruction-set variant this processor
runs, against slow numpy references: exact for the integer loops and the quantizer, bit for bit for
the float loops (one fixed order of operations)."""

import numpy as np
import pytest

from torch_zipml import _linear
from torch_zipml.linear import SampleStore
from torch_zipml.linear import reference as ref

ISAS = _linear.available_isas()


def test_scalar_is_always_available():
    assert "scalar" in ISAS


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("bits", [2, 5, 8])
def test_quantize_symmetric(isa, bits):
    rng = np.random.default_rng(bits)
    v = rng.standard_normal(1000).astype(np.float32)
    v[:3] = [0.0, v.max(), -np.abs(v).max()]
    scale = float(np.abs(v).max())
    seed, offset = 2**63 + 12345, (1 << 56) + 77
    values, levels, total = _linear.quantize_symmetric(v, scale, bits, seed, offset, isa)
    want, _ = ref.symmetric_quantize(v, bits, seed, offset, np.arange(v.size))
    np.testing.assert_array_equal(levels, want)
    assert total == int(want.sum())
    np.testing.assert_array_equal(values, ref.symmetric_values(want, bits, scale))


def test_quantize_symmetric_is_unbiased():
    v = np.full(20000, 0.3, dtype=np.float32)
    values, _, _ = _linear.quantize_symmetric(v, 1.0, 3, 1, 2)
    # grid step 1/3: 0.3 lies in [0, 1/3], rounding variance (1/3 - 0.3)(0.3 - 0) = 0.01
    assert abs(values.mean() - 0.3) < 5 * np.sqrt(0.01 / v.size)
    assert set(np.unique(values).round(6)) == {0.0, np.float32(1 / 3).round(6)}


@pytest.mark.parametrize("isa", ISAS)
def test_quantize_symmetric_at_ties(isa):
    """Values whose fraction times 2^16 lies strictly between the element's draw r and r + 1, where
    the tie word decides (a random input meets one with probability 2^-16 per element), mixed with
    fractions r - 1/256 (down), r (down) and r + 1 (up). On the 3 levels of 2 bits at scale 1,
    v = -1 + k 2^-24 has frac = k 2^-24 exactly; k = 256 r + m, m = -1 .. 256."""
    n, seed, offset = 1003, 2**63 + 5, (2 << 56) + 9
    r = ref.philox_draws(seed, offset, np.arange(n)).astype(np.int64)
    m = np.arange(n) % 258 - 1
    k = np.maximum(256 * r + m, 0)
    v = (-1.0 + k * 2.0**-24).astype(np.float32)
    assert np.array_equal(v.astype(np.float64), -1.0 + k * 2.0**-24)
    values, levels, total = _linear.quantize_symmetric(v, 1.0, 2, seed, offset, isa)
    want = ref.quantize_uniform(v, 1.0, 3, seed, offset, np.arange(n)) - 1
    tie = (m > 0) & (m < 256)
    assert 0 < int((want[tie] + 1).sum()) < int(tie.sum())  # the tie words round some up, not all
    np.testing.assert_array_equal(levels, want)
    assert total == int(want.sum())
    np.testing.assert_array_equal(values, ref.symmetric_values(want, 2, 1.0))
    scalar = _linear.quantize_symmetric(v, 1.0, 2, seed, offset, "scalar")
    assert values.tobytes() == scalar[0].tobytes() and levels.tobytes() == scalar[1].tobytes() and total == scalar[2]


@pytest.mark.parametrize("isa", ISAS)
def test_philox_draws(isa):
    # the last two wrap a counter word: inside a vector of 16 blocks, and inside a pair of them
    for first, n in [(0, 400), (3, 270), (2**33 + 1, 140), (8 * (2**32 - 10), 200), (8 * (2**32 - 20), 400)]:
        want = ref.philox_draws(99, 2**40 + 7, np.arange(first, first + n, dtype=np.uint64))
        np.testing.assert_array_equal(_linear.philox_draws(99, 2**40 + 7, first, n, isa), want)


@pytest.mark.parametrize("isa", ISAS)
def test_max_abs(isa):
    for n in (0, 1, 33, 1000):
        v = np.random.default_rng(n).standard_normal(n).astype(np.float32)
        assert _linear.max_abs(v, isa) == (np.abs(v).max() if n else 0.0)


def random_store(bits, rows=9, cols=300, samples=2, seed=0):
    u = np.random.default_rng(seed).uniform(-1, 1, size=(rows, cols)).astype(np.float32)
    return SampleStore.build(u, bits, samples=samples, copies=2, seed=seed)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_int_dot(isa, bits):
    store = random_store(bits)
    m = np.zeros(320, dtype=np.int8)
    m[:300] = np.random.default_rng(1).integers(-127, 128, size=300)
    for copy, row, sample, c0, c1 in [(0, 0, 0, 0, 300), (1, 8, 1, 64, 256), (0, 3, 1, 256, 300), (1, 5, 0, 0, 64)]:
        codes = store.codes(copy, sample)[row].astype(np.int64)
        want = int((codes[c0:c1] * m[c0:c1]).sum())
        assert _linear.int_dot(store, copy, row, sample, m, c0, c1, isa) == want


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_int_gemv_t(isa, bits):
    store = random_store(bits)
    rng = np.random.default_rng(2)
    for copy, rows, c0, c1 in [(0, [0, 1, 2, 3], 0, 300), (1, [8, 2, 2, 5, 7, 0, 1, 4], 64, 300), (0, [3, 3, 3, 3], 256, 300)]:
        t = rng.integers(-127, 128, size=len(rows)).astype(np.int8)
        codes = store.codes(copy, 1)[rows].astype(np.int64)
        want = (codes[:, c0:c1] * t[:, None].astype(np.int64)).sum(0)
        np.testing.assert_array_equal(_linear.int_gemv_t(store, copy, rows, 1, t, c0, c1, isa), want)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_decode_uniform(isa, bits):
    store = random_store(bits)
    for copy, row, sample, c0, c1 in [(0, 0, 0, 0, 300), (1, 4, 1, 64, 250), (0, 8, 1, 256, 300)]:
        want = ref.uniform_level_values(store.codes(copy, sample)[row, c0:c1], bits)
        got = _linear.decode_uniform(store, copy, row, sample, c0, c1, isa)
        np.testing.assert_array_equal(got, want)


def lanes_dot(a, w):
    """The definition of the float dot: 32 lanes accumulate in order, then pairwise halving."""
    lanes = np.zeros(32, dtype=np.float32)
    for i in range(len(a)):
        lanes[i % 32] = np.float32(lanes[i % 32] + np.float32(a[i] * w[i]))
    width = 16
    while width:
        lanes[:width] = lanes[:width] + lanes[width:2 * width]
        width //= 2
    return lanes[0]


@pytest.mark.parametrize("n", [1, 31, 32, 100, 257])
def test_float_dot_is_bitwise_identical_across_variants(n):
    rng = np.random.default_rng(n)
    a = rng.standard_normal(n).astype(np.float32)
    w = rng.standard_normal(n).astype(np.float32)
    want = lanes_dot(a, w)
    for isa in ISAS:
        assert np.float32(_linear.float_dot(a, w, isa)).tobytes() == want.tobytes(), isa


@pytest.mark.parametrize("cols", [5, 64, 130])
def test_float_gemv_t_is_bitwise_identical_across_variants(cols):
    rng = np.random.default_rng(cols)
    rows = rng.standard_normal((7, cols)).astype(np.float32)
    e = rng.standard_normal(7).astype(np.float32)
    want = np.zeros(cols, dtype=np.float32)
    for k in range(7):
        want = (want + (e[k] * rows[k]).astype(np.float32)).astype(np.float32)
    for isa in ISAS:
        np.testing.assert_array_equal(_linear.float_gemv_t(rows, e, isa), want, err_msg=isa)


def test_isa_selection():
    before = _linear.isa()
    try:
        _linear.set_isa("scalar")
        assert _linear.isa() == "scalar"
        with pytest.raises(ValueError, match="isa .* must be scalar, avx2 or avx512"):
            _linear.set_isa("neon")
    finally:
        _linear.set_isa("")
    assert _linear.isa() == before
