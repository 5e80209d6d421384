"""Statistical checks with tolerances derived from the theory, for the unbiasedness tests.

Each check turns per-element sample means into z-scores (mean - expected) / standard error, with
the standard error from the known per-element variance, and tests the aggregate sum of z^2, which
is chi-square with n degrees of freedom when the estimator is unbiased: it must lie within
`sigmas` standard deviations (sqrt(2n)) of n. A bias of a fraction of a standard error per element
moves the sum by far more than that, which the power tests demonstrate.
"""

from __future__ import annotations

import math

import torch


def z_scores(samples: torch.Tensor, expected: torch.Tensor, variance: torch.Tensor) -> torch.Tensor:
    """samples: [N, n] draws; expected, variance: [n]. Elements with zero variance must be exact."""
    samples, expected, variance = samples.double(), expected.double(), variance.double()
    mean = samples.mean(dim=0)
    exact = variance <= 1e-30
    assert torch.equal(mean[exact], expected[exact]), "a value with zero rounding variance moved"
    se = (variance[~exact] / samples.shape[0]).sqrt()
    return (mean[~exact] - expected[~exact]) / se


def assert_chi2(z: torch.Tensor, sigmas: float = 5.0) -> None:
    n = z.numel()
    stat = float((z * z).sum())
    bound = sigmas * math.sqrt(2 * n)
    assert abs(stat - n) <= bound, f"sum z^2 = {stat:.1f} for n = {n}: not within {bound:.1f} of n (biased?)"


def assert_unbiased(samples, expected, variance, sigmas: float = 5.0) -> None:
    assert_chi2(z_scores(samples, expected, variance), sigmas)


def assert_variance(samples: torch.Tensor, variance: torch.Tensor, sigmas: float = 5.0) -> None:
    """The empirical variance, summed over elements, matches the sum of the predicted variances
    within `sigmas` standard errors (each Bernoulli-type per-element variance estimate has a
    standard error of at most its variance * sqrt(2/(N-1)) plus the fourth-moment term)."""
    samples = samples.double()
    n_draws = samples.shape[0]
    emp = samples.var(dim=0, unbiased=True)
    centered = samples - samples.mean(dim=0)
    m4 = (centered ** 4).mean(dim=0)
    se = ((m4 - emp ** 2 * (n_draws - 3) / (n_draws - 1)) / n_draws).clamp_min(0).sum().sqrt()
    total_emp, total_pred = float(emp.sum()), float(variance.double().sum())
    assert abs(total_emp - total_pred) <= sigmas * float(se) + 1e-12, (
        f"empirical variance {total_emp:.6g} vs predicted {total_pred:.6g} (se {float(se):.3g})")
