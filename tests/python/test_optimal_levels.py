"""Variance-optimal levels (ZipML §5) against brute force, a plain O(K M^2) dynamic program, and
the uniform grid."""

import itertools

import numpy as np
import pytest
import torch

import reference as ref
import torch_zipml as z


def variance(values: np.ndarray, levels: np.ndarray) -> float:
    return ref.rounding_variance(values.astype(np.float64), levels.astype(np.float64))


def normalized(x: torch.Tensor) -> np.ndarray:
    """The values the quantizer rounds: v = clamp(x * (1/max|x|), -1, 1), in float32."""
    s = np.float32(x.abs().max())
    inv = ref.inverse_scale(np.array([s]))[0]
    return np.clip(x.numpy().astype(np.float32) * inv, -1, 1).astype(np.float32)


def brute_force(values: np.ndarray, k: int) -> float:
    pts = np.unique(values)
    if len(pts) <= k:
        return 0.0
    inner = pts[1:-1]
    return min(variance(values, np.array([pts[0], *c, pts[-1]]))
               for c in itertools.combinations(inner, k - 2))


def plain_dp(values: np.ndarray, candidates: np.ndarray, k: int) -> float:
    """The textbook O(K M^2) program of the paper over the given candidate points."""
    m = len(candidates)
    cost = np.full((m, m), np.inf)
    for a in range(m):
        for b in range(a + 1, m):
            inside = values[(values >= candidates[a]) & (values <= candidates[b])].astype(np.float64)
            cost[a, b] = np.sum((candidates[b] - inside) * (inside - candidates[a]))
    best = np.full(m, np.inf)
    best[0] = 0.0
    for _ in range(k - 1):
        best = np.array([min([best[a] + cost[a, b] for a in range(b)], default=np.inf) for b in range(m)])
    return float(best[m - 1])


DISTRIBUTIONS = {
    "normal": lambda g, n: torch.randn(n, generator=g),
    "uniform": lambda g, n: torch.rand(n, generator=g) * 2 - 1,
    "skewed": lambda g, n: torch.empty(n).exponential_(generator=g) ** 2,
    "bimodal": lambda g, n: torch.randn(n, generator=g) * 0.05 + torch.randint(0, 2, (n,), generator=g) * 2 - 1,
    "ties": lambda g, n: torch.randint(-3, 4, (n,), generator=g).float(),
}


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("k", [2, 3, 4, 5])
def test_equals_brute_force_on_small_inputs(seed, k):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(int(torch.randint(3, 12, (1,), generator=g)), generator=g)
    v = normalized(x)
    levels = z.optimal_levels(x, k).numpy()
    assert levels.shape == (k,) and np.all(np.diff(levels) > 0)
    assert variance(v, levels) == pytest.approx(brute_force(v, k), rel=1e-6, abs=1e-12)


@pytest.mark.parametrize("dist", sorted(DISTRIBUTIONS))
@pytest.mark.parametrize("k", [2, 4, 8, 16])
@pytest.mark.parametrize("n", [500, 20000])
def test_never_worse_than_uniform(dist, k, n):
    g = torch.Generator().manual_seed(k * n)
    x = DISTRIBUTIONS[dist](g, n)
    v = normalized(x)
    levels = z.optimal_levels(x, k, candidates=1024).numpy()
    assert levels.shape == (k,) and np.all(np.diff(levels) > 0)
    assert levels[0] >= -1 and levels[-1] <= 1
    opt, uni = variance(v, levels), variance(v, ref.uniform_levels(k))
    assert opt <= uni * (1 + 1e-6) + 1e-9


@pytest.mark.parametrize("k", [3, 4, 6])
def test_grid_candidates_match_the_plain_dynamic_program(k):
    """Above `candidates` elements, the levels are optimal among {min v, grid points
    -1 + 2t/B (B a multiple of K-1), max v}: the divide-and-conquer DP equals the plain one."""
    g = torch.Generator().manual_seed(k)
    x = torch.randn(3000, generator=g) ** 3
    m = 40
    v = normalized(x)
    bins = -(-m // (k - 1)) * (k - 1)
    grid = np.array([np.float32(-1 + 2 * t / bins) for t in range(1, bins)], np.float32)
    cands = np.concatenate([[v.min()], grid[(grid > v.min()) & (grid < v.max())], [v.max()]])
    levels = z.optimal_levels(x, k, candidates=m).numpy()
    assert np.isin(levels, cands).all()
    assert variance(v, levels) == pytest.approx(plain_dp(v, cands, k), rel=1e-9, abs=1e-12)


def test_more_candidates_approach_the_exact_optimum():
    g = torch.Generator().manual_seed(7)
    x = torch.randn(1500, generator=g)
    v = normalized(x)
    exact = variance(v, z.optimal_levels(x, 6, candidates=2000).numpy())  # distinct values: exact
    coarse = variance(v, z.optimal_levels(x, 6, candidates=16).numpy())
    fine = variance(v, z.optimal_levels(x, 6, candidates=1024).numpy())
    assert exact <= fine <= coarse and fine <= exact * 1.01


def test_fewer_distinct_values_than_levels():
    x = torch.tensor([0.5, -1.0, 0.5, 1.0])
    levels = z.optimal_levels(x, 8)
    assert levels.numel() == 8 and torch.all(levels.diff() > 0)
    assert set([-1.0, 0.5, 1.0]) <= set(levels.tolist())
    assert torch.equal(z.fake_quantize(x, 3, levels="optimal", seed=3), x)  # every value is a level
    zeros = z.optimal_levels(torch.zeros(10), 4)
    assert zeros.numel() == 4 and 0.0 in zeros.tolist()


def test_given_scale_normalizes_per_group():
    x = torch.tensor([[1.0, 2.0, 4.0], [10.0, 20.0, 40.0]])
    s = torch.tensor([[4.0], [40.0]])
    levels = z.optimal_levels(x, 3, scale=s)
    assert torch.allclose(levels, torch.tensor([0.25, 0.5, 1.0]))


def test_dtypes_and_noncontiguous():
    x = torch.randn(64, 50)
    base = z.optimal_levels(x, 4)
    assert torch.equal(z.optimal_levels(x.t(), 4), base)
    assert torch.equal(z.optimal_levels(x.double(), 4), base)
    assert z.optimal_levels(x.half(), 4).dtype == torch.float32


def test_bad_arguments():
    x = torch.randn(10)
    with pytest.raises(ValueError, match="num_levels must be from 2 to 256, got 257"):
        z.optimal_levels(x, 257)
    with pytest.raises(ValueError, match="candidates must be at least 2"):
        z.optimal_levels(x, 4, candidates=1)
    with pytest.raises(TypeError, match="x must be float32"):
        z.optimal_levels(x.int(), 4)
