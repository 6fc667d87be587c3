"""Exemplar memory (docs/method.md#exemplar-memory): encoder features of a few clips per class under one total budget.

After every step each seen class keeps `budget // classes_seen` clips: old classes are truncated (their
exemplars are kept in selection order, so truncation keeps the best ones under herding), new classes filled.
Features are stored as fp16 by default; the learner reads them back as float32.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from avcil.errors import InvalidInput
from avcil.data.clips import ArrayClipSet, ClipSet
from avcil.features import FeatureShape

SELECTIONS = ("random", "herding")
PRECISIONS = {"fp16": np.float16, "fp32": np.float32}

# (audio [n, Da], visual [n, T, S, Dv]) float32 -> one embedding per clip [n, D]; herding ranks clips by it.
Embedder = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass
class ClassExemplars:
    ids: list[str]
    audio: np.ndarray
    visual: np.ndarray
    # The model dir's shared file that holds these exemplars as its first rows (None until written there):
    # truncation keeps a prefix, so later versions point at the same file instead of copying it.
    stored_as: str | None = None

    def head(self, count: int) -> "ClassExemplars":
        return ClassExemplars(self.ids[:count], self.audio[:count], self.visual[:count], self.stored_as)


def herding_order(embeddings: np.ndarray, count: int) -> list[int]:
    """iCaRL herding: greedily pick clips whose running mean of normalised embeddings stays closest to the
    class mean. Returns `count` row indices in the order picked."""
    feats = embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
    target = feats.mean(axis=0)
    picked: list[int] = []
    running = np.zeros_like(target)
    available = np.ones(len(feats), dtype=bool)
    for k in range(1, min(count, len(feats)) + 1):
        # Distance of the mean after adding each candidate to the class mean.
        candidate_means = (running + feats) / k
        distance = np.linalg.norm(target - candidate_means, axis=1)
        distance[~available] = np.inf
        best = int(np.argmin(distance))
        picked.append(best)
        available[best] = False
        running += feats[best]
    return picked


class ExemplarMemory:
    def __init__(self, budget: int, selection: str = "random", precision: str = "fp16", seed: int = 42):
        if selection not in SELECTIONS:
            raise InvalidInput(f"unknown exemplar selection {selection!r}; expected one of {SELECTIONS}")
        if precision not in PRECISIONS:
            raise InvalidInput(f"unknown memory precision {precision!r}; expected one of {list(PRECISIONS)}")
        if budget < 1:
            raise InvalidInput(f"memory budget must be at least 1 clip, got {budget}")
        self.budget = budget
        self.selection = selection
        self.precision = precision
        self.seed = seed
        self.classes: dict[int, ClassExemplars] = {}

    def __len__(self) -> int:
        return sum(len(c.ids) for c in self.classes.values())

    def quota(self, classes_seen: int) -> int:
        quota = self.budget // classes_seen
        if quota < 1:
            raise InvalidInput(
                f"memory budget of {self.budget} clips is smaller than the {classes_seen} classes seen: "
                f"every class needs at least one exemplar; raise --memory-budget to at least {classes_seen}")
        return quota

    def update(self, clips: ClipSet, indices_by_class: dict[int, Sequence[int]], embed: Embedder | None = None,
               batch_size: int = 64) -> None:
        """Shrink the classes already held and fill the new ones from `clips` (positions per class)."""
        new = [c for c in indices_by_class if c not in self.classes]
        quota = self.quota(len(self.classes) + len(new))
        for c in list(self.classes):
            self.classes[c] = self.classes[c].head(quota)
        for c in new:
            candidates = np.asarray(indices_by_class[c])
            chosen = candidates[self._select(clips, candidates, quota, c, embed, batch_size)]
            audio, visual = clips.load(chosen)
            dtype = PRECISIONS[self.precision]
            self.classes[c] = ClassExemplars([clips.ids[i] for i in chosen], audio.astype(dtype), visual.astype(dtype))

    def _select(self, clips: ClipSet, candidates: np.ndarray, quota: int, label: int, embed: Embedder | None,
                batch_size: int) -> list[int]:
        if self.selection == "random":
            # Seeded per class so that the choice for a class does not depend on the order classes arrive in.
            rng = np.random.default_rng([self.seed, label])
            return list(rng.permutation(len(candidates))[:quota])
        if embed is None:
            raise InvalidInput("herding selection needs an embedding function (the current head's fused features)")
        embeddings = np.concatenate([embed(*clips.load(candidates[i:i + batch_size]))
                                     for i in range(0, len(candidates), batch_size)])
        return herding_order(embeddings, quota)

    def as_clip_set(self) -> ArrayClipSet | None:
        """All exemplars as one clip set (labels = class indices), or None while the memory is empty."""
        if not self.classes:
            return None
        order = sorted(self.classes)
        return ArrayClipSet(
            ids=[i for c in order for i in self.classes[c].ids],
            labels=np.concatenate([np.full(len(self.classes[c].ids), c) for c in order]),
            audio=np.concatenate([self.classes[c].audio for c in order]),
            visual=np.concatenate([self.classes[c].visual for c in order]),
        )

    # Persistence: plain arrays so the model dir can write them atomically and checksum them.
    def to_arrays(self) -> dict[str, np.ndarray]:
        clips = self.as_clip_set()
        if clips is None:
            return {"labels": np.zeros(0, np.int64)}
        return {"ids": np.asarray(clips.ids), "labels": clips.labels, "audio": clips.audio, "visual": clips.visual}

    def settings(self) -> dict:
        return {"budget": self.budget, "selection": self.selection, "precision": self.precision, "seed": self.seed}

    @classmethod
    def from_arrays(cls, settings: dict, arrays: dict[str, np.ndarray], shape: FeatureShape) -> "ExemplarMemory":
        memory = cls(**settings)
        labels = arrays["labels"]
        for c in np.unique(labels):
            rows = np.flatnonzero(labels == c)  # stored class by class in selection order
            memory.classes[int(c)] = ClassExemplars(
                [str(i) for i in arrays["ids"][rows]], arrays["audio"][rows], arrays["visual"][rows])
            shape.check(arrays["audio"][rows[0]], arrays["visual"][rows[0]], "exemplar memory")
        return memory
