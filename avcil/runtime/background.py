"""Learning background: windows that hold none of the model's classes, added on purpose.

    windows = encode_window_views(profile, files)     # what live windows see of each file: the rows learnt
    probes = profile.encode_files(files)               # one whole-clip row per file: the rows the guard checks
    learn_background("MODEL", *windows, probes, files)  # -> a summary with the new version's name

Background windows go into the analytic readout's ridge with a target of 0 for every class (avcil/model/readout.py
`accumulate_background`): the readout learns to answer "none of mine" there, and the open-set score models them as
the background they are (docs/decision.md). Like a class, it is one closed-form update and a new version.

An operator who records a class by mistake as background would teach the model to miss that class. So each source
is compared with the classes first, in the readout's expanded space and from the sums it keeps: the distance of the
source's whole-clip features (the view training clips were learnt from) to the nearest class mean, in units of the
pooled spread of training clips about their class mean (`AnalyticReadout.class_spread`). A class's own clips lie
about 1 unit from its mean; on AV-Digits with the lite encoders, held-out test digits lay 0.84-1.17 units from
their digit's mean and background clips 1.84-2.87 (docs/decision.md). A source within RESEMBLANCE units of a class
mean is refused, naming the class, unless forced. The windows learnt are not the probe: a window view of a class's
clip is shifted from its training clips by the silence and frames around it (1.2-1.4 units on AV-Digits, several
on the toy clips of the tests), which would blur the line. Neither the ridge output (windows the model wrongly
takes for a class, the most useful background there is, have high outputs too) nor the class's output on its own
clips after the update (the ridge, wider than it has clips, still fits them) can tell.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from avcil.errors import InvalidInput
from avcil.modeldir import ModelDir, ModelDirError
from avcil.runtime.class_space import ClassSpace, readout_inputs_of

# A source this close to a class mean (in units of the classes' own spread about their means) is refused.
RESEMBLANCE = 1.5


def resemblance(readout, inputs: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Per window (readout inputs [n, in_dim]): the index of the nearest class mean and the distance to it in
    units of the training clips' spread about their class means."""
    space = ClassSpace(readout)
    distances = space.class_distances(inputs)
    nearest = distances.argmin(dim=1)
    return space.seen[nearest.numpy()], distances.gather(1, nearest[:, None])[:, 0].numpy()


def resembled_classes(readout, probes: torch.Tensor, names: list[str], sources: Sequence[str]) -> list[str]:
    """One line for each source whose probe (readout inputs, one row per source) lies among a class's training
    clips."""
    nearest, distance = resemblance(readout, probes)
    return [f"{source} looks like class {names[int(k)]!r} (it lies {d:.2f} spreads from that class's mean; the "
            f"class's own clips about 1)" for source, k, d in zip(sources, nearest, distance) if d <= RESEMBLANCE]


def learn_background(model_dir: str | Path, audio: np.ndarray, visual: np.ndarray,
                     probes: tuple[np.ndarray, np.ndarray] | None = None, sources: Sequence[str] | None = None,
                     force: bool = False) -> dict:
    """Add these windows (features) as background; commit and return a summary with the new version. `probes`:
    one whole-clip (audio, visual) row per source, what the guard checks (default: each window is its own
    source, as recorded clips are)."""
    if len(audio) == 0 or len(audio) != len(visual):
        raise InvalidInput(f"learning background needs windows: got {len(audio)} audio and {len(visual)} visual rows")
    probes = (audio, visual) if probes is None else probes
    sources = list(sources) if sources is not None else [f"recorded clip {i + 1}" for i in range(len(probes[0]))]
    if len(sources) != len(probes[0]):
        raise InvalidInput(f"learning background: {len(sources)} sources for {len(probes[0])} probe rows")
    model = ModelDir(model_dir)
    started = time.perf_counter()
    with model.writer():
        loaded = model.load()
        head = loaded.head.eval()
        readout = head.readout
        if readout is None or not hasattr(readout, "accumulate_background"):
            raise ModelDirError(f"{model.root}: background is learnt by the analytic readout, which this model "
                                f"does not have (train it with the default method)")
        suspects = resembled_classes(readout, readout_inputs_of(head, *probes), loaded.class_names, sources)
        if suspects and not force:
            raise InvalidInput("not learnt as background: " + "; ".join(suspects) + ". Background must hold none "
                               "of the classes; leave those files out, or pass --force to add them anyway")
        readout.accumulate_background(readout_inputs_of(head, audio, visual))
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

