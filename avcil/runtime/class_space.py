"""Where clips lie among a model's classes, in units the classes themselves set.

    space = ClassSpace(head.readout)
    space.class_distances(readout_inputs_of(head, audio, visual))   # [n, classes with clips], in spreads

The space is the analytic readout's expanded space φ (avcil/model/readout.py), scaled by the pooled spread of
training clips about their class means (`AnalyticReadout.class_spread`): a class's own clips lie about 1 unit from
its mean, two clips of one class about √2 units apart. Every distance here is in those units ("spreads"), so one
threshold means the same for any model. Two guards read it: learning background (avcil/runtime/background.py: a
source that lies among a class's clips is refused) and the enrolment gate (avcil/runtime/enrol_checks.py: a clip
nearer another class than its own, near-duplicate clips, the new class's margin to its nearest class).
"""

from __future__ import annotations

import numpy as np
import torch


def readout_inputs_of(head, audio: np.ndarray, visual: np.ndarray) -> torch.Tensor:
    """The readout's inputs [n, in_dim] of features."""
    audio_t, visual_t = (torch.from_numpy(np.asarray(x, np.float32)) for x in (audio, visual))
    with torch.no_grad():
        return head.readout_inputs(audio_t, visual_t)


class ClassSpace:
    """The expanded space of an analytic readout, measured in class spreads."""

    def __init__(self, readout):
        means, spread = readout.class_spread()
        self.readout = readout
        self.spread = float(spread.clamp_min(1e-12))
        self.means = means / self.spread  # [C_seen, width]
        self.seen = np.flatnonzero((readout.count > 0).numpy())  # the class index of each row of `means`

    def points(self, inputs: torch.Tensor) -> torch.Tensor:
        """Readout inputs [n, in_dim] -> their places [n, width]: any two are their distance in spreads apart."""
        with torch.no_grad():
            return self.readout.expanded(inputs.float()).double() / self.spread

    def class_distances(self, inputs: torch.Tensor) -> torch.Tensor:
        """The distance of each input to the mean of each class that has clips [n, C_seen], in spreads."""
        return torch.cdist(self.points(inputs), self.means)
