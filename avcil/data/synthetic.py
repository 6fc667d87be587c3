"""A benchmark generated in feature space whose structure makes the parts of AV-CIL matter.

Every class has a visual prototype and an audio signature tied to it. In a clip the sounding object (the
label's prototype) sits in a few visual tokens at positions that change per clip and appears in only some
time groups; other tokens show *silent* objects of distractor classes just as strongly, the rest is noise.
So mean-pooled vision cannot tell the label from the distractors, noisy audio alone is only partly reliable,
and the audio-guided attention has to find the tokens that match the sound.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from avcil.data.clips import ArrayClipSet, Benchmark, equal_steps
from avcil.features import FeatureShape


@dataclass(frozen=True)
class SyntheticSpec:
    classes: int = 20
    steps: int = 5
    train_per_class: int = 80
    val_per_class: int = 10
    test_per_class: int = 30
    shape: FeatureShape = FeatureShape(audio_dim=32, time=4, positions=16, visual_dim=32)
    sounding_tokens: int = 2  # tokens per time group that show the sounding object
    sounding_times: int = 2  # time groups in which it is visible
    distractors: int = 2  # distractor classes per clip, each as visible as the sounding object
    visual_noise: float = 0.6
    audio_noise: float = 1.2
    seed: int = 0


def _clips(spec: SyntheticSpec, prototypes: np.ndarray, signatures: np.ndarray, count: int,
           rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    T, S, Dv = spec.shape.visual
    labels = np.repeat(np.arange(spec.classes), count)
    n = len(labels)
    visual = rng.normal(0, spec.visual_noise, (n, T, S, Dv)).astype(np.float32)
    audio = rng.normal(0, spec.audio_noise, (n, spec.shape.audio_dim)).astype(np.float32)
    per_object = spec.sounding_tokens
    for i, y in enumerate(labels):
        others = rng.choice(np.delete(np.arange(spec.classes), y), spec.distractors, replace=False)
        objects = [y, *others]
        for t in range(T):
            # Positions change per clip and time group; each object occupies its own tokens.
            positions = rng.permutation(S)[: per_object * len(objects)].reshape(len(objects), per_object)
            shown = rng.permutation(T)[: spec.sounding_times]
            for obj, where in zip(objects, positions):
                if obj == y and t not in shown:
                    continue
                visual[i, t, where] += prototypes[obj]
        audio[i] += signatures[y]
    return labels, audio, visual


def synthetic_benchmark(spec: SyntheticSpec = SyntheticSpec()) -> Benchmark:
    rng = np.random.default_rng(spec.seed)
    Dv, Da = spec.shape.visual_dim, spec.shape.audio_dim
    prototypes = rng.normal(0, 1, (spec.classes, Dv)).astype(np.float32)
    # The audio signature is a fixed linear image of the visual prototype: sound and sounding tokens correlate.
    mixing = rng.normal(0, 1 / np.sqrt(Dv), (Dv, Da)).astype(np.float32)
    signatures = prototypes @ mixing
    splits = {}
    for split, count in (("train", spec.train_per_class), ("val", spec.val_per_class), ("test", spec.test_per_class)):
        labels, audio, visual = _clips(spec, prototypes, signatures, count, rng)
        ids = [f"{split}-{i:05d}" for i in range(len(labels))]
        splits[split] = ArrayClipSet(ids, labels, audio, visual)
    return Benchmark(
        name="synthetic",
        class_names=[f"class-{c:02d}" for c in range(spec.classes)],
        steps=equal_steps(spec.classes, spec.steps),
        splits=splits,
        shape=spec.shape,
        # Small clips, so fewer epochs than the paper's 200 reach the plateau; budget ~10 % of the training clips.
        defaults={"memory_budget": 160, "instance_weight": 0.5, "epochs": 40, "fusion_dim": 64,
                  "batch_size": 64, "exemplar_batch_size": 64},
    )
