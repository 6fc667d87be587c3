"""Squared Mahalanobis distances under a shrunk covariance, at the cost of the covariance's rank rather than its
width: what the `mahalanobis` score and corrections (avcil.runtime.decision) compute for every window.

The covariance of the analytic readout's expanded features is 2048 wide but is fitted from a few hundred clips and
windows, so it is shrunk towards its mean variance: Σ = (1 - s) S + f I with f = s x mean variance. S has rank at
most the number of samples, r (about 730 for the demo's model), and along the other 2048 - r directions Σ is just
f. So, with S's eigenvectors V_r and eigenvalues μ_r (scaled by 1 - s),

    (x - m)ᵀ Σ⁻¹ (x - m) = |x - m|² / f + Σ_k (1 / (μ_k + f) - 1 / f) (v_kᵀ (x - m))²,

which needs a window's projection on r directions, not a 2048 x 2048 product per window: on two cores the readout and
its score went from 4.7 to 2.0 ms a window (the whitening matrices are 33 MB each in float64, read whole for every
window).

S is a difference of sums (the readout's Gram matrix less the class means' part), so rounding leaves it slightly
indefinite: in the demo's model 1359 of its 2048 eigenvalues are within 1e-4 f of zero, on either side, and the
others above 1e-2 f, with none between. Directions whose |μ| is under NEGLIGIBLE f are left to the 1 / f term (r =
689 of 2048 there): the distances move by 2e-6 of themselves, the score by 1e-5 of itself, both within what the
rounding of the sums leaves uncertain.

Finding those r directions does not need the whole 2048 x 2048 eigendecomposition either (1.2-2.3 s in float64 on
two cores, twice per model loaded: at every start of a recognizer and every version it picks up). S is a sum over the
samples, so its rank is at most their number n, which the readout counts. Where n is well under the width, S's
range is that of S Ω for a random Ω of n + OVERSAMPLE columns (exactly, barring rounding: the columns of S Ω are
combinations of S's columns, and n + OVERSAMPLE random ones span all r of its directions); the eigendecomposition of
S restricted to an orthonormal basis Q of it, Qᵀ S Q, is (n + OVERSAMPLE) wide. For the demo's model (n = 700) this is
0.4 s in place of 1.2 s; both Gaussians 0.9 s in place of 2.5 s, with scores within 2e-5 (docs/decision.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

NEGLIGIBLE = 1e-3  # an eigenvalue within this share of f of it counts as f (see above)
OVERSAMPLE = 16  # random columns beyond the rank bound: what rounding noise in S's range could take
# Above this share of the width, the restricted decomposition costs about what the whole one does.
RESTRICTED_UP_TO = 0.6


@dataclass(frozen=True)
class Points:
    """Rows (float64) with what every distance from them needs: their projections on a metric's directions
    [n, r] and their squared norms [n]."""

    rows: torch.Tensor
    projected: torch.Tensor
    norms: torch.Tensor


class ShrunkMetric:
    """The metric of the covariance `scatter / count` shrunk by `shrink` towards its mean variance; `rank_bound`:
    at most how many samples the scatter sums (None: not known)."""

    def __init__(self, scatter: torch.Tensor, count: float, shrink: float, rank_bound: int | None = None):
        covariance = scatter.double() / count
        self.floor = shrink * float(covariance.diagonal().mean().clamp_min(1e-12))
        values, vectors = top_eigen(covariance, rank_bound)
        values = (1 - shrink) * values  # the eigenvalues of the shrunk covariance are these plus the floor
        # Rounding leaves S slightly indefinite (above): eigenvalues just under zero are as negligible as those over.
        kept = values.abs() > NEGLIGIBLE * self.floor
        self.basis = vectors[:, kept].contiguous()
        self.weights = 1.0 / (values[kept] + self.floor) - 1.0 / self.floor  # [r]

    @property
    def rank(self) -> int:
        return int(self.basis.shape[1])

    def points(self, rows: torch.Tensor) -> Points:
        rows = rows.double()
        return Points(rows, rows @ self.basis, (rows * rows).sum(dim=1))

    def squared(self, a: Points, b: Points) -> torch.Tensor:
        """Squared distances [len(a), len(b)] between the rows of `a` and of `b`."""
        plain = (a.norms[:, None] - 2 * a.rows @ b.rows.T + b.norms[None, :]).clamp_min(0) / self.floor
        weighted = ((a.projected ** 2) @ self.weights)[:, None] - 2 * (a.projected * self.weights) @ b.projected.T \
            + ((b.projected ** 2) @ self.weights)[None, :]
        return (plain + weighted).clamp_min(0)


def top_eigen(symmetric: torch.Tensor, rank_bound: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues and eigenvectors (float64, as columns) of a symmetric matrix of rank at most `rank_bound`: every
    one of them where the bound is unknown or near the width, else those of its range (see the module's docstring;
    the directions left out have eigenvalue zero)."""
    width = len(symmetric)
    size = None if rank_bound is None else rank_bound + OVERSAMPLE
    if size is None or size > RESTRICTED_UP_TO * width:
        return torch.linalg.eigh(symmetric)
    # A fixed seed: the same model gives the same scores on every start.
    probe = torch.randn(width, size, dtype=symmetric.dtype, generator=torch.Generator().manual_seed(0))
    basis, _ = torch.linalg.qr(symmetric @ probe)
    values, small = torch.linalg.eigh(basis.T @ symmetric @ basis)
    return values, basis @ small
