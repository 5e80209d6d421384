"""The CUDA kernels (kernels/cuda/quantize_kernels.cuh) against the CPU kernels, bit for bit.

The CPU kernels are checked against slow references elsewhere (test_quantize.py); here every public
operator run on a GPU must give exactly the CPU's bits for the same seed: the Philox words are
keyed by element index, and both sides run the per-element float32 math of kernels/common without
fused multiply-adds. One thing may differ: the float64 sums of the histogram behind
optimal_levels. The GPU sums in fixed point (exact to 2^-72 per value, order-independent, hence
deterministic), the CPU in float64 in its own order, so they agree within the CPU's rounding error,
and the levels agree unless two candidate sets tie within it (then their variances are equal).

Every GPU test is skipped when torch.cuda.is_available() is false.
"""

import importlib.util

import numpy as np
import pytest
import torch

import reference as ref
import torch_zipml as z

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

ops = torch.ops.zipml
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
SEED = 0x5EED2017
# Integer views for a bitwise comparison of each float dtype.
BITS_VIEW = {torch.float32: torch.int32, torch.float64: torch.int64, torch.float16: torch.int16,
             torch.bfloat16: torch.int16}
PRIVATE_OPS = ["_fake_quantize_into", "_quantize_codes", "_double_sample_codes", "_dequantize_codes",
               "_level_histogram", "_absmax", "_pack", "_unpack"]


def sample(shape, dtype=torch.float32, seed=0, std=3.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g, dtype=torch.float64) * std).to(dtype)


def codebook(k, seed=1):
    """k distinct sorted levels in [-1, 1], endpoints not necessarily included."""
    g = torch.Generator().manual_seed(seed)
    pts = torch.unique(torch.rand(4 * k + 8, generator=g) * 2 - 1)
    pts = pts[torch.randperm(pts.numel(), generator=g)[:k]]
    assert pts.numel() == k
    return pts.sort().values


def assert_identical(got, want, what=""):
    """got (any device) equals want bit for bit: same dtype, shape, and bits, signed zeros included.
    NaNs must sit at the same places; their payloads may differ (device conversions to float16 and
    bfloat16 produce canonical NaNs)."""
    got = got.detach().cpu()
    want = want.detach().cpu()
    assert got.dtype == want.dtype, f"{what}: dtype {got.dtype} != {want.dtype}"
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    if not got.is_floating_point():
        bad = got != want
    else:
        nan_got, nan_want = got.isnan(), want.isnan()
        assert torch.equal(nan_got, nan_want), f"{what}: NaN at different places"
        view = BITS_VIEW[got.dtype]
        bad = (got.masked_fill(nan_got, 0).contiguous().view(view)
               != want.masked_fill(nan_want, 0).contiguous().view(view))
    if bad.any():
        i = int(bad.reshape(-1).nonzero()[0])
        raise AssertionError(f"{what}: {int(bad.sum())} of {bad.numel()} elements differ; first at flat index "
                             f"{i}: {got.reshape(-1)[i].item()!r} vs {want.reshape(-1)[i].item()!r}")


def test_assert_identical_sees_one_ulp_and_signed_zeros():
    """The comparison the GPU tests rely on can fail (runs without a GPU)."""
    a = torch.tensor([1.0, 0.0, float("nan")])
    assert_identical(a, a.clone())
    with pytest.raises(AssertionError, match="1 of 3"):
        assert_identical(torch.tensor([1.0, -0.0, float("nan")]), a)
    with pytest.raises(AssertionError, match="1 of 3"):
        assert_identical(torch.nextafter(a, torch.tensor(2.0)).where(a == 1, a), a)
    with pytest.raises(AssertionError, match="NaN"):
        assert_identical(torch.tensor([1.0, 0.0, 0.0]), a)


def rounding_variance(x, scale, levels):
    """Total stochastic-rounding variance sum (L_j+1 - v)(v - L_j) over v = clamp(x * (1/s)), with v
    computed in float32 as the kernels do, summed in float64."""
    levels = levels.double().cpu()
    v = x.float().cpu() * scale.float().cpu().reciprocal()
    v = v.double().clamp(float(levels[0]), float(levels[-1])).reshape(-1)
    j = (torch.searchsorted(levels, v, right=True) - 1).clamp(0, max(levels.numel() - 2, 0))
    return float(((levels[(j + 1).clamp(max=levels.numel() - 1)] - v) * (v - levels[j])).sum())


def assert_equivalent_levels(gpu_levels, cpu_levels, x, scale):
    """Optimal levels from the GPU and CPU histograms: equal, or (a tie within the CPU's float64
    rounding) of equal total variance."""
    if torch.equal(gpu_levels.cpu(), cpu_levels.cpu()):
        return
    vg, vc = rounding_variance(x, scale, gpu_levels), rounding_variance(x, scale, cpu_levels)
    assert abs(vg - vc) <= 1e-9 * max(vc, 1e-300), f"levels differ and so do their variances: {vg!r} vs {vc!r}"


# ---- the kernels are there -----------------------------------------------------------------------

@needs_cuda
@pytest.mark.parametrize("op", PRIVATE_OPS)
def test_every_device_kernel_has_a_cuda_implementation(op):
    assert torch._C._dispatch_has_kernel_for_dispatch_key(f"zipml::{op}", "CUDA")


# ---- fake_quantize, quantize, double_sample: every option, every dtype -------------------------

def level_choices(bits):
    choices = ["uniform", "optimal", codebook(min(1 << bits, 5), seed=bits)]
    if bits == 8:
        choices.append(codebook(256, seed=99))
    return choices


def granularity_choices(x):
    clip = 0.5 * x.float().abs().amax(dim=1, keepdim=True)  # a given per-channel scale that clips
    return ["tensor", "channel", "row", clip]


def cpu_levels_for(levels, x, bits, granularity, candidates=1024):
    """The levels argument that makes the CPU quantize with the levels the GPU used: the GPU's
    optimal levels are passed as a codebook, after checking them against the CPU's."""
    if not (isinstance(levels, str) and levels == "optimal"):
        return levels
    g_gpu = granularity.cuda() if isinstance(granularity, torch.Tensor) else granularity
    q_gpu = z.quantize(x.cuda(), bits, levels="optimal", granularity=g_gpu, candidates=candidates, seed=0)
    q_cpu = z.quantize(x, bits, levels="optimal", granularity=granularity, candidates=candidates, seed=0)
    assert_equivalent_levels(q_gpu.levels, q_cpu.levels, x, q_cpu.scale)
    assert_identical(q_gpu.scale, q_cpu.scale, "optimal: scale")
    return q_gpu.levels.cpu()


@needs_cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("bits", range(1, 9))
def test_quantizers_match_cpu(bits, dtype):
    x = sample((37, 53), dtype, seed=bits)  # 1961 elements: odd, and more than the 1024 candidates
    xg = x.cuda()
    for granularity in granularity_choices(x):
        gg = granularity.cuda() if isinstance(granularity, torch.Tensor) else granularity
        for levels in level_choices(bits):
            lg = levels.cuda() if isinstance(levels, torch.Tensor) else levels
            lc = cpu_levels_for(levels, x, bits, granularity)
            name = f"bits={bits} levels={levels if isinstance(levels, str) else levels.numel()} " \
                   f"granularity={granularity if isinstance(granularity, str) else 'given'}"
            for rounding in ["stochastic", "nearest"]:
                kw = dict(rounding=rounding, seed=SEED, offset=bits)
                assert_identical(z.fake_quantize(xg, bits, levels=lg, granularity=gg, **kw),
                                 z.fake_quantize(x, bits, levels=lc, granularity=granularity, **kw),
                                 f"fake_quantize {name} {rounding}")
                qg = z.quantize(xg, bits, levels=lg, granularity=gg, **kw)
                qc = z.quantize(x, bits, levels=lc, granularity=granularity, **kw)
                assert_identical(qg.codes, qc.codes, f"quantize codes {name} {rounding}")
                assert_identical(qg.scale, qc.scale, f"quantize scale {name} {rounding}")
                assert_identical(qg.levels, qc.levels, f"quantize levels {name} {rounding}")
                assert_identical(qg.dequantize(dtype), qc.dequantize(dtype), f"dequantize {name} {rounding}")
            dg = z.double_sample(xg, bits, levels=lg, granularity=gg, seed=SEED, offset=7)
            dc = z.double_sample(x, bits, levels=lc, granularity=granularity, seed=SEED, offset=7)
            assert_identical(dg.index, dc.index, f"double_sample index {name}")
            assert_identical(dg.up, dc.up, f"double_sample up {name}")
            for got, want in zip(dg.decode(dtype), dc.decode(dtype)):
                assert_identical(got, want, f"double_sample decode {name}")


@needs_cuda
@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 7, 9, 1001, 4099])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_odd_sizes_and_misaligned_pointers(n, dtype):
    """Partial Philox blocks at the end, and inputs/outputs whose data pointer is not 16-byte
    aligned (a storage offset of one element): the kernels fall back to scalar accesses."""
    base = sample((n + 1,), dtype, seed=n)
    for x in [base[:n], base[1:]]:
        for levels in ["uniform", codebook(3)]:
            lg = levels.cuda() if isinstance(levels, torch.Tensor) else levels
            kw = dict(seed=SEED, offset=n)
            assert_identical(z.fake_quantize(x.cuda(), 2, levels=lg, **kw), z.fake_quantize(x, 2, levels=levels, **kw))
            assert_identical(z.quantize(x.cuda(), 2, levels=lg, **kw).codes,
                             z.quantize(x, 2, levels=levels, **kw).codes)
            dg, dc = z.double_sample(x.cuda(), 2, levels=lg, **kw), z.double_sample(x, 2, levels=levels, **kw)
            assert_identical(dg.index, dc.index)
            assert_identical(dg.up, dc.up)
        out = torch.empty(n + 1, dtype=dtype, device="cuda")[1:]  # misaligned out
        z.fake_quantize(x.cuda(), 3, seed=SEED, out=out)
        assert_identical(out, z.fake_quantize(x, 3, seed=SEED))


@needs_cuda
def test_non_contiguous_inputs_and_outputs():
    x = sample((40, 70), torch.float32, seed=3)
    t = x.t()
    want = z.fake_quantize(t, 4, seed=SEED, granularity="channel")
    assert_identical(z.fake_quantize(t.cuda(), 4, seed=SEED, granularity="channel"), want)
    out = torch.empty(40, 70, device="cuda").t()  # non-contiguous out: written through a copy
    z.fake_quantize(t.cuda(), 4, seed=SEED, granularity="channel", out=out)
    assert_identical(out, want)
    sliced = x[:, ::3]
    assert_identical(z.quantize(sliced.cuda(), 3, seed=SEED).codes, z.quantize(sliced, 3, seed=SEED).codes)
    # In place: out is x itself.
    xg = x.clone().cuda()
    z.fake_quantize(xg, 2, seed=SEED, out=xg)
    assert_identical(xg, z.fake_quantize(x, 2, seed=SEED))


@needs_cuda
def test_many_blocks_per_thread():
    """Enough elements that every thread of the capped grid loops many times, per channel (scale
    groups not aligned to Philox blocks), float32 and bfloat16."""
    for dtype in [torch.float32, torch.bfloat16]:
        x = sample((1031, 4099), dtype, seed=11)  # 4.2M elements, 1031 groups of an odd size
        for rounding in ["stochastic", "nearest"]:
            kw = dict(rounding=rounding, granularity="channel", seed=SEED)
            assert_identical(z.fake_quantize(x.cuda(), 3, **kw), z.fake_quantize(x, 3, **kw))
            assert_identical(z.quantize(x.cuda(), 3, **kw).codes, z.quantize(x, 3, **kw).codes)


@needs_cuda
def test_more_than_2_pow_32_elements():
    """Element indices past 2^31 and 2^32 (int64 indexing and the 64-bit group division): nearest
    rounding is a function of the element alone, so slices around the boundaries are checked
    against the CPU on the same slices; stochastic codes must bracket the value."""
    free, _ = torch.cuda.mem_get_info()
    n_rows, row = 4, (1 << 30) + 3  # 2^32 + 12 float16 elements, groups of a non-power-of-two size
    if free < 24 * (1 << 30):
        pytest.skip("needs 24 GiB of free GPU memory")
    g = torch.Generator(device="cuda").manual_seed(5)
    x = torch.randn((n_rows, row), generator=g, device="cuda", dtype=torch.float16)
    scale = (0.5 + torch.arange(n_rows, device="cuda", dtype=torch.float32)).reshape(n_rows, 1)
    flat = x.reshape(-1)
    windows = [slice(0, 64), slice((1 << 31) - 32, (1 << 31) + 32), slice((1 << 32) - 32, (1 << 32) + 12)]
    codes = z.quantize(x, 4, rounding="nearest", granularity=scale, seed=1).codes.reshape(-1)
    for w in windows:
        idx = torch.arange(w.start, w.stop)
        rows = (idx // row).cuda()
        want = z.quantize(flat[w].cpu(), 4, rounding="nearest", granularity=scale[rows].reshape(-1).cpu(), seed=1).codes
        assert_identical(codes[w], want.reshape(-1), f"nearest codes at {w}")
    del codes
    out = torch.empty_like(x)
    z.fake_quantize(x, 4, granularity=scale, seed=1, out=out)
    levels = torch.linspace(-1, 1, 16, device="cuda")
    for w in windows:
        rows = (torch.arange(w.start, w.stop) // row).cuda()
        s = scale.reshape(-1)[rows]
        v = (flat[w].float() / s).clamp(-1, 1)
        j = (torch.searchsorted(levels, v, right=True) - 1).clamp(0, 14)
        q = out.reshape(-1)[w].float() / s  # float16 output: within 2^-9 relative of L_code * s
        assert bool(((q >= levels[j] - 5e-3) & (q <= levels[j + 1] + 5e-3)).all()), f"stochastic values at {w}"
    del x, out
    torch.cuda.empty_cache()


# ---- non-finite values and bad input -----------------------------------------------------------

@needs_cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_non_finite_values_as_on_cpu(dtype):
    x = sample((6, 11), dtype, seed=4)
    x[1, 2], x[2, 3], x[3, 4], x[4, 0], x[4, 1] = float("nan"), float("inf"), -float("inf"), 0.0, -0.0
    given = torch.tensor([[1.0], [2.0], [0.0], [-1.0], [float("nan")], [float("inf")]])
    for granularity in ["tensor", "row", given, torch.tensor(3.0)]:
        gg = granularity.cuda() if isinstance(granularity, torch.Tensor) else granularity
        for rounding in ["stochastic", "nearest"]:
            kw = dict(rounding=rounding, seed=SEED)
            assert_identical(z.fake_quantize(x.cuda(), 3, granularity=gg, **kw),
                             z.fake_quantize(x, 3, granularity=granularity, **kw), f"{granularity}")
    # Codes cannot hold NaN or Inf: the same ValueError on both devices.
    for fn in [lambda t: z.quantize(t, 3, seed=1), lambda t: z.double_sample(t, 3, seed=1),
               lambda t: z.optimal_levels(t, 4, candidates=8), lambda t: z.optimal_levels(t, 4)]:
        messages = []
        for device in ["cpu", "cuda"]:
            with pytest.raises(ValueError, match="NaN or Inf") as err:
                fn(x.to(device))
            messages.append(str(err.value).splitlines()[0])
        assert messages[0] == messages[1]
    # An invalid given scale with finite x: quantize raises, fake_quantize gives NaN for the group.
    finite = sample((6, 11), dtype, seed=5)
    for fn in [lambda t, s: z.quantize(t, 3, granularity=s, seed=1),
               lambda t, s: z.double_sample(t, 3, granularity=s, seed=1)]:
        for device in ["cpu", "cuda"]:
            with pytest.raises(ValueError, match="NaN or Inf"):
                fn(finite.to(device), given.to(device))


@needs_cuda
def test_errors_read_back_from_the_device():
    codes = torch.tensor([0, 1, 2, 3, 1], dtype=torch.uint8)
    scale, levels = torch.tensor([1.0]), torch.tensor([-1.0, 0.0, 1.0])  # code 3 is out of range
    for device in ["cpu", "cuda"]:
        with pytest.raises(ValueError, match=r"dequantize: a code is >= the number of levels \(3\)"):
            z.dequantize(codes.to(device), scale.to(device), levels.to(device))
        with pytest.raises(ValueError, match=r"pack: a code does not fit in bits=1 \(codes must be < 2\)"):
            z.pack(codes.to(device), 1)
    # double_sample_decode: index K-2 with its round-up bit set is level K-1, index K-1 plus one is not.
    index = torch.tensor([1, 2], dtype=torch.uint8)
    up = torch.tensor([3, 0], dtype=torch.uint8)
    first, second = torch.ops.zipml.double_sample_decode(index.cuda(), up.cuda(), scale.cuda(), levels.cuda())
    assert first.tolist() == [1.0, 1.0] and second.tolist() == [1.0, 1.0]
    for device in ["cpu", "cuda"]:
        with pytest.raises(ValueError, match="dequantize: a code is >= the number of levels"):
            torch.ops.zipml.double_sample_decode(index.to(device), torch.tensor([3, 1], dtype=torch.uint8).to(device),
                                                 scale.to(device), levels.to(device))


# ---- dequantize, pack, unpack --------------------------------------------------------------------

@needs_cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_dequantize_matches_cpu(dtype):
    g = torch.Generator().manual_seed(2)
    for k, shape, scale_shape in [(256, (3, 7, 5), (3, 1, 1)), (5, (1001,), (1,)), (2, (9, 4), (9, 1))]:
        codes = torch.randint(0, k, shape, generator=g, dtype=torch.uint8)
        scale = torch.rand(scale_shape, generator=g) * 4
        if scale.numel() > 1:
            scale.view(-1)[0] = float("nan")  # an invalid scale: NaN for its group
        levels = codebook(k, seed=k)
        assert_identical(z.dequantize(codes.cuda(), scale.cuda(), levels.cuda(), dtype),
                         z.dequantize(codes, scale, levels, dtype), f"k={k}")
        # Non-contiguous codes of the same shape.
        t = codes.transpose(0, -1).contiguous().transpose(0, -1) if codes.dim() > 1 else codes[::2]
        s = scale if codes.dim() > 1 else scale[:1]
        assert not t.is_contiguous() or codes.dim() == 1
        assert_identical(z.dequantize(t.cuda(), s.cuda(), levels.cuda(), dtype), z.dequantize(t, s, levels, dtype))


@needs_cuda
@pytest.mark.parametrize("bits", range(1, 9))
def test_pack_unpack_match_cpu(bits):
    g = torch.Generator().manual_seed(bits)
    for n in [0, 1, 2, 3, 7, 8, 9, 1001, (1 << 20) + 5]:
        codes = torch.randint(0, 1 << bits, (n,), generator=g, dtype=torch.uint8)
        packed_cpu = z.pack(codes, bits)
        packed_gpu = z.pack(codes.cuda(), bits)
        assert_identical(packed_gpu, packed_cpu, f"pack n={n}")
        assert_identical(z.unpack(packed_gpu, bits, n), codes, f"unpack n={n}")
        if n > 2:
            assert_identical(z.unpack(packed_gpu, bits, n - 2), codes[: n - 2])
            strided = codes[::2]
            assert_identical(z.pack(strided.cuda(), bits), z.pack(strided, bits))


# ---- optimal levels and their histogram ----------------------------------------------------------

def histogram_tolerance(count, cpu_sum):
    """|GPU - CPU| for a bin of `count` values in [-1, 1]: the CPU's float64 sum (in any order) is
    within (count - 1) 2^-53 sum|terms| <= count^2 2^-53 of the exact sum, the GPU's within
    count 2^-72 plus one rounding."""
    return count * count * 2.0 ** -53 + cpu_sum.abs() * 2.0 ** -53 + count * 2.0 ** -72 + 1e-300


@needs_cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_absmax_matches_cpu(dtype):
    """The max-abs of a computed scale: runs shorter than a block, runs split into pieces, a NaN in
    one run and an Inf in another, no elements."""
    for groups, inner in ((1, 1), (1, 3 * 4096 + 5), (7, 4099), (1000, 3), (4, 0)):
        x = sample((groups, inner), dtype, seed=inner)
        if inner > 10:
            x[0, 5], x[2, 9] = float("nan"), -float("inf")
        assert_identical(ops._absmax(x.cuda(), groups), ops._absmax(x, groups), f"{groups} runs of {inner}")


@needs_cuda
def test_ties_match_cpu():
    """Stochastic rounding where the tie word decides (probability 2^-16 per element in random data):
    on the 1-bit grid with scale 1, x = -1 + f * 2^-15 puts f = frac * 2^16 at the element's draw r,
    one step either side, or strictly between r and r + 1 (as test_cpu_isa.py builds them)."""
    n, seed, offset = 4099, 12345, 6
    r = ref.philox_draws(seed, offset, np.arange(n)).astype(np.int64)
    step = np.array([-1.0, 0.0, 1.0, 2.0**-9, 0.5, 1.0 - 2.0**-9])[np.arange(n) % 6]
    x = torch.from_numpy((-1.0 + np.clip(r + step, 0.0, 65536.0) * 2.0**-15).astype(np.float32))
    one = torch.tensor(1.0)
    for levels in ("uniform", torch.tensor([-1.0, 1.0])):
        kw = dict(levels=levels, seed=seed, offset=offset, granularity=one)
        cuda_kw = dict(kw, levels=levels if isinstance(levels, str) else levels.cuda(), granularity=one.cuda())
        assert_identical(z.quantize(x.cuda(), 1, **cuda_kw).codes, z.quantize(x, 1, **kw).codes, f"codes {levels}")
        assert_identical(z.fake_quantize(x.cuda(), 1, **cuda_kw), z.fake_quantize(x, 1, **kw), f"fake {levels}")
    ds_cuda = z.double_sample(x.cuda(), 1, seed=seed, offset=offset, granularity=one.cuda())
    ds = z.double_sample(x, 1, seed=seed, offset=offset, granularity=one)
    assert_identical(ds_cuda.first(), ds.first(), "first sample")
    assert_identical(ds_cuda.second(), ds.second(), "second sample")


@needs_cuda
@pytest.mark.parametrize("bins", [1, 7, 1024, 1278, 5000])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_level_histogram_matches_cpu(bins, dtype):
    """5000 bins do not fit in shared memory: global accumulators."""
    x = sample((16, 4099), dtype, seed=bins)
    scale = x.float().abs().amax(dim=1, keepdim=True) * 0.75  # clips: mass at -1 and 1
    stats_cpu, range_cpu = ops._level_histogram(x, scale, bins)
    stats_gpu, range_gpu = ops._level_histogram(x.cuda(), scale.cuda(), bins)
    assert stats_gpu.device.type == "cuda" and range_gpu.device.type == "cuda"
    stats_gpu = stats_gpu.cpu()
    assert torch.equal(stats_gpu[:, 0], stats_cpu[:, 0]), "counts"
    assert torch.equal(range_gpu.cpu(), range_cpu), "range"
    assert stats_gpu.shape == stats_cpu.shape == (bins, 2)
    tol = histogram_tolerance(stats_cpu[:, 0], stats_cpu[:, 1])
    err = (stats_gpu[:, 1] - stats_cpu[:, 1]).abs()
    assert bool((err <= tol).all()), f"sums differ by {float((err - tol).max())} beyond tolerance"


@needs_cuda
def test_level_histogram_is_deterministic():
    """Fixed-point sums: the same bits however the atomics interleave."""
    x = sample((1 << 21,), torch.float32, seed=8).cuda()
    scale = x.abs().amax().reshape(1)
    first = ops._level_histogram(x, scale, 1024)
    for _ in range(3):
        again = ops._level_histogram(x, scale, 1024)
        assert_identical(again[0], first[0])
        assert_identical(again[1], first[1])
    levels = z.optimal_levels(x, 16)
    assert_identical(z.optimal_levels(x, 16), levels)


@needs_cuda
def test_level_histogram_of_empty_input():
    for bins in [1, 10]:
        stats_cpu, range_cpu = ops._level_histogram(torch.empty(0), torch.ones(1), bins)
        stats_gpu, range_gpu = ops._level_histogram(torch.empty(0, device="cuda"), torch.ones(1, device="cuda"), bins)
        assert_identical(stats_gpu, stats_cpu)
        assert_identical(range_gpu, range_cpu)


@needs_cuda
@pytest.mark.parametrize("num_levels", [2, 4, 16, 256])
def test_optimal_levels_match_cpu(num_levels):
    small = sample((500,), torch.float32, seed=num_levels)  # <= candidates: the distinct values, exact
    assert_identical(z.optimal_levels(small.cuda(), num_levels), z.optimal_levels(small, num_levels))
    for dtype in [torch.float32, torch.float64]:
        x = sample((64, 1000), dtype, seed=num_levels)
        for scale in [None, x.float().abs().amax(dim=1, keepdim=True)]:
            sg = None if scale is None else scale.cuda()
            got = z.optimal_levels(x.cuda(), num_levels, scale=sg)
            want = z.optimal_levels(x, num_levels, scale=scale)
            assert got.device.type == "cuda"
            s = x.float().abs().amax() if scale is None else scale
            assert_equivalent_levels(got, want, x, s)


# ---- autograd, streams, no synchronisation ------------------------------------------------------

@needs_cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_straight_through_backward_matches_cpu(dtype):
    x = sample((9, 13), dtype, seed=6)
    for kw in [dict(), dict(granularity=torch.tensor(2.0)), dict(levels=codebook(4)), dict(granularity="row")]:
        grads = []
        for device in ["cpu", "cuda"]:
            xd = x.to(device).requires_grad_()
            dkw = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}
            y = z.fake_quantize(xd, 2, seed=SEED, **dkw)
            (y * torch.arange(y.numel(), device=device, dtype=dtype).reshape(y.shape)).sum().backward()
            grads.append(xd.grad)
        assert_identical(grads[1], grads[0], str(kw))
    # quantize_grad: identity forward, stochastic quantization of the gradient backward.
    grads = []
    for device in ["cpu", "cuda"]:
        xd = x.to(device).requires_grad_()
        z.quantize_grad(xd, 3, seed=SEED).backward(sample((9, 13), dtype, seed=7).to(device))
        grads.append(xd.grad)
    assert_identical(grads[1], grads[0], "quantize_grad")


@needs_cuda
def test_side_stream_and_other_devices():
    x = sample((300, 7), torch.float32, seed=9)
    want = z.fake_quantize(x, 3, seed=SEED)
    stream = torch.cuda.Stream()
    xg = x.cuda()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        got = z.fake_quantize(xg, 3, seed=SEED)
        codes = z.quantize(xg, 3, seed=SEED).codes
    stream.synchronize()
    assert_identical(got, want)
    assert_identical(codes, z.quantize(x, 3, seed=SEED).codes)
    if torch.cuda.device_count() > 1:
        last = torch.device("cuda", torch.cuda.device_count() - 1)
        assert_identical(z.fake_quantize(x.to(last), 3, seed=SEED), want)
        assert_identical(z.quantize(x.to(last), 3, seed=SEED).codes, z.quantize(x, 3, seed=SEED).codes)


@needs_cuda
def test_fake_quantize_never_synchronises():
    """fake_quantize (the training op) propagates NaN instead of checking: no host round trip.
    quantize checks its input on the device and reads the verdict back: it does synchronise,
    which shows that the debug mode sees it."""
    x = sample((64, 100), torch.float32, seed=10).cuda()
    out = torch.empty_like(x)
    scale = torch.full((64, 1), 2.0, device="cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for kw in [dict(), dict(granularity="channel", rounding="nearest"), dict(granularity=scale)]:
            z.fake_quantize(x, 4, seed=SEED, out=out, **kw)
        with pytest.raises(RuntimeError, match="synchroniz"):
            z.quantize(x, 4, seed=SEED)
    finally:
        torch.cuda.set_sync_debug_mode("default")


@needs_cuda
def test_fake_quantize_replays_in_a_cuda_graph():
    """No host round trip also means fake_quantize can be captured once and replayed (the seed is
    fixed at capture: each replay draws the same words)."""
    x = sample((64, 100), torch.float32, seed=15)
    xg, out = x.cuda(), torch.empty(64, 100, device="cuda")
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm up outside the capture
        z.fake_quantize(xg, 3, seed=SEED, granularity="channel", out=out)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        z.fake_quantize(xg, 3, seed=SEED, granularity="channel", out=out)
    out.zero_()
    graph.replay()
    torch.cuda.synchronize()
    assert_identical(out, z.fake_quantize(x, 3, seed=SEED, granularity="channel"))


@needs_cuda
@pytest.mark.parametrize("shape", [(0,), (0, 5), (5, 0), ()])
def test_empty_and_scalar_tensors(shape):
    x = sample(shape, torch.float32, seed=12)
    for g in ["tensor", "channel", "row"]:
        kw = dict(seed=1, granularity=g)
        assert_identical(z.fake_quantize(x.cuda(), 2, **kw), z.fake_quantize(x, 2, **kw))
        assert_identical(z.quantize(x.cuda(), 2, **kw).codes, z.quantize(x, 2, **kw).codes)
        dg, dc = z.double_sample(x.cuda(), 2, **kw), z.double_sample(x, 2, **kw)
        assert_identical(dg.first(), dc.first())
    codes = torch.zeros(shape, dtype=torch.uint8)
    assert_identical(z.pack(codes.cuda(), 3), z.pack(codes, 3))
    assert_identical(z.unpack(z.pack(codes.cuda(), 3), 3, codes.numel()), codes.reshape(-1))


# ---- torch.library.opcheck on CUDA samples ---------------------------------------------------------

def opcheck_samples():
    def x_(shape=(4, 9), requires_grad=False, dtype=torch.float32):
        return sample(shape, dtype, seed=13).cuda().requires_grad_(requires_grad)

    book = torch.tensor([-0.8, -0.1, 0.3, 0.9], device="cuda")
    q = z.quantize(x_(), 3, granularity="channel", seed=1)
    d = z.double_sample(x_(), 2, seed=1)
    codes = z.quantize(x_((37,)), 3, seed=2).codes
    scale = torch.ones(1, device="cuda")
    return [
        (ops.fake_quantize.default, (x_(requires_grad=True), 2), dict(seed=1)),
        (ops.fake_quantize.default, (x_(requires_grad=True, dtype=torch.float16), 4),
         dict(rounding="nearest", granularity="channel", seed=1)),
        (ops.fake_quantize.default, (x_(requires_grad=True), 2),
         dict(levels="codebook", codebook=book, granularity="auto", scale=torch.tensor([1.5], device="cuda"), seed=3)),
        (ops.fake_quantize.default, (x_(requires_grad=True, dtype=torch.float64), 3),
         dict(levels="optimal", granularity="row", seed=2)),
        (ops.fake_quantize.out, (x_(), 2), dict(seed=1, out=torch.empty(4, 9, device="cuda"))),
        (ops.quantize.default, (x_(), 3), dict(granularity="row", seed=5)),
        (ops.quantize.default, (x_((40, 40)), 4), dict(levels="optimal", seed=5)),
        (ops.dequantize.default, (q.codes, q.scale.requires_grad_(), q.levels.requires_grad_()), {}),
        (ops.quantize_grad.default, (x_(requires_grad=True), 4), dict(seed=7)),
        (ops.double_sample.default, (x_(dtype=torch.bfloat16), 2), dict(seed=3)),
        (ops.double_sample_decode.default, (d.index, d.up, d.scale, d.levels), dict(dtype=torch.float16)),
        (ops.optimal_levels.default, (x_((2000,)), 8), dict(candidates=256)),
        (ops.pack.default, (codes, 3), {}),
        (ops.unpack.default, (z.pack(codes, 3), 3, 37), {}),
        (ops._level_histogram.default, (x_((3, 100)), scale, 64), {}),
        (ops._quantize_codes.default, (x_(), scale, None, 4, 0, 1, 0), {}),
    ]


@needs_cuda
def test_opcheck_on_cuda():
    for op, args, kwargs in opcheck_samples():
        torch.library.opcheck(op, args, kwargs)


@needs_cuda
def test_compile_fullgraph_on_cuda():
    """Elementwise work after the operator, exact whether or not the compiler fuses it into an
    FMA (2y is exact), so that compiled and eager agree bit for bit."""
    w = sample((16, 8), torch.float32, seed=14).cuda()

    def f(weight):
        return z.fake_quantize(weight, 2, seed=11, granularity="channel") * 2.0 + 1.0

    backends = ["aot_eager"] + (["inductor"] if importlib.util.find_spec("triton") else [])
    for backend in backends:
        assert_identical(torch.compile(f, fullgraph=True, backend=backend)(w), f(w), backend)
