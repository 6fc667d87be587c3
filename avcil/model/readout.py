"""Closed-form classifiers over frozen features, installed in the head in place of its linear classifier.

- `AnalyticReadout` (ACIL / DS-AL / MMAL, docs/method.md#the-analytic-readout): a fixed random expansion
  φ(x) = ReLU(x W_e), then ridge regression of one-hot labels on φ. It keeps the sufficient statistics G = Σ φᵀφ and
  C = Σ φᵀy, so adding the clips of new classes is two sums and one solve, W = (G + γI)⁻¹ C: exemplar-free and exactly
  equal to joint least squares over everything seen so far (the recursive least-squares form gives the same W for the
  same γ, docs/method.md#the-recursive-update; the sums also add across processes). One field class costs milliseconds.
- `MeanReadout`: cosine to each class's mean normalised feature: nearest-class-mean (SimpleCIL) when fed all
  training clips, iCaRL's nearest-mean-of-exemplars when fed the exemplars.

What they read (`features`): `pooled` = the encoder features themselves, each part L2-normalised (audio, the mean
and the max of the visual tokens), independent of the trainable head; `fused` = the head's fused feature h; `both` =
the two side by side. Which serves best is measured in benchmarks/results/accuracy-*.md.

The readout's scores go through the recognizer's softmax like logits; `scale` makes them logit-sized (a ridge output
is about 1 for the true class and 0 for the others, a cosine lies in [-1, 1]).
"""

from __future__ import annotations

import functools
import hashlib

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from avcil.errors import InvalidInput

KINDS = ("analytic", "mean")
FEATURES = ("pooled", "fused", "both")
DEFAULT_SCALE = {"analytic": 10.0, "mean": 20.0}


def readout_spec(kind: str, features: str = "pooled", expansion: int = 2048, ridge: float = 1.0, seed: int = 0,
                 scale: float | None = None, per_modality: bool = True) -> dict:
    """The readout's settings as the head config (and so the manifest) records them. `per_modality` (analytic,
    `pooled` features of both modalities): also keep a readout of the audio alone and one of the video alone, fitted
    on the same clips, which decide when the other modality is missing. A spec without the key (a model made
    before they existed) has none."""
    if kind not in KINDS:
        raise InvalidInput(f"unknown readout {kind!r}; expected one of {KINDS}")
    if features not in FEATURES:
        raise InvalidInput(f"unknown readout features {features!r}; expected one of {FEATURES}")
    if kind == "analytic" and (expansion < 0 or ridge <= 0):
        raise InvalidInput(f"analytic readout needs expansion >= 0 and ridge > 0, got {expansion} and {ridge}")
    spec = {"kind": kind, "features": features, "scale": DEFAULT_SCALE[kind] if scale is None else float(scale)}
    if kind == "analytic":
        spec.update(expansion=int(expansion), ridge=float(ridge), seed=int(seed))
        if per_modality and features == "pooled":
            spec["per_modality"] = True
    return spec


def pooled_features(audio: torch.Tensor | None, visual: torch.Tensor | None) -> torch.Tensor:
    """[normalize(a), normalize(mean V), normalize(max V)] of the modalities given: the encoders' view of a clip."""
    parts = []
    if audio is not None:
        parts.append(F.normalize(audio.float(), dim=-1))
    if visual is not None:
        tokens = visual.float().flatten(1, 2)  # [B, T*S, Dv]
        parts += [F.normalize(tokens.mean(dim=1), dim=-1), F.normalize(tokens.amax(dim=1), dim=-1)]
    return torch.cat(parts, dim=1)


def input_dim(features: str, audio_dim: int | None, visual_dim: int | None, fusion_dim: int) -> int:
    pooled = (audio_dim or 0) + 2 * (visual_dim or 0)
    return {"pooled": pooled, "fused": fusion_dim, "both": pooled + fusion_dim}[features]


def modality_columns(spec: dict, audio_dim: int | None, visual_dim: int | None) -> dict[str, tuple[int, int]]:
    """{modality: (first, end) columns of the readout's inputs} for the per-modality readouts the spec asks for:
    the audio part and the visual parts of the pooled features; {} where it asks for none or one modality is
    all there is."""
    if not spec.get("per_modality") or not audio_dim or not visual_dim:
        return {}
    return {"audio": (0, audio_dim), "video": (audio_dim, audio_dim + 2 * visual_dim)}


def readout_parts(features: str, audio_parts: tuple[int, ...], visual_dim: int | None,
                  fusion_dim: int) -> list[int]:
    """The widths of the separately pooled parts of the readout's inputs, in column order: the audio vector's parts,
    the visual tokens' mean and max, the fused feature."""
    pooled = [*audio_parts, *([visual_dim, visual_dim] if visual_dim else [])]
    return {"pooled": pooled, "fused": [fusion_dim], "both": [*pooled, fusion_dim]}[features]


def readout_inputs(features: str, audio: torch.Tensor | None, visual: torch.Tensor | None,
                   fused: torch.Tensor) -> torch.Tensor:
    if features == "fused":
        return fused.float()
    pooled = pooled_features(audio, visual)
    return pooled if features == "pooled" else torch.cat([pooled, F.normalize(fused.float(), dim=-1)], dim=1)


def _expansion_matrix(inputs: int, width: int, seed: int) -> np.ndarray:
    """A copy (the readout's own buffer) of the expansion for these sizes and seed."""
    return _generated_expansion(inputs, width, seed).copy()


@functools.lru_cache(maxsize=8)
def _generated_expansion(inputs: int, width: int, seed: int) -> np.ndarray:
    # Regenerated from the seed rather than stored: at lite's sizes it would add 12 MB to every version. NumPy's
    # PCG64 + standard_normal stream is stable across releases; `fingerprint` catches it if that ever changes.
    # Kept per process: a recognizer or learner loads every version with the same three (35 ms each to generate).
    rng = np.random.Generator(np.random.PCG64(seed))
    return (rng.standard_normal((inputs, width)) / np.sqrt(inputs)).astype(np.float32)


def fingerprint(matrix: torch.Tensor) -> float:
    """48 bits of the matrix's sha256, as a number a float64 buffer holds exactly."""
    digest = hashlib.sha256(matrix.numpy().tobytes()).digest()
    return float(int.from_bytes(digest[:6], "big"))


class _Sums:
    """A readout whose statistics are sums: `increments(x, labels)` is what clips add to each statistic (by
    buffer name), so that the increments of several processes' clips can be summed before they are added."""

    @torch.no_grad()
    def add(self, increments: dict[str, torch.Tensor]) -> None:
        for name, value in increments.items():
            getattr(self, name).add_(value.to(getattr(self, name).dtype))


class AnalyticReadout(_Sums, nn.Module):
    def __init__(self, spec: dict, in_dim: int, num_classes: int, columns: dict[str, tuple[int, int]] | None = None,
                 parts: list[int] | None = None):
        super().__init__()
        self.spec, self.in_dim = spec, in_dim
        if parts is not None and sum(parts) != in_dim:
            raise InvalidInput(f"readout parts {parts} do not add up to its {in_dim} inputs")
        self.input_parts = list(parts) if parts is not None else None
        width = spec["expansion"] or in_dim
        if spec["expansion"]:
            self.register_buffer("expand", torch.from_numpy(_expansion_matrix(in_dim, width, spec["seed"])),
                                 persistent=False)
        else:
            self.expand = None
        self.register_buffer("expand_check", torch.tensor(self._check(), dtype=torch.float64))
        # Per-input standardisation, estimated on the first clips the readout sees (the base step) and fixed from
        # then on, so that the expansion weighs the parts of a concatenated feature alike: on AV-Digits the speech
        # embedding's dimensions are an order of magnitude smaller than the sound-event CNN's, and standardising
        # took the mean accuracy from 0.87 to 0.90 (benchmarks/results/accuracy-av-digits.md).
        self.register_buffer("shift", torch.zeros(in_dim))
        self.register_buffer("spread", torch.ones(in_dim))
        self.register_buffer("standardised", torch.tensor(False))
        self.register_buffer("gram", torch.zeros(width, width))  # Σ φᵀφ
        self.register_buffer("cross", torch.zeros(width, num_classes))  # Σ φᵀ y
        self.register_buffer("count", torch.zeros(num_classes))  # clips seen per class
        self.register_buffer("weight", torch.zeros(width, num_classes))  # the solved ridge weights
        # Background: windows that hold none of the classes, in the ridge with a target of 0 for every class (their
        # φᵀφ is in `gram`), so that the readout learns to answer 0 there; their φ sum and count are kept apart for
        # the open-set score (avcil.runtime.decision), which models classes and background separately.
        self.register_buffer("negative_sum", torch.zeros(width))
        self.register_buffer("negative_count", torch.tensor(0.0))
        self.register_buffer("negative_square", torch.tensor(0.0, dtype=torch.float64))  # Σ |φ|² of background
        # Corrections ("that was not X", `avcil learn --not`): windows the model labelled a class they do not hold,
        # kept as they are (readout inputs) with the class they were mistaken for. They are not in the sums: one
        # window added to the Gaussians gives its own unusual directions variance and stops being unusual, which on
        # the stream benchmark drew a fifth of the events' windows to it (docs/decision.md#that-was-not-x).
        self.register_buffer("rejection_inputs", torch.zeros(0, in_dim))
        self.register_buffer("rejection_class", torch.zeros(0, dtype=torch.long))
        # So that the model dir stores `gram` as what changed (a 16 MB matrix at lite's width, a few rows of φ per
        # class; avcil/modeldir/statistics.py): `gram_stored`, the model dir's record of the files that hold `gram`
        # as it was loaded or last committed (None: none do, as for a new readout), and `gram_rows`, the φ rows
        # (float32) of each `add` since, in order, which put φᵀφ into `gram`; None when `gram` changed otherwise
        # (a sum over processes, a loaded state), so that the model dir stores it whole. Neither is in the state.
        self.gram_stored: dict | None = None
        self.gram_rows: list[torch.Tensor] | None = None
        # Per-modality readouts (`modality_columns`): the same settings over one modality's columns of the inputs,
        # fed every clip, background window and correction this one is. A separate expansion each, since this one's
        # mixes the modalities. When a microphone is gone, the audio-visual readout fed silence labelled a tenth of
        # the events of the stream benchmark; the video readout found four in ten, with fewer false accepts
        # (docs/decision.md#a-missing-modality).
        self.columns = dict(columns or {})
        self.parts = nn.ModuleDict({name: AnalyticReadout(spec, end - first, num_classes,
                                                          parts=_parts_within(self.input_parts, first, end))
                                    for name, (first, end) in self.columns.items()})

    def part(self, modality: str) -> "AnalyticReadout | None":
        """The readout of `modality` alone, where this one keeps it and it has learnt clips; else None."""
        part = self.parts[modality] if modality in self.parts else None
        return part if part is not None and float(part.count.sum()) > 0 else None

    def _column_norms(self) -> torch.Tensor:
        """Per input column, the factor that its standardised value is divided by beyond its std: sqrt(in_dim), or
        with `input_parts` sqrt(width of its part x number of parts), so that each part weighs alike in the
        expansion (the lite audio vector is 512 aiSFX columns beside 2 x 96 speech ones; weighed by columns, the
        sound-event CNN, which names a digit in a third of the clips, outweighed the speech embedding, which names
        it in five of six: docs/method.md#standardisation-and-parts)."""
        if self.input_parts is None:
            return torch.full((self.in_dim,), float(self.in_dim) ** 0.5)
        count = len(self.input_parts)
        return torch.cat([torch.full((width,), float(width * count) ** 0.5) for width in self.input_parts])

    def _columns_of(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {name: x[:, first:end] for name, (first, end) in self.columns.items()}

    def _check(self) -> float:
        return 0.0 if self.expand is None else fingerprint(self.expand)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        self.gram_stored = self.gram_rows = None  # `gram` becomes whatever the state holds
        for name in ("negative_sum", "negative_count", "negative_square", "rejection_inputs", "rejection_class"):
            state_dict.setdefault(prefix + name, getattr(self, name).clone())  # model dirs from before they existed
        for name in ("rejection_inputs", "rejection_class"):  # as many rows as were stored
            setattr(self, name, torch.empty_like(state_dict[prefix + name]))
        stored = state_dict.get(prefix + "expand_check")  # self.expand_check: this expansion's, from __init__
        if stored is not None and float(stored) != float(self.expand_check):
            raise InvalidInput("the analytic readout's random expansion regenerated here differs from the one it "
                             "was fitted with (a different NumPy random stream?); refit it from the exemplars")
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @property
    def num_classes(self) -> int:
        return self.cross.shape[1]

    @torch.no_grad()
    def add(self, increments: dict[str, torch.Tensor], rows: torch.Tensor | None = None) -> None:
        """Add `increments` (see `_Sums`; a part's under "parts.NAME.", as `increments` gives them); `rows`: the φ
        whose φᵀφ is the gram's increment, recorded in `gram_rows` (None: not known, as for the sums of several
        processes' clips)."""
        for name, part in self.parts.items():
            prefix = f"parts.{name}."
            if theirs := {key[len(prefix):]: value for key, value in increments.items() if key.startswith(prefix)}:
                part.add(theirs)
        increments = {key: value for key, value in increments.items() if not key.startswith("parts.")}
        super().add(increments)
        if "gram" in increments:
            known = rows is not None and self.gram_rows is not None
            self.gram_rows = [*self.gram_rows, rows.float()] if known else None

    def class_means(self) -> torch.Tensor:
        """The means in the expanded space [C_seen, width] of the classes that have clips: C over the counts."""
        counts = self.count.double()
        seen = counts > 0
        return (self.cross.double()[:, seen] / counts[seen]).T

    def class_spread(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(the class means in the expanded space [C_seen, width], the root mean squared distance of a training
        clip from its class mean, pooled over classes), from the sums alone: Σ|φ|² is the trace of G less the
        background's share."""
        counts = self.count.double()
        seen = counts > 0
        means = self.class_means()
        square = float(self.gram.double().trace() - self.negative_square)
        within = square - float((counts[seen] * means.pow(2).sum(dim=1)).sum())
        return means, torch.tensor(max(within, 0.0) / max(float(counts.sum()), 1.0)).sqrt()

    def expanded(self, x: torch.Tensor) -> torch.Tensor:
        x = (x.float() - self.shift) / self.spread
        return torch.relu(x @ self.expand) if self.expand is not None else x

    def add_classes(self, count: int) -> None:
        self.cross = torch.cat([self.cross, self.cross.new_zeros(self.cross.shape[0], count)], dim=1)
        self.weight = torch.cat([self.weight, self.weight.new_zeros(self.weight.shape[0], count)], dim=1)
        self.count = torch.cat([self.count, self.count.new_zeros(count)])
        for part in self.parts.values():
            part.add_classes(count)

    @torch.no_grad()
    def accumulate(self, x: torch.Tensor, labels: torch.Tensor) -> None:
        """Add clips (readout inputs [n, in_dim], class indices [n]) to the statistics; `solve` afterwards."""
        if not bool(self.standardised) and len(x) > 1:
            self.standardise(x.float().mean(dim=0), x.float().std(dim=0))
        phi = self.expanded(x).double()
        self.add(self._increments_of(phi, labels), rows=phi)
        for name, columns in self._columns_of(x).items():
            self.parts[name].accumulate(columns, labels)

    @torch.no_grad()
    def accumulate_background(self, x: torch.Tensor) -> None:
        """Add windows that hold no class (readout inputs [n, in_dim]) as negatives; `solve` afterwards."""
        if not bool(self.standardised):
            raise InvalidInput("background can only be added to a readout that has learnt classes")
        phi = self.expanded(x).double()
        self.add({"gram": phi.T @ phi, "negative_sum": phi.sum(dim=0), "negative_count": torch.tensor(len(phi)),
                  "negative_square": phi.pow(2).sum()}, rows=phi)
        for name, columns in self._columns_of(x).items():
            self.parts[name].accumulate_background(columns)

    @torch.no_grad()
    def add_rejections(self, x: torch.Tensor, class_index: int) -> None:
        """Keep windows (readout inputs [n, in_dim]) that were labelled class `class_index` and hold none of the
        classes; no solve needed: the decision reads them (avcil.runtime.decision.HeadScores.rejected)."""
        if not 0 <= class_index < self.num_classes:
            raise InvalidInput(f"no class {class_index} among the readout's {self.num_classes}")
        self.rejection_inputs = torch.cat([self.rejection_inputs, x.float()])
        self.rejection_class = torch.cat([self.rejection_class, torch.full((len(x),), class_index, dtype=torch.long)])
        for name, columns in self._columns_of(x).items():
            self.parts[name].add_rejections(columns, class_index)

    def standardise(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Fix the per-input standardisation (once, from the first clips; over all ranks' clips under torchrun)."""
        # sqrt(in_dim) keeps the standardised vector at about unit norm, as the expansion's scale expects. With
        # `input_parts`, each part's columns share that norm equally rather than by their count: a part of n columns
        # out of K parts gets sqrt(n K) in place of sqrt(in_dim), the same where the parts are of one width.
        self.shift = mean.float()
        self.spread = (std.float() + 1e-6) * self._column_norms()
        self.standardised = torch.tensor(True)
        for name, (first, end) in self.columns.items():
            self.parts[name].standardise(mean[first:end], std[first:end])

    @torch.no_grad()
    def increments(self, x: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """What these clips add to each statistic (float64): sums, so that they add across processes too; a part's
        under "parts.NAME."."""
        increments = self._increments_of(self.expanded(x).double(), labels)
        for name, columns in self._columns_of(x).items():
            increments.update({f"parts.{name}.{key}": value
                               for key, value in self.parts[name].increments(columns, labels).items()})
        return increments

    def _increments_of(self, phi: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        onehot = F.one_hot(labels.long(), self.num_classes).double()
        return {"gram": phi.T @ phi, "cross": phi.T @ onehot, "count": onehot.sum(dim=0)}

    @torch.no_grad()
    def solve(self) -> None:
        """W = (G + γI)⁻¹ C in float64. γ > 0 keeps it regular whatever the data (one clip, repeated clips), so it is
        positive definite and its Cholesky factor solves it in half the time of a general solve."""
        system = self.ridge_system(self.gram.double())
        factor, failed = torch.linalg.cholesky_ex(system)
        solution = torch.cholesky_solve(self.cross.double(), factor) if not failed else \
            torch.linalg.solve(system, self.cross.double())  # rounding made it indefinite: the general solve
        if not torch.isfinite(solution).all():
            raise InvalidInput("the analytic readout's solution is not finite; are there NaN or Inf features?")
        self.weight = solution.to(self.weight.dtype)
        for part in self.parts.values():
            part.solve()

    def ridge_system(self, gram: torch.Tensor) -> torch.Tensor:
        """G + γI (float64) for a sum of φᵀφ. γ relative to the mean diagonal, so that one setting serves features
        of any scale and any clip count."""
        ridge = self.spec["ridge"] * max(float(gram.diagonal().mean()), 1e-12)
        system = gram.to(torch.float64, copy=True)
        system.diagonal().add_(ridge)  # not + γ·eye: a 32 MB identity built and added for each of the readouts
        return system

    @torch.no_grad()
    def left_out_outputs(self, x: torch.Tensor, learnt: torch.Tensor | None = None) -> torch.Tensor:
        """For clips (readout inputs [n, in_dim]) of a class this readout has not learnt: the ridge outputs
        [n, num_classes + 1] that each clip would get once the class (the last column) is added, learnt from the
        `learnt` clips (a bool mask; default all) other than the clip itself. Exact and from one solve: leaving a
        learnt clip i out of the sums is a rank-one change, so its output is (ŷ_i - h_i y_i) / (1 - h_i), with ŷ_i
        its output with every learnt clip in, y_i its target and h_i = φ_iᵀ (G + γI)⁻¹ φ_i its leverage (γ as
        `solve` sets it with every learnt clip in G)."""
        phi = self.expanded(x).double()
        learnt = torch.ones(len(phi), dtype=torch.bool) if learnt is None else learnt.bool()
        taught = phi[learnt]
        factor = torch.linalg.cholesky(self.ridge_system(self.gram.double() + taught.T @ taught))
        cross = torch.cat([self.cross.double(), taught.sum(dim=0)[:, None]], dim=1)
        outputs = phi @ torch.cholesky_solve(cross, factor)
        leverage = (phi * torch.cholesky_solve(phi.T, factor).T).sum(dim=1) * learnt
        target = torch.zeros_like(outputs)
        target[:, -1] = learnt.double()
        return (outputs - leverage[:, None] * target) / (1 - leverage)[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.spec["scale"] * (self.expanded(x) @ self.weight)


class MeanReadout(_Sums, nn.Module):
    def __init__(self, spec: dict, in_dim: int, num_classes: int):
        super().__init__()
        self.spec, self.in_dim = spec, in_dim
        self.register_buffer("sums", torch.zeros(num_classes, in_dim))  # Σ normalize(x) per class
        self.register_buffer("count", torch.zeros(num_classes))

    @property
    def num_classes(self) -> int:
        return self.sums.shape[0]

    def add_classes(self, count: int) -> None:
        self.sums = torch.cat([self.sums, self.sums.new_zeros(count, self.in_dim)])
        self.count = torch.cat([self.count, self.count.new_zeros(count)])

    @torch.no_grad()
    def accumulate(self, x: torch.Tensor, labels: torch.Tensor) -> None:
        self.add(self.increments(x, labels))

    @torch.no_grad()
    def increments(self, x: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        sums = torch.zeros_like(self.sums).index_add_(0, labels.long(), F.normalize(x.float(), dim=-1))
        return {"sums": sums, "count": torch.bincount(labels.long(), minlength=self.num_classes).to(self.count.dtype)}

    def solve(self) -> None:
        """Nothing to solve: the means are the sums; kept for one interface with AnalyticReadout."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        means = F.normalize(self.sums, dim=-1)  # a class with no clips has a zero mean: cosine 0
        return self.spec["scale"] * (F.normalize(x.float(), dim=-1) @ means.T)


def _parts_within(parts: list[int] | None, first: int, end: int) -> list[int] | None:
    """The widths of `parts` that lie in columns [first, end) (a per-modality readout's share of them)."""
    if parts is None:
        return None
    bounds = np.cumsum([0, *parts])
    inside = [(start, stop) for start, stop in zip(bounds[:-1], bounds[1:]) if start >= first and stop <= end]
    if sum(stop - start for start, stop in inside) != end - first:
        raise InvalidInput(f"columns [{first}, {end}) cut a part of {parts}")
    return [int(stop - start) for start, stop in inside]


def build_readout(spec: dict, in_dim: int, num_classes: int, columns: dict[str, tuple[int, int]] | None = None,
                  parts: list[int] | None = None) -> nn.Module:
    """`parts`: the widths of the inputs' separately pooled parts (`readout_parts`), which an analytic readout
    weighs alike; None: every column alike."""
    if spec["kind"] == "analytic":
        return AnalyticReadout(spec, in_dim, num_classes, columns, parts)
    return MeanReadout(spec, in_dim, num_classes)
