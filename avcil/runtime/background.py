"""Learning background: windows that hold none of the model's classes, added on purpose.

    features = encode_window_views(profile, ["empty-room.mp4", ...])   # the live windows of each file
    learn_background("MODEL", *features, sources=[...])                # -> a summary with the new version's name

Background windows go into the analytic readout's ridge with a target of 0 for every class (avcil/model/readout.py
`accumulate_background`): the readout learns to answer "none of mine" there, and the open-set score models them as
the background they are (docs/decision.md). Like a class, it is one closed-form update and a new version.

An operator who records a class by mistake as background would teach the model to miss that class. So each source's
windows are compared with the classes first, in the readout's expanded space and from the sums it keeps: the
distance of a window to the nearest class mean, in units of the pooled spread of training clips about their class
mean (`AnalyticReadout.class_spread`). A class's own clips lie about 1 unit from its mean, clips unlike it several;
a source whose median window lies within RESEMBLANCE units of a class mean is refused, naming the class, unless
forced. Neither the ridge output (windows the model wrongly takes for a class, the most useful background there is,
have high outputs too) nor the class's output on its own clips after the update (the ridge, wider than it has
clips, still fits them) can tell.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from avcil.errors import InvalidInput
from avcil.modeldir import ModelDir, ModelDirError

# A source whose median window is this close to a class mean (in units of the classes' own spread) is refused.
RESEMBLANCE = 1.25


def resemblance(readout, inputs: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Per window (readout inputs [n, in_dim]): the index of the nearest class mean and the distance to it in
    units of the training clips' spread about their class means."""
    means, spread = readout.class_spread()
    seen = np.flatnonzero((readout.count > 0).numpy())
    distances = torch.cdist(readout.expanded(inputs.float()).double(), means) / spread.clamp_min(1e-12)
    nearest = distances.argmin(dim=1)
    return seen[nearest.numpy()], distances.gather(1, nearest[:, None])[:, 0].numpy()


def resembled_classes(readout, inputs: torch.Tensor, groups: np.ndarray, names: list[str],
                      sources: Sequence[str]) -> list[str]:
    """One line for each source (rows of `inputs` with the same group) whose median window lies among a class's
    training clips."""
    nearest, distance = resemblance(readout, inputs)
    lines = []
    for group in np.unique(groups):
        rows = groups == group
        median = float(np.median(distance[rows]))
        if median <= RESEMBLANCE:
            label = names[int(np.bincount(nearest[rows]).argmax())]
            lines.append(f"{sources[group]} looks like class {label!r} (its windows lie {median:.2f} spreads from "
                         f"that class's mean; the class's own clips about 1)")
    return lines


def learn_background(model_dir: str | Path, audio: np.ndarray, visual: np.ndarray, groups: np.ndarray | None = None,
                     sources: Sequence[str] | None = None, force: bool = False) -> dict:
    """Add these windows (features; `groups[i]`: which of `sources` window i came from) as background; commit and
    return a summary with the new version."""
    if len(audio) == 0 or len(audio) != len(visual):
        raise InvalidInput(f"learning background needs windows: got {len(audio)} audio and {len(visual)} visual rows")
    groups = np.zeros(len(audio), int) if groups is None else np.asarray(groups)
    sources = list(sources) if sources is not None else ["the recorded background"]
    model = ModelDir(model_dir)
    started = time.perf_counter()
    with model.writer():
        loaded = model.load()
        head = loaded.head.eval()
        readout = head.readout
        if readout is None or not hasattr(readout, "accumulate_background"):
            raise ModelDirError(f"{model.root}: background is learnt by the analytic readout, which this model "
                                f"does not have (train it with the default method)")
        audio_t, visual_t = torch.from_numpy(np.asarray(audio, np.float32)), torch.from_numpy(
            np.asarray(visual, np.float32))
        with torch.no_grad():
            inputs = head.readout_inputs(audio_t, visual_t, head.features(audio_t, visual_t).fused)
        suspects = resembled_classes(readout, inputs, groups, loaded.class_names, sources)
        if suspects and not force:
            raise InvalidInput("not learnt as background: " + "; ".join(suspects) + ". Background must hold none "
                               "of the classes; leave those files out, or pass --force to add them anyway")
        readout.accumulate_background(inputs)
        readout.solve()
        seconds = time.perf_counter() - started
        version = model.commit(
            head, loaded.memory, loaded.manifest["classes"], loaded.manifest["features"],
            extra={"parent": loaded.version, "training": loaded.manifest.get("training"),
                   "note": f"learnt background from {len(sources)} source(s), {len(audio)} windows",
                   "field_learning": {"background_windows": len(audio), "sources": len(sources),
                                      "forced_past": suspects if force else [], "seconds": round(seconds, 3)}})
    return {"version": version, "parent": loaded.version, "background_windows": len(audio),
            "background_windows_total": int(readout.negative_count), "sources": len(sources),
            "suspects_forced": suspects if force else [], "seconds": seconds}
