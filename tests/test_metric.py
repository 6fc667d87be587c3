"""Mahalanobis distances at the cost of the covariance's rank (avcil.runtime.metric) are those of the whole shrunk
covariance, on a case built to have a few dozen directions of variance in a 512-wide space, whether its directions
come from the whole eigendecomposition or from that of its range, given the number of samples."""

import pytest
import torch

from avcil.runtime.metric import ShrunkMetric, top_eigen


@pytest.mark.parametrize("rank_bound", [None, 120], ids=["whole decomposition", "range of the samples"])
def test_distances_match_the_inverse_of_the_whole_shrunk_covariance_at_the_cost_of_its_rank(rank_bound):
    torch.manual_seed(0)
    width, samples, shrink = 512, 120, 0.1
    rows = torch.randn(samples, 40, dtype=torch.float64) @ torch.randn(40, width, dtype=torch.float64) \
        + 0.3 * torch.randn(samples, width, dtype=torch.float64)[:, :1]  # rank about 41
    centred = rows - rows.mean(dim=0)
    scatter = centred.T @ centred
    metric = ShrunkMetric(scatter, samples, shrink, rank_bound)
    covariance = scatter / samples
    floor = shrink * covariance.diagonal().mean()
    shrunk = (1 - shrink) * covariance + floor * torch.eye(width, dtype=torch.float64)
    a, b = torch.randn(5, width, dtype=torch.float64), rows[:7]
    difference = a[:, None, :] - b[None]
    expected = torch.einsum("abw,abw->ab", difference,
                            torch.linalg.solve(shrunk, difference.reshape(-1, width).T).T.reshape(difference.shape))
    got = metric.squared(metric.points(a), metric.points(b))
    assert metric.rank <= 45
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=0)
    # A row's distance to itself is zero.
    assert metric.squared(metric.points(b), metric.points(b)).diagonal().abs().max() < 1e-6


def test_the_range_of_a_sum_over_few_samples_holds_all_its_eigenvalues():
    torch.manual_seed(1)
    rows = torch.randn(30, 256, dtype=torch.float64) * torch.logspace(0, -4, 256, dtype=torch.float64)
    symmetric = rows.T @ rows  # rank 30 of 256, eigenvalues over several decades
    values, vectors = top_eigen(symmetric, rank_bound=30)
    assert len(values) == 30 + 16 < 256  # decomposed within the range, not whole
    whole = torch.linalg.eigh(symmetric).eigenvalues
    torch.testing.assert_close(values.sort().values[-30:], whole[-30:], rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(vectors.T @ symmetric @ vectors, torch.diag(values), rtol=0, atol=1e-9)
    # A bound under the rank misses directions: the bound must be the number of samples, not a guess.
    fewer, _ = top_eigen(symmetric, rank_bound=10)
    assert int((fewer.abs() > 1e-12 * whole[-1]).sum()) < 30
