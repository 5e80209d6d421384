"""The quantized sample store of linear/ against the core's per-element definition (the zipml
operators) and a slow reference of its layout."""

import numpy as np
import pytest
import torch

import torch_zipml
from torch_zipml.linear import SampleStore, reference
from torch_zipml import _linear

ONE = torch.ones(1)


def scaled_data(rows=37, cols=29, seed=0):
    rng = np.random.default_rng(seed)
    u = rng.uniform(-1, 1, size=(rows, cols)).astype(np.float32)
    u[0, :] = -1.0  # the ends of the range
    u[1, :] = 1.0
    u[2, :3] = 0.0
    return u


@pytest.mark.parametrize("bits", range(1, 9))
def test_double_sampled_copies_are_the_cores_double_sample(bits):
    u = scaled_data()
    store = SampleStore.build(u, bits, samples=2, copies=3, seed=1234)
    for copy in range(3):
        ds = torch_zipml.double_sample(torch.from_numpy(u), bits, granularity=ONE, seed=1234, offset=2 * copy)
        index = ds.index.numpy().astype(np.int64)
        up = ds.up.numpy().astype(np.int64)
        np.testing.assert_array_equal(store.intervals(copy), index)
        np.testing.assert_array_equal(store.codes(copy, 0), index + (up & 1))
        np.testing.assert_array_equal(store.codes(copy, 1), index + ((up >> 1) & 1))


@pytest.mark.parametrize("bits", [1, 3, 4, 8])
def test_single_sample_and_nearest_are_the_cores_quantize(bits):
    u = scaled_data()
    x = torch.from_numpy(u)
    naive = SampleStore.build(u, bits, samples=1, copies=2, seed=99)
    for copy in range(2):
        q = torch_zipml.quantize(x, bits, granularity=ONE, seed=99, offset=copy)
        np.testing.assert_array_equal(naive.codes(copy, 0), q.codes.numpy())
    nearest = SampleStore.build(u, bits, samples=1, copies=1, nearest=True)
    q = torch_zipml.quantize(x, bits, rounding="nearest", granularity=ONE)
    np.testing.assert_array_equal(nearest.codes(0, 0), q.codes.numpy())


@pytest.mark.parametrize("bits,samples", [(1, 2), (2, 2), (3, 4), (4, 2), (5, 1), (8, 6)])
def test_record_layout(bits, samples):
    """A record is the LSB-first packed interval indices, then one LSB-first plane of round-up
    bits per sample, features padded to a multiple of 8."""
    u = scaled_data(rows=11, cols=21)
    store = SampleStore.build(u, bits, samples=samples, copies=2, seed=5)
    ib = 0 if bits == 1 else bits  # ceil(log2(2^bits - 1))
    padded = 24
    assert store.index_bits == ib
    assert store.index_bytes == padded * ib // 8 and store.plane_bytes == padded // 8
    assert store.record_bytes == padded * (ib + samples) // 8
    for copy in range(2):
        records = store.records(copy)
        index = store.intervals(copy)
        for r in range(u.shape[0]):
            codes = np.zeros(padded, dtype=np.uint8)
            codes[:21] = index[r]
            expected = [torch_zipml.pack(torch.from_numpy(codes), ib).numpy()] if ib else []
            for s in range(samples):
                bit = np.zeros(padded, dtype=np.uint8)
                bit[:21] = store.codes(copy, s)[r] - index[r]
                expected.append(torch_zipml.pack(torch.from_numpy(bit), 1).numpy())
            np.testing.assert_array_equal(records[r], np.concatenate(expected))


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_panels_change_the_layout_not_the_samples(bits):
    """A store cut into feature panels (what the integer engine streams, one panel per thread) holds
    the same samples; its records are each row's panel records one after another; the kernel entry
    points, which index a row's planes from its first feature, take one-panel stores only."""
    u = scaled_data(rows=9, cols=150)
    one = SampleStore.build(u, bits, samples=2, copies=2, seed=8)
    cut = SampleStore.build(u, bits, samples=2, copies=2, seed=8, panel_starts=[64, 128])
    assert (one.panels, cut.panels) == (1, 3)
    for copy in range(2):
        np.testing.assert_array_equal(cut.intervals(copy), one.intervals(copy))
        for sample in range(2):
            np.testing.assert_array_equal(cut.codes(copy, sample), one.codes(copy, sample))
    index = cut.intervals(1)
    up = [cut.codes(1, s) - index for s in range(2)]

    def packed(fields, r, a, b, width):  # features [a, b) of row r, padded to a byte, LSB-first
        codes = np.pad(fields[r, a:b], (0, -(b - a) % 8)).astype(np.uint8)
        return torch_zipml.pack(torch.from_numpy(codes), width).numpy() if width else np.zeros(0, np.uint8)

    for r, record in enumerate(cut.records(1)):
        expected = [[packed(index, r, a, b, cut.index_bits)] + [packed(bit, r, a, b, 1) for bit in up]
                    for a, b in [(0, 64), (64, 128), (128, 150)]]
        np.testing.assert_array_equal(record, np.concatenate(sum(expected, [])))
    with pytest.raises(ValueError, match="one panel"):
        _linear.int_dot(cut, 0, 0, 0, np.zeros(192, np.int8), 0, 150)
    with pytest.raises(ValueError, match="panel_starts"):
        SampleStore.build(u, bits, panel_starts=[100])


def test_bytes_shrink_as_32_over_bits_plus_2():
    u = scaled_data(rows=4, cols=640)
    for bits in (2, 4, 8):
        store = SampleStore.build(u, bits, samples=2)
        assert store.bytes_per_copy * 8 == 4 * 640 * (bits + 2)
    assert SampleStore.build(u, 1, samples=2).bytes_per_copy * 8 == 4 * 640 * 2  # no index at 1 bit


@pytest.mark.parametrize("bits", [2, 5])
def test_samples_are_unbiased_and_independent(bits):
    """Over many copies each sample averages to the value, with the variance of stochastic
    rounding (L_j+1 - v)(v - L_j); the two samples of a copy are uncorrelated (Section 4)."""
    rng = np.random.default_rng(3)
    u = rng.uniform(-1, 1, size=(1, 64)).astype(np.float32)
    copies = 4000
    store = SampleStore.build(u, bits, samples=2, copies=copies, seed=7)
    levels = store.levels()
    v1 = np.stack([levels[np.arange(64), store.codes(c, 0)[0]] for c in range(copies)])
    v2 = np.stack([levels[np.arange(64), store.codes(c, 1)[0]] for c in range(copies)])
    j = store.intervals(0)[0]
    lo, hi = levels[np.arange(64), j], levels[np.arange(64), j + 1]
    var = (hi - u[0]) * (u[0] - lo)
    se = np.sqrt(var / copies) + 1e-12
    assert np.abs((v1.mean(0) - u[0]) / se).max() < 5
    assert np.abs((v2.mean(0) - u[0]) / se).max() < 5
    cov = ((v1 - u[0]) * (v2 - u[0])).mean(0)
    assert np.abs(cov / (var / np.sqrt(copies) + 1e-12)).max() < 5
    # A biased store (round up always) is caught by the same test.
    assert np.abs((hi - u[0]) / se).max() > 5


def test_optimal_levels_per_feature_are_the_cores():
    """Per-feature levels equal the core's optimal_levels of the column with scale 1, in both of its
    regimes: the distinct values as candidates, and a histogram grid that contains the uniform levels."""
    rng = np.random.default_rng(0)
    u = np.clip(rng.exponential(0.3, size=(300, 4)) * 2 - 1, -1, 1).astype(np.float32)
    u[0], u[1] = -1, 1
    for bits, candidates in [(2, 1024), (3, 64), (4, 128)]:
        table = _linear.optimal_feature_levels(u, bits, candidates)
        for c in range(u.shape[1]):
            core = torch_zipml.optimal_levels(torch.from_numpy(u[:, c].copy()), 1 << bits, candidates=candidates,
                                              scale=ONE).numpy()
            np.testing.assert_array_equal(table[c], core)


def test_optimal_store_matches_the_cores_codebook_quantization():
    rng = np.random.default_rng(1)
    u = np.clip(rng.exponential(0.2, size=(500, 1)) * 2 - 1, -1, 1).astype(np.float32)
    store = SampleStore.build(u, 3, samples=2, copies=1, levels="optimal", seed=11)
    levels = store.levels()[0]
    ds = torch_zipml.double_sample(torch.from_numpy(u), 3, levels=torch.from_numpy(levels.copy()), granularity=ONE,
                                   seed=11)
    np.testing.assert_array_equal(store.codes(0, 0), ds.index.numpy() + (ds.up.numpy() & 1))
    np.testing.assert_array_equal(store.codes(0, 1), ds.index.numpy() + ((ds.up.numpy() >> 1) & 1))
    # Optimal levels spend their intervals where the mass is: lower rounding variance than uniform.
    uniform = SampleStore.build(u, 3, samples=2)

    def total_variance(s):
        lv, j = s.levels()[0], s.intervals(0)[:, 0]
        return float(((lv[j + 1] - u[:, 0]) * (u[:, 0] - lv[j])).sum())

    assert total_variance(store) < 0.8 * total_variance(uniform)


def test_reference_rounding_matches_the_core():
    u = scaled_data(rows=5, cols=13)
    q = torch_zipml.quantize(torch.from_numpy(u), 4, granularity=ONE, seed=2**40 + 3, offset=2**57 + 5)
    codes = reference.quantize_uniform(u.ravel(), 1.0, 16, 2**40 + 3, 2**57 + 5, np.arange(u.size))
    np.testing.assert_array_equal(codes.reshape(u.shape), q.codes.numpy())


def test_store_rejects_bad_arguments():
    u = scaled_data(rows=3, cols=4)
    with pytest.raises(ValueError, match="bits must be one of 1, 2"):
        SampleStore.build(u, 9)
    with pytest.raises(ValueError, match="bits must be one of 1, 2"):
        SampleStore.build(u, 0)
    with pytest.raises(ValueError, match=r"u must lie in \[-1, 1\]"):
        SampleStore.build(u * 3, 4)
    with pytest.raises(ValueError, match="copies must be at least 1"):
        SampleStore.build(u, 4, copies=0)
    with pytest.raises(ValueError, match="levels must be 'uniform' or 'optimal'"):
        SampleStore.build(u, 4, levels="log")
