"""Splits of a benchmark as the learner sees them: labelled clips whose features load on demand.

A `ClipSet` is one split (train, val or test). Sources differ in where the features live (arrays in memory,
the project's feature store, the public feature release); the learner only calls `load(indices)`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Protocol, Sequence

import numpy as np

from avcil.errors import InvalidInput
from avcil.features import FeatureShape

SPLITS = ("train", "val", "test")


class ClipSet(Protocol):
    ids: list[str]
    labels: np.ndarray  # int64 class index in the benchmark's class order, one per clip
    shape: FeatureShape

    def load(self, indices: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """Float32 audio [n, audio_dim] and visual [n, time, positions, visual_dim] of these clips."""
        ...


@dataclass
class ArrayClipSet:
    """Clips whose features are already arrays (synthetic data, exemplar memory)."""

    ids: list[str]
    labels: np.ndarray
    audio: np.ndarray
    visual: np.ndarray
    shape: FeatureShape = field(init=False)

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64)
        n = len(self.labels)
        if not (len(self.ids) == len(self.audio) == len(self.visual) == n):
            raise InvalidInput(f"ArrayClipSet: {len(self.ids)} ids, {n} labels, {len(self.audio)} audio rows and "
                             f"{len(self.visual)} visual rows; all must be equal")
        self.shape = FeatureShape(self.audio.shape[1], *self.visual.shape[1:])

    def load(self, indices: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        idx = np.asarray(indices, dtype=np.int64)
        return self.audio[idx].astype(np.float32), self.visual[idx].astype(np.float32)


@dataclass(frozen=True)
class BenchmarkDefaults:
    """The settings a benchmark sets instead of the paper's; None keeps the paper's, whose one source is the object
    that owns each setting (`TrainConfig` for the loop, `DEFAULT_MEMORY_BUDGET` in the protocol, `build_method`'s
    arguments for the loss weights)."""

    epochs: int | None = None
    batch_size: int | None = None
    exemplar_batch_size: int | None = None
    memory_budget: int | None = None
    instance_weight: float | None = None
    fusion_dim: int | None = None

    def given(self) -> dict:
        return {name: value for name, value in asdict(self).items() if value is not None}


# The paper's settings on AVE, its main benchmark, which are also the defaults wherever nothing else is said: the
# exemplar budget (DEFAULT_MEMORY_BUDGET) and λ_I of D-AVSC instance (DEFAULT_INSTANCE_WEIGHT, avcil.train.config).
# Stated here once, the lowest layer that holds benchmark settings, so that the release reader reads them too.
PAPER_AVE = BenchmarkDefaults(memory_budget=340, instance_weight=0.5)


@dataclass
class Benchmark:
    """A class-incremental benchmark: classes in order, which classes arrive at each step, the splits."""

    name: str
    class_names: list[str]
    steps: list[list[int]]
    splits: dict[str, ClipSet]
    shape: FeatureShape
    # Protocol settings that belong to the benchmark (memory budget, instance weight, epochs, ...).
    defaults: BenchmarkDefaults = field(default_factory=BenchmarkDefaults)
    # The encoder profile and preprocessing settings the features came from (None for synthetic features).
    profile: dict | None = None

    def __post_init__(self) -> None:
        missing = [s for s in SPLITS if s not in self.splits]
        if missing:
            raise InvalidInput(f"benchmark {self.name}: missing split(s) {missing}")
        stepped = sorted(c for step in self.steps for c in step)
        if stepped != list(range(len(self.class_names))):
            raise InvalidInput(f"benchmark {self.name}: steps must cover classes 0..{len(self.class_names) - 1} once each")

    def indices(self, split: str, classes: Sequence[int]) -> np.ndarray:
        """Positions in `split` of the clips whose label is one of `classes`."""
        return np.flatnonzero(np.isin(self.splits[split].labels, np.asarray(classes)))


def equal_steps(num_classes: int, num_steps: int) -> list[list[int]]:
    """Class indices 0..n-1 in order, cut into `num_steps` equal steps (the paper's protocol)."""
    if num_steps < 1 or num_classes % num_steps:
        raise InvalidInput(f"{num_classes} classes cannot be split into {num_steps} equal steps")
    per = num_classes // num_steps
    return [list(range(s * per, (s + 1) * per)) for s in range(num_steps)]


@dataclass
class ClipSubset:
    """Some rows of a clip set, as a clip set."""

    parent: object
    rows: np.ndarray

    def __post_init__(self) -> None:
        self.ids = [self.parent.ids[i] for i in self.rows]
        self.labels = self.parent.labels[self.rows]
        self.shape = self.parent.shape

    def load(self, indices: Sequence[int]):
        return self.parent.load(self.rows[np.asarray(indices, dtype=np.int64)])


def first_classes(benchmark: Benchmark, count: int, train_clips: int) -> Benchmark:
    """The benchmark cut down to its first `count` classes in one step, with at most `train_clips` training clips
    per class (val and test whole)."""
    splits = {}
    for name, clips in benchmark.splits.items():
        rows = np.flatnonzero(clips.labels < count)
        if name == "train":
            rows = np.concatenate([rows[clips.labels[rows] == c][:train_clips] for c in range(count)])
        splits[name] = ClipSubset(clips, rows)
    return Benchmark(f"{benchmark.name}-first-{count}", benchmark.class_names[:count], [list(range(count))], splits,
                     benchmark.shape, benchmark.defaults, benchmark.profile)
