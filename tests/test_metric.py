"""Mahalanobis distances at the cost of the covariance's rank (avcil.runtime.metric) are those of the whole shrunk
covariance, on a case built to have a few hundred directions of variance in a 2048-wide space."""

import torch

from avcil.runtime.metric import ShrunkMetric


def test_distances_match_the_inverse_of_the_whole_shrunk_covariance_at_the_cost_of_its_rank():
    torch.manual_seed(0)
    width, samples, shrink = 512, 120, 0.1
    rows = torch.randn(samples, 40, dtype=torch.float64) @ torch.randn(40, width, dtype=torch.float64) \
        + 0.3 * torch.randn(samples, width, dtype=torch.float64)[:, :1]  # rank about 41
    centred = rows - rows.mean(dim=0)
    scatter = centred.T @ centred
    metric = ShrunkMetric(scatter, samples, shrink)
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
