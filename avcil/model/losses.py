"""Loss terms of docs/method.md#the-loss-terms. Each term is a small callable over one `LossInputs`; a method
is a list of weighted terms (avcil/train/methods.py), so an ablation is the same list with a term left out.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from avcil.errors import InvalidInput
from avcil.model.head import HeadOutput


@dataclass
class LossInputs:
    out: HeadOutput  # the head being trained
    old: HeadOutput | None  # the frozen head of the previous step on the same batch (None at step 0)
    labels: torch.Tensor  # [B] class indices over all classes seen so far
    is_exemplar: torch.Tensor  # [B] bool: the clip came from the exemplar memory
    old_task_ranges: list[tuple[int, int]]  # [start, end) class range of every earlier task
    old_classifier: torch.Tensor | None = None  # the frozen head's linear classifier weight [old classes, D]

    @property
    def num_old(self) -> int:
        return self.old_task_ranges[-1][1] if self.old_task_ranges else 0


def applies_at(term, step: int) -> bool:
    """Whether a loss term is part of the loss at this step (0 = the base step). Every term has `from_step` (the
    first step it applies at) and `until_step` (the last, None for all later ones): a method's definition says when
    a term applies, so the loop has no per-method branch."""
    return term.from_step <= step and (term.until_step is None or step <= term.until_step)


def _zero(x: LossInputs) -> torch.Tensor:
    return x.out.train_logits.new_zeros(())


def _require(value, term: str, what: str):
    if value is None:
        raise InvalidInput(f"loss term {term!r} needs {what}, which this head variant does not produce")
    return value


@dataclass
class CrossEntropy:
    """Plain CE over all seen classes, or the split CE: new clips against the new-class logits only, exemplars
    against the old-class logits only, averaged weighted by their counts."""

    split: bool = False
    weight: float = 1.0
    name: str = "ce"
    from_step: int = 0
    until_step: int | None = None

    def __call__(self, x: LossInputs) -> torch.Tensor:
        logits, labels = x.out.train_logits, x.labels
        if not self.split or x.num_old == 0:
            return F.cross_entropy(logits, labels)
        old, new = x.is_exemplar, ~x.is_exemplar
        total = _zero(x)
        if new.any():
            total = total + F.cross_entropy(logits[new, x.num_old:], labels[new] - x.num_old, reduction="sum")
        if old.any():
            total = total + F.cross_entropy(logits[old, : x.num_old], labels[old], reduction="sum")
        return total / len(labels)


@dataclass
class Distillation:
    """T² · KL(softmax(z_old/T) || softmax(z/T)), batch mean; per earlier task and summed (task-wise), or over
    all old classes at once (LwF, iCaRL)."""

    temperature: float = 2.0
    taskwise: bool = True
    weight: float = 1.0
    name: str = "kd"
    from_step: int = 0
    until_step: int | None = None
    uses_teacher = True  # class attribute, not a field: the learner runs the old head for this term

    def __call__(self, x: LossInputs) -> torch.Tensor:
        if x.old is None or x.num_old == 0:
            return _zero(x)
        ranges = x.old_task_ranges if self.taskwise else [(0, x.num_old)]
        t = self.temperature
        total = _zero(x)
        for start, end in ranges:
            log_student = F.log_softmax(x.out.train_logits[:, start:end] / t, dim=1)
            log_teacher = F.log_softmax(x.old.train_logits[:, start:end] / t, dim=1)
            total = total + F.kl_div(log_student, log_teacher, reduction="batchmean", log_target=True)
        return total * t * t


@dataclass
class SigmoidDistillation:
    """iCaRL's distillation as published (Rebuffi et al. 2017): binary cross-entropy of each old class's sigmoid
    output against the old model's sigmoid output, mean over clips and old classes. (The AV-CIL authors' script
    applies the sigmoid twice, a known-weak form; this is the published one.)"""

    weight: float = 1.0
    name: str = "sigmoid-kd"
    from_step: int = 0
    until_step: int | None = None
    uses_teacher = True

    def __call__(self, x: LossInputs) -> torch.Tensor:
        if x.old is None or x.num_old == 0:
            return _zero(x)
        old = slice(0, x.num_old)
        targets = torch.sigmoid(x.old.train_logits[:, old].float())
        return F.binary_cross_entropy_with_logits(x.out.train_logits[:, old], targets)


@dataclass
class ImportanceFeatureDistillation:
    """AFC's adaptive feature consolidation (Kang et al. CVPR 2022) on a head over frozen encoders: distil the fused
    feature h, each channel weighted by its importance to the old classes, estimated as the squared gradient of the
    old head's cross-entropy w.r.t. h on this batch's exemplars. For the linear classifier that gradient is closed
    form, (softmax(z_old) - y) W_old. Weights are normalised to mean 1; batch mean of the weighted squared error."""

    weight: float = 1.0
    name: str = "afc"
    from_step: int = 0
    until_step: int | None = None
    uses_teacher = True

    def __call__(self, x: LossInputs) -> torch.Tensor:
        if x.old is None or x.num_old == 0 or not x.is_exemplar.any():
            return _zero(x)
        classifier = _require(x.old_classifier, self.name, "the old head's classifier weight")[: x.num_old]
        ex = x.is_exemplar
        probabilities = torch.softmax(x.old.train_logits[ex, : x.num_old].float(), dim=1)
        targets = F.one_hot(x.labels[ex], x.num_old).float()
        importance = ((probabilities - targets) @ classifier.float()).pow(2).mean(dim=0)
        importance = importance / importance.mean().clamp_min(1e-12)
        return (importance * (x.out.fused.float() - x.old.fused.float()).pow(2)).sum(dim=1).mean()


def _similarities(x: LossInputs, temperature: float, term: str) -> torch.Tensor:
    audio = _require(x.out.audio_embed, term, "audio and visual embeddings")
    visual = _require(x.out.visual_embed, term, "audio and visual embeddings")
    return audio @ visual.T / temperature


@dataclass
class InstanceContrast:
    """D-AVSC instance part: InfoNCE with audio as anchors, the clip's own visual embedding as the positive."""

    temperature: float = 0.05
    weight: float = 0.5
    name: str = "instance"
    from_step: int = 0
    until_step: int | None = None
    needs_both_modalities = True  # class attribute: defined on audio and visual embeddings together

    def __call__(self, x: LossInputs) -> torch.Tensor:
        sim = _similarities(x, self.temperature, self.name)
        return F.cross_entropy(sim, torch.arange(len(sim), device=sim.device))


@dataclass
class ClassContrast:
    """D-AVSC class part: every pair with the same label is a positive. `normalise='batch'` divides by the batch
    size (the public experiments' form, default); 'positives' by each anchor's positive count (the paper's Eq. 7)."""

    temperature: float = 0.05
    normalise: str = "batch"
    weight: float = 1.0
    name: str = "class"
    from_step: int = 0
    until_step: int | None = None
    needs_both_modalities = True  # class attribute: defined on audio and visual embeddings together

    def __post_init__(self) -> None:
        if self.normalise not in ("batch", "positives"):
            raise InvalidInput(f"ClassContrast normalise must be 'batch' or 'positives', not {self.normalise!r}")

    def __call__(self, x: LossInputs) -> torch.Tensor:
        log_prob = F.log_softmax(_similarities(x, self.temperature, self.name), dim=1)
        positives = (x.labels[:, None] == x.labels[None, :]).to(log_prob.dtype)
        per_anchor = -(positives * log_prob).sum(dim=1)
        per_anchor = per_anchor / (positives.sum(dim=1) if self.normalise == "positives" else len(x.labels))
        return per_anchor.mean()


@dataclass
class AttentionDistillation:
    """VAD: KL(alpha_old || alpha) over every spatial distribution and KL(beta_old || beta) over every temporal
    one, on exemplars only, each divided by the number of exemplars; mixed by `spatial_share` (λ)."""

    spatial_share: float = 0.5
    weight: float = 1.0
    name: str = "vad"
    from_step: int = 0
    until_step: int | None = None
    needs_both_modalities = True  # class attribute: defined on audio and visual embeddings together
    uses_teacher = True

    def __call__(self, x: LossInputs) -> torch.Tensor:
        if x.old is None or not x.is_exemplar.any():
            return _zero(x)
        ex = x.is_exemplar
        spatial = _kl_sum(_require(x.old.spatial_attn, self.name, "attention maps")[ex], x.out.spatial_attn[ex])
        temporal = _kl_sum(x.old.temporal_attn[ex], x.out.temporal_attn[ex])
        count = int(ex.sum())
        return (self.spatial_share * spatial + (1 - self.spatial_share) * temporal) / count


def _kl_sum(target: torch.Tensor, prediction: torch.Tensor) -> torch.Tensor:
    """Σ target · (log target − log prediction) over every element; the distributions are already normalised."""
    eps = torch.finfo(prediction.dtype).tiny
    return (target * (torch.log(target + eps) - torch.log(prediction + eps))).sum()
