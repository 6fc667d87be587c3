"""The decision rule: from a window's scores to a label or `unknown`. One object owns the score, its threshold,
the smoothing over recent windows and the top-k, so that `avcil run`, the page, the demo and the stream benchmark
decide alike (docs/decision.md says what each score means).

A head gives, per window, a ranking vector over its classes (what `top_k` lists and the label is the best of) and
an open-set score (how sure the window holds a known class at all). The scores:
- `softmax`: the highest softmax probability of the head's logits (for the analytic readout, of 10 x its ridge
  outputs). Range [0, 1]. It says which class wins, not whether any should: background sits in the middle.
- `max_logit`: the highest ridge output (1 for a clip like the training clips of that class, 0 for unlike).
  Range: any number; for heads without a ridge readout, the highest logit.
- `energy`: log-sum-exp of the logits, divided by the readout's scale. Range: any number.
- `mahalanobis`: relative Mahalanobis distance in the analytic readout's expanded features, computed from the
  sums the readout already keeps: minus the smallest over classes of (distance to the class mean under the shared
  within-class covariance) - (distance to the mean of all training clips under their covariance), divided by the
  width; then placed on a scale where the learnt background's mean scores 0 and the class means 1. Near 1 for a
  window like a class, near 0 or below for one like the background or unlike anything learnt. Range: any number;
  needs the analytic readout.
The ranking vector is the ridge output (softmax probabilities for `softmax`), averaged over the last `smoothing`
windows, as is the open-set score.

Whatever the score, a window is `unknown` when it is corrected: nearer (in the within-class metric of the
`mahalanobis` score) to a window the user said was not the class it was labelled (`avcil learn --not`) than to any
class mean. The decision then says `"rejected": true`.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import torch

from avcil.errors import InvalidInput
from avcil.runtime.metric import Points, ShrunkMetric

UNKNOWN = "unknown"
REJECTED = "rejected"  # HeadScores' per-window flag beside the scores: corrected by `avcil learn --not`
SCORES = ("softmax", "max_logit", "energy", "mahalanobis")
SCORE_RANGES = {"softmax": (0.0, 1.0), "max_logit": (-math.inf, math.inf), "energy": (-math.inf, math.inf),
                "mahalanobis": (-math.inf, math.inf)}
# The default score: where `avcil bench stream` measured the fewest false accepts per hour of background at the
# same event recall (benchmarks/results/stream-av-digits-lite.md). Heads without the analytic readout, which it
# needs, decide with the fallback.
DEFAULT_SCORE = "mahalanobis"
FALLBACK_SCORE = "softmax"
# mahalanobis 0.05 and no smoothing: chosen on the stream benchmark's val streams (0.047 at smoothing 1; smoothing 2
# and 3 cost recall and delay for no fewer false accepts). Since the readout weighs its inputs' pooled parts alike
# the val streams place it at 0.14 (event recall 0.81, 16 false accepts per hour on the test streams, against 0.85
# and 33 at 0.05); it stays at 0.05, nearer the recall an event needs, until it is measured again across background
# amounts (docs/decision.md). The others: a middle of their usual range, not measured.
DEFAULT_THRESHOLDS = {"softmax": 0.5, "max_logit": 0.5, "energy": 0.5, "mahalanobis": 0.05}
DEFAULT_SMOOTHING = 1
DEFAULT_TOP_K = 3
# Shrinkage of both covariances towards their mean variance: the expanded features are 2048 wide and a model
# learns from a few hundred clips, so the sample covariances alone are singular.
COVARIANCE_SHRINK = 0.1
# Before any background is learnt, the raw relative distance stands in for the background's mean at this value (on
# AV-Digits the class means sit near 0, the best threshold for a model without background near -0.9).
NO_BACKGROUND_ANCHOR = -1.0


@dataclass
class DecisionRule:
    """How windows are decided: `score` (one of SCORES), `threshold` (None: the score's default), `smoothing`
    (windows averaged), `top_k` (classes listed)."""

    score: str = DEFAULT_SCORE
    threshold: float | None = None
    smoothing: int = DEFAULT_SMOOTHING
    top_k: int = DEFAULT_TOP_K
    recent: deque = field(default_factory=deque, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.score not in SCORES:
            raise InvalidInput(f"unknown score {self.score!r}; expected one of {', '.join(SCORES)}")
        if self.threshold is None:
            self.threshold = DEFAULT_THRESHOLDS[self.score]
        low, high = SCORE_RANGES[self.score]
        if not (isinstance(self.threshold, (int, float)) and math.isfinite(self.threshold)
                and low <= self.threshold <= high):
            raise InvalidInput(f"threshold {self.threshold} is outside the {self.score} score's range "
                               f"[{low}, {high}] (a finite number)")
        if int(self.smoothing) != self.smoothing or self.smoothing < 1:
            raise InvalidInput(f"smoothing must be a whole number of windows >= 1, got {self.smoothing}")
        if int(self.top_k) != self.top_k or self.top_k < 1:
            raise InvalidInput(f"top-k must be a whole number >= 1, got {self.top_k}")
        self.recent = deque(maxlen=int(self.smoothing))

    def settings(self) -> dict:
        return {"score": self.score, "threshold": self.threshold, "smoothing": self.smoothing, "top_k": self.top_k}

    def __call__(self, ranking: np.ndarray, open_score: float, class_names: list[str],
                 rejected: bool = False) -> dict:
        """The label, score and top-k of this window given its ranking vector and open-set score (both before
        smoothing) and whether it is corrected (HeadScores' REJECTED: `unknown` whatever its score); remembers them
        for the next windows' smoothing."""
        if self.recent and len(self.recent[-1][0]) != len(ranking):
            self.recent.clear()  # the class set changed: earlier windows cannot be averaged with this one
        self.recent.append((np.asarray(ranking, dtype=np.float64), float(open_score)))
        smoothed = np.mean([r for r, _ in self.recent], axis=0)
        score = float(np.mean([s for _, s in self.recent]))
        order = np.argsort(-smoothed)[:self.top_k]
        best = int(order[0])
        decision = {"label": class_names[best] if score >= self.threshold and not rejected else UNKNOWN,
                    "score": round(score, 4),
                    "top_k": [{"label": class_names[i], "score": round(float(smoothed[i]), 4)} for i in order]}
        if rejected:
            decision[REJECTED] = True
        return decision


class HeadScores:
    """Per loaded head, the ranking vectors and open-set scores of windows, for every score in SCORES that the
    head supports. `readout_inputs` are what the head's readout reads (its `readout_inputs`)."""

    def __init__(self, head: torch.nn.Module, readout: torch.nn.Module | None = None):
        self.head = head
        readout = readout if readout is not None else getattr(head, "readout", None)
        self.readout = readout if readout is not None and hasattr(readout, "expanded") else None
        self._whitened = None
        self._anchors = None
        self._rejections = None
        # The scores of the readouts of one modality alone (AnalyticReadout.part), for windows whose other modality
        # is missing.
        parts = {name: self.readout.part(name) for name in self.readout.columns} if self.readout is not None else {}
        self.alone = {name: HeadScores(head, part) for name, part in parts.items() if part is not None}

    def supports(self, score: str) -> bool:
        return score != "mahalanobis" or self.readout is not None

    def prepare(self, score: str) -> None:
        """Fit now what deciding with `score` will need (the Gaussians of the mahalanobis score and of corrections,
        the score's anchors) rather than at the first window: on a reload the recogniser's watcher thread pays for
        it before the swap, not the decision after it (two eigendecompositions of the covariance within its range:
        about 1 s for the demo's model on two cores, avcil.runtime.metric)."""
        if self.readout is None:
            return
        if score == "mahalanobis":
            self.relative_mahalanobis(self.readout.class_means()[:1].float())
        if len(self.readout.rejection_inputs):
            self.rejected(self.readout.class_means()[:1].float())
        # Not the per-modality readouts' (`alone`): they would more than double a reload, for windows that a missing
        # microphone or camera makes rare; the first such window fits them. Nor on a thread after the swap: a torch
        # call still running in a daemon thread when the process exits aborts it.

    @torch.no_grad()
    def __call__(self, audio: torch.Tensor, visual: torch.Tensor, scores=SCORES,
                 alone: str | None = None) -> tuple[np.ndarray, dict]:
        """(ranking [B, C], {score: [B]}) of a batch of encoder features; the ranking is the softmax probabilities
        when `scores` starts with `softmax`, else the ridge outputs (logits for a head without a readout). A head
        with the analytic readout adds {REJECTED: [B] bool} (see `rejected`). `alone` ("audio" or "video"): the
        other modality is missing; the readout of that modality alone decides where the head keeps one (see
        `decides_alone`), else the audio-visual one does, fed what stands in for the missing modality."""
        if self.readout is None:
            return self._from_logits(self.head(audio, visual).logits.float(), 1.0, scores, None)
        inputs = self.head.readout_inputs(audio, visual)  # the readout decides without the rest of the head
        if self.decides_alone(alone):
            first, end = self.readout.columns[alone]
            return self.alone[alone].of_inputs(inputs[:, first:end], scores)
        return self.of_inputs(inputs, scores)

    def decides_alone(self, modality: str | None) -> bool:
        """Whether a window with only `modality` is decided by that modality's own readout."""
        return modality in self.alone

    @torch.no_grad()
    def of_inputs(self, inputs: torch.Tensor, scores=SCORES) -> tuple[np.ndarray, dict]:
        """The same from the readout's inputs (the stream benchmark keeps these per window)."""
        expanded = self.readout.expanded(inputs.float())
        scale = float(self.readout.spec["scale"])
        logits = scale * (expanded @ self.readout.weight)
        return self._from_logits(logits, scale, scores, expanded)

    def _from_logits(self, logits: torch.Tensor, scale: float, scores, expanded) -> tuple[np.ndarray, dict]:
        # The ranking follows the first score asked for: softmax probabilities for `softmax` (what its threshold is
        # compared with), the ridge outputs (or logits) otherwise.
        ranking = (logits / scale).double()
        if scores and scores[0] == "softmax":
            ranking = torch.softmax(logits.double(), dim=1)
        result, whitened = {}, None  # the rows in the within-class metric, shared by the distance and the corrections
        for score in scores:
            if score == "softmax":
                result[score] = torch.softmax(logits.double(), dim=1).amax(dim=1)
            elif score == "max_logit":
                result[score] = ranking.amax(dim=1)
            elif score == "energy":
                result[score] = torch.logsumexp(logits.double(), dim=1) / scale
            elif score == "mahalanobis" and expanded is not None:
                whitened = self.whitened(expanded)
                result[score] = self.relative_mahalanobis(expanded, whitened)
        if expanded is not None:
            result[REJECTED] = self.rejected(expanded, whitened)
        return ranking.numpy(), {k: v.numpy() for k, v in result.items()}

    def whitened(self, expanded: torch.Tensor) -> Points:
        """Rows of the expanded features in the within-class metric (avcil.runtime.metric), computed once for both
        the distance and the corrections."""
        return self._gaussians()[0].points(expanded)

    def rejected(self, expanded: torch.Tensor, whitened: Points | None = None) -> torch.Tensor:
        """Per row of the expanded features: nearer to a corrected window (the readout's `rejection_inputs`) than
        to every class mean, in the whitened within-class metric. No threshold: a corrected window is at distance
        0 from itself; a window of a class lies nearer its class mean than another window (on the stream
        benchmark 33 corrections of false accepts, one at a time, cost at most one event of 553 and turned 94 % of
        the corrected false-accept runs' windows unknown; docs/decision.md#that-was-not-x)."""
        readout = self.readout
        if len(readout.rejection_inputs) == 0:
            return torch.zeros(len(expanded), dtype=torch.bool)
        within, class_means, _, _ = self._gaussians()
        if self._rejections is None:
            self._rejections = self.whitened(readout.expanded(readout.rejection_inputs))
        x = self.whitened(expanded) if whitened is None else whitened
        return within.squared(x, self._rejections).amin(dim=1) < within.squared(x, class_means).amin(dim=1)

    def relative_mahalanobis(self, expanded: torch.Tensor, whitened: Points | None = None) -> torch.Tensor:
        """The relative distance of each row of the expanded features (`whitened`: those rows' `whitened`, when
        already computed), on the scale the module's docstring gives: 0 where the learnt background's mean lies, 1
        where the class means lie."""
        self._gaussians()
        if self._anchors is None:
            self._anchors = self._score_anchors()
        background, classes = self._anchors
        return (self._raw_relative(expanded, whitened) - background) / max(classes - background, 1e-6)

    def _gaussians(self) -> tuple:
        """(within-class metric, class means in it, all-clips metric, all-clips mean in it), fitted once."""
        if self._whitened is None:
            self._whitened = self._fit_gaussians()
        return self._whitened

    def _raw_relative(self, expanded: torch.Tensor, whitened: Points | None = None) -> torch.Tensor:
        """-(min_c d_c - d_0) / width."""
        within, class_means, total, total_mean = self._gaussians()
        d_class = within.squared(self.whitened(expanded) if whitened is None else whitened, class_means)  # [B, C]
        d_total = total.squared(total.points(expanded), total_mean)[:, 0]
        return -(d_class.amin(dim=1) - d_total) / expanded.shape[1]

    def _score_anchors(self) -> tuple[float, float]:
        """The raw relative distance of the learnt background's mean (NO_BACKGROUND_ANCHOR before any is learnt)
        and the median over classes of that of their means: the raw score's offset moves with how much background
        was learnt (on AV-Digits the best threshold moved from -1.3 to -0.5 between 300 and 1200 windows), its
        place between these two does not."""
        readout = self.readout
        classes = float(self._raw_relative(readout.class_means()).median())
        if float(readout.negative_count) == 0:
            return NO_BACKGROUND_ANCHOR, classes
        mean = readout.negative_sum.double() / float(readout.negative_count)
        return float(self._raw_relative(mean[None])[0]), classes

    def _fit_gaussians(self):
        """Whitening matrices and means of the class-conditional (shared covariance) and the all-clips Gaussians,
        from the readout's sums: G = Σ φᵀφ, C = Σ φᵀy, counts."""
        readout = self.readout
        gram, cross, counts = readout.gram.double(), readout.cross.double(), readout.count.double()
        negatives, negative_sum = float(readout.negative_count), readout.negative_sum.double()
        seen = counts > 0
        total = counts.sum() + negatives
        if counts.sum() < 2:
            raise InvalidInput("the mahalanobis score needs a readout fitted on at least two clips")
        means = readout.class_means()  # [C_seen, width]
        mean = (cross.sum(dim=1) + negative_sum) / total
        # Background windows are one more group in the shared within-group covariance, and part of the all-clips
        # Gaussian (the "background" one of the relative distance), never a class.
        scatter_within = gram - (means.T * counts[seen]) @ means
        if negatives:
            scatter_within -= torch.outer(negative_sum, negative_sum) / negatives
        scatter_total = gram - total * torch.outer(mean, mean)

        # Both scatters are sums over the `total` clips and windows: their rank is at most that.
        within = ShrunkMetric(scatter_within, float(total), COVARIANCE_SHRINK, rank_bound=round(float(total)))
        whole = ShrunkMetric(scatter_total, float(total), COVARIANCE_SHRINK, rank_bound=round(float(total)))
        # Classes with clips only: one with none is never the nearest.
        return within, within.points(means), whole, whole.points(mean[None])


def default_score(scores: HeadScores) -> str:
    """The score a head decides with unless told: DEFAULT_SCORE where it can give it, else FALLBACK_SCORE."""
    return DEFAULT_SCORE if scores.supports(DEFAULT_SCORE) else FALLBACK_SCORE
