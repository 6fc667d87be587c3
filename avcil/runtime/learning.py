"""From the clips of a new class, of background, or of a correction to a committed version: the one path that
`avcil learn` and the Python API (`avcil.Model.learn`, `.learn_background`, `.correct`) both take.

Clips are media files (a list of paths) or a `Recording` from a camera and a microphone. Each function runs under
the model dir's writer lock, which the caller holds (`ModelDir.writer`), so that the version checked before encoding
is the one the update starts from. Each returns the learning summary (`version`, `parent`, ...) with the seconds
spent encoding (`encode_seconds`) and learning (`learn_seconds`).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence, Union

import numpy as np

from avcil.errors import InvalidInput
from avcil.modeldir.schema import ManifestKey
from avcil.runtime.field_settings import STRETCH_WINDOWS


@dataclass(frozen=True)
class Recording:
    """Clips recorded live: `clips` windows of the profile's length, a countdown of `countdown_s` before each."""
    camera: str
    microphone: str
    clips: int
    countdown_s: float = 3.0


@dataclass(frozen=True)
class Stretch:
    """Background from live time: `windows` windows sampled over `seconds` of a camera and a microphone that the
    operator vouches hold none of the classes (`avcil learn --background --minutes M`)."""
    camera: str
    microphone: str
    seconds: float
    windows: int = STRETCH_WINDOWS


Clips = Union[Sequence[Union[str, Path]], Recording, Stretch]


def say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def bulk_encoder(loaded):
    """The encoder profile a loaded version records, set to encode in ONNX Runtime where that is faster on this
    machine (avcil.export.cached: lite on a CPU, exported once into the cache)."""
    from avcil.export.cached import use_onnxruntime
    from avcil.model.encoders import profile_from_record
    from avcil.fileio import default_cache

    profile = profile_from_record(loaded.manifest[ManifestKey.FEATURES].get("profile"))
    use_onnxruntime(profile, default_cache())
    return profile


def learn_new_class(model, label: str, clips: Clips, *, method: str = "analytic", settings=None,
                    drop_suspect: bool = False, refine_later: bool = False, progress: bool = True,
                    log: Callable[[str], None] = say) -> tuple[dict, np.ndarray, np.ndarray]:
    """Learn class `label` of `model` (a ModelDir whose writer lock the caller holds) from `clips`: the refusals
    before anything is encoded, the clips encoded, the enrolment gate, the class learnt and committed.
    `refine_later`: a gradient update will follow (refused up front where it cannot run). (summary, audio, visual):
    the features, for a refinement."""
    from avcil.runtime.clip_signals import measure_signals
    from avcil.runtime.enrol_checks import gate_enrolment
    from avcil.runtime.field import learn_class, preflight_new_class, record_clips

    # Refusals before recording or encoding anything (a refinement's gradient step included, not after the analytic
    # update is committed).
    loaded = preflight_new_class(model, label, "avcil" if refine_later else method)
    profile = bulk_encoder(loaded)
    encode_started = time.perf_counter()
    signals = []  # what each clip's recording shows, for the enrolment gate
    if isinstance(clips, Recording):
        audio, visual = record_clips(clips.camera, clips.microphone, clips.clips, profile, clips.countdown_s,
                                     on_recorded=lambda n, window: signals.append(
                                         measure_signals(window.waveform, window.frames)))
        names = [f"clip {n}" for n in range(1, len(audio) + 1)]
    else:
        # Whole clips, the view the model's other classes were trained from: a class learnt from live-window views
        # beside classes learnt from whole clips draws live windows of every class to it (docs/decision.md).
        names = [str(path) for path in _files(clips, f"learning {label!r}")]
        audio, visual = profile.encode_files(names, progress=progress, on_decoded=lambda path, clip: signals.append(
            measure_signals(clip.waveform, clip.frames)))
    encode_seconds = time.perf_counter() - encode_started
    # The enrolment gate, before anything is committed: suspect clips named (and dropped if asked), a class of
    # suspect clips only refused, the class's separation from the others measured.
    audio, visual, findings = gate_enrolment(label, loaded, audio, visual, signals, names, drop_suspect,
                                             exemplars=lambda: model.load(loaded.version).memory, log=log)
    # `learn_seconds` is learn_class's `seconds`: from its start (label check, writer lock, loading and verifying
    # the version, the update, the memory update) to just before the commit; writing the new version is not in it.
    summary = learn_class(model.root, label, audio, visual, settings, progress=progress, method=method, log=log)
    summary.update(encode_seconds=round(encode_seconds, 3), learn_seconds=round(summary["seconds"], 3), **findings)
    return summary, audio, visual


def learn_negatives(model, clips: Clips, *, not_label: str | None = None, force: bool = False,
                    progress: bool = True) -> dict:
    """Learn what live windows see of `clips` as none of the classes: background (`not_label` None: the clips
    hold no class; `force` adds files that look like one) or corrections of class `not_label` (windows labelled it
    that are not it). `model`: a ModelDir whose writer lock the caller holds."""
    from avcil.runtime.background import learn_background, learn_not
    from avcil.runtime.field import record_clips, record_stretch
    from avcil.runtime.file_windows import encode_window_views

    loaded = model.load(with_memory=False)
    model.check_exemplars(loaded)  # the new version keeps them: refused before anything is encoded
    if not_label is not None and not_label not in loaded.class_names:
        raise InvalidInput(f"--not {not_label!r}: the model ({loaded.version}) has no such class; it knows "
                           f"{', '.join(map(repr, loaded.class_names))}")
    profile = bulk_encoder(loaded)
    started = time.perf_counter()
    probes = sources = None  # recorded: each clip is its own source
    if isinstance(clips, Stretch):
        if not_label is not None:
            raise InvalidInput("a stretch of live time is learnt as background (--minutes goes with --background)")
        audio, visual = record_stretch(clips.camera, clips.microphone, clips.seconds, clips.windows, profile)
        audio, visual = without_class_like(loaded, audio, visual)
    elif isinstance(clips, Recording):
        audio, visual = record_clips(clips.camera, clips.microphone, clips.clips, profile, clips.countdown_s)
    else:
        sources = [str(path) for path in _files(clips, "learning background" if not_label is None
                                                else f"correcting {not_label!r}")]
        audio, visual = encode_window_views(profile, sources, progress=progress)  # what live windows will see
        if not_label is None:
            probes = profile.encode_files(sources, progress=False)  # what the background guard checks
    encode_seconds = time.perf_counter() - started
    if not_label is None:
        summary = learn_background(model.root, audio, visual, probes, sources, force=force)
    else:
        summary = learn_not(model.root, not_label, audio, visual, sources)
    summary.update(encode_seconds=round(encode_seconds, 3), learn_seconds=round(summary.pop("seconds"), 3))
    return summary


def without_class_like(loaded, audio: np.ndarray, visual: np.ndarray,
                       log: Callable[[str], None] = say) -> tuple[np.ndarray, np.ndarray]:
    """The windows of a stretch less those the background guard would refuse (within RESEMBLANCE spreads of a
    class mean), said in one line: among hundreds of windows of a room a few always lie that near a class, and
    refusing the whole stretch for them would leave the device with none of its own background."""
    from avcil.runtime.background import RESEMBLANCE, resemblance
    from avcil.runtime.class_space import readout_inputs_of

    head = loaded.head.eval()
    if head.readout is None:
        return audio, visual  # learn_background refuses it, naming why
    _, distance = resemblance(head.readout, readout_inputs_of(head, audio, visual))
    keep = distance > RESEMBLANCE
    if not keep.any():
        raise InvalidInput(f"every one of the stretch's {len(keep)} windows lies within {RESEMBLANCE} spreads of a "
                           f"class: it held a class, or the classes are too alike to tell background from them")
    if not keep.all():
        log(f"left out {int((~keep).sum())} of the stretch's {len(keep)} windows: they lie within {RESEMBLANCE} "
            f"spreads of a class mean, as the classes' own clips do")
    return audio[keep], visual[keep]


def _files(files, doing: str) -> list:
    """The media files to learn from: a list of paths, not one path (whose letters would each be a file)."""
    if isinstance(files, (str, Path)):
        return [files]
    files = list(files)
    if not files:
        raise InvalidInput(f"{doing} needs clips: no files given")
    return files
