"""Learning what is none of the classes: background added on purpose, and corrections ("that was not X").

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
about 1 unit from its mean; on AV-Digits with the lite encoders, held-out test digits lay 0.82-1.53 units from
their digit's mean (90 % within 1.23) and background clips 1.45-3.70 (docs/decision.md). A source within
RESEMBLANCE units of a class mean is refused, naming the class, unless forced. The windows learnt are not the
probe: a window view of a class's clip is shifted from its training clips by the silence and frames around it
(1.2-1.4 units on AV-Digits, several on the toy clips of the tests), which would blur the line. Neither the ridge
output (windows the model wrongly takes for a class, the most useful background there is, have high outputs too)
nor the class's output on its own clips after the update (the ridge, wider than it has clips, still fits them) can
tell.

A correction (`learn_not`, `avcil learn --not LABEL`) is a window the model labelled LABEL that holds none of the
classes. It is kept as it is beside the readout's sums, not added to them (avcil/model/readout.py says why), and
the decision rule makes every window nearer to it than to the class means `unknown` (docs/decision.md).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from avcil.errors import InvalidInput
from avcil.modeldir import ModelDir, ModelDirError
from avcil.modeldir.schema import ManifestKey
from avcil.runtime.class_space import ClassSpace, readout_inputs_of

# A source this close to a class mean (in units of the classes' own spread about their means) is refused.
RESEMBLANCE = 1.4


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
    _check_windows(audio, visual, "learning background")
    probes = (audio, visual) if probes is None else probes
    sources = _source_names(sources, len(probes[0]))
    if len(sources) != len(probes[0]):
        raise InvalidInput(f"learning background: {len(sources)} sources for {len(probes[0])} probe rows")
    suspects = []

    def change(loaded, head, readout) -> tuple[str, dict]:
        suspects.extend(resembled_classes(readout, readout_inputs_of(head, *probes), loaded.class_names, sources))
        if suspects and not force:
            raise InvalidInput("not learnt as background: " + "; ".join(suspects) + ". Background must hold none "
                               "of the classes; leave those files out, or pass --force to add them anyway")
        readout.accumulate_background(readout_inputs_of(head, audio, visual))
        readout.solve()
        return (f"learnt background from {len(sources)} source(s), {len(audio)} windows",
                {"background_windows": len(audio), "sources": len(sources), "forced_past": suspects if force else []})

    summary, readout = _update_readout(model_dir, "background", change)
    return {**summary, "background_windows": len(audio), "background_windows_total": int(readout.negative_count),
            "sources": len(sources), "suspects_forced": suspects if force else []}


def learn_not(model_dir: str | Path, label: str, audio: np.ndarray, visual: np.ndarray,
              sources: Sequence[str] | None = None) -> dict:
    """"That was not `label`": keep these windows (features) as corrections of class `label`; from the new
    version on, a window nearer to one of them than to every class mean is `unknown` (HeadScores.rejected).
    Commit and return a summary with the new version. Nothing else in the model changes: the classes, their
    scores elsewhere, the background."""
    _check_windows(audio, visual, f"correcting {label!r}")
    sources = _source_names(sources, len(audio))

    def change(loaded, head, readout) -> tuple[str, dict]:
        names = loaded.class_names
        if label not in names:
            raise InvalidInput(f"no class {label!r} to correct: the model ({loaded.version}) knows "
                               f"{', '.join(map(repr, names))}")
        readout.add_rejections(readout_inputs_of(head, audio, visual), names.index(label))
        return (f"learnt that {len(sources)} source(s), {len(audio)} windows, are not {label!r}",
                {"not": label, "windows": len(audio), "sources": len(sources)})

    summary, readout = _update_readout(model_dir, "a correction", change)
    return {**summary, "not": label, "windows": len(audio), "sources": len(sources),
            "corrections_total": len(readout.rejection_inputs)}


def _check_windows(audio: np.ndarray, visual: np.ndarray, doing: str) -> None:
    if len(audio) == 0 or len(audio) != len(visual):
        raise InvalidInput(f"{doing} needs windows: got {len(audio)} audio and {len(visual)} visual rows")


def _source_names(sources: Sequence[str] | None, count: int) -> list[str]:
    """The sources' names, or each recorded clip its own source."""
    return list(sources) if sources is not None else [f"recorded clip {i + 1}" for i in range(count)]


def _update_readout(model_dir: str | Path, what: str, change) -> tuple[dict, torch.nn.Module]:
    """Under the model dir's writer lock: load the current version, let `change(loaded, head, readout)` update its
    analytic readout and return (note, field_learning details), commit the result as a new version. ({version,
    parent, seconds}, the readout); `seconds` runs to just before the commit."""
    model = ModelDir(model_dir)
    started = time.perf_counter()
    with model.writer():
        loaded = model.load()
        head = loaded.head.eval()
        readout = head.readout
        if readout is None or not hasattr(readout, "accumulate_background"):
            raise ModelDirError(f"{model.root}: {what} is learnt by the analytic readout, which this model does "
                                f"not have (train it with the default method)")
        note, details = change(loaded, head, readout)
        seconds = time.perf_counter() - started
        version = model.commit_after(loaded, head, loaded.memory, note,
                                     {ManifestKey.FIELD_LEARNING: {**details, "seconds": round(seconds, 3)}})
    return {"version": version, "parent": loaded.version, "seconds": seconds}, readout

