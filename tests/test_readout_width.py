"""`avcil bench readout`'s generalised cross-validation from the readout's sums, against the hat matrix itself."""

import numpy as np
import torch

from avcil.bench.readout_width import gcv_scores
from avcil.model.readout import AnalyticReadout, readout_spec


def test_gcv_from_the_sums_equals_gcv_from_the_clips_themselves():
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.normal(size=(30, 6)).astype(np.float32))
    labels = torch.from_numpy(rng.integers(0, 3, 30))
    background = torch.from_numpy(rng.normal(size=(8, 6)).astype(np.float32))
    readout = AnalyticReadout(readout_spec("analytic", expansion=12, seed=1), in_dim=6, num_classes=3)
    readout.accumulate(x, labels)
    readout.accumulate_background(background)
    phi = readout.expanded(torch.cat([x, background])).double().numpy()
    targets = np.vstack([np.eye(3)[labels.numpy()], np.zeros((8, 3))])  # background: 0 for every class
    scores = gcv_scores(readout, ridges=(0.01, 0.3, 3.0))
    for ridge, score in scores.items():
        gamma = ridge * np.mean(np.diag(phi.T @ phi))
        hat = phi @ np.linalg.solve(phi.T @ phi + gamma * np.eye(phi.shape[1]), phi.T)
        residual = np.sum((targets - hat @ targets) ** 2)
        expected = len(phi) * residual / (len(phi) - np.trace(hat)) ** 2
        np.testing.assert_allclose(score, expected, rtol=1e-6)
    assert len(set(scores.values())) == 3
