"""Field learning: add a class to a model dir on the device, from video files or from clips recorded live.

    features = profile.encode_files(["a.mp4", ...])              # or record_clips(...) from camera + microphone
    learn_class("MODEL", "doorbell", *features)                    # -> a summary with the new version's name

The default update is analytic: the class's clips are added to the sufficient statistics of the head's analytic
readout (avcil/model/readout.py) and the ridge solution is recomputed, which equals training on every clip seen so
far at once and takes milliseconds; no exemplar is replayed. `method="avcil"` runs one AV-CIL step of the shared
learner (avcil/train/learner.py) instead: the current head is the frozen teacher, the new class is one new task, the
exemplar memory of the old classes is replayed. Either way the memory then makes room for the new class under the same
budget (docs/method.md#exemplar-memory), so that a gradient refinement can run later. The model dir's writer lock is
held from reading the current version to committing the new one, so two learners cannot lose each other's class; the
commit is atomic, so killing `avcil learn` at any moment leaves the previous version in place.
"""

from __future__ import annotations

import copy
import math
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from avcil.errors import InvalidInput
from avcil.data.clips import ArrayClipSet
from avcil.modeldir import ModelDir, ModelDirError
from avcil.modeldir.schema import ManifestKey
from avcil.train.learner import Learner, fit_readout
from avcil.train.methods import build_method
from avcil.train.protocol import fused_embedder
from avcil.runtime.inputs import check_label
from avcil.runtime.field_settings import FIELD_METHODS, FieldSettings  # noqa: F401 (re-exported)

SILENT_PEAK = 1e-6  # below any real microphone's noise floor (-120 dBFS): a muted or wrong input, or no audio


def check_new_label(names: list[str], label: str, where: Path) -> None:
    """Refuse a class name that breaks the label rule (avcil.runtime.inputs.check_label) or is already known."""
    check_label(label)
    if label in names:
        raise ModelDirError(f"{where}: class {label!r} is already in the model ({', '.join(names)}); "
                            f"pick another name, or roll back with `avcil model rollback`")


def check_new_class(loaded, label: str, method: str, where: Path) -> None:
    """Refuse learning class `label` by `method` into the version `loaded`: a bad or known name, an unknown method,
    a gradient update of a model without the fusion part (`check_gradient_update`)."""
    if method not in FIELD_METHODS:
        raise InvalidInput(f"unknown field learning method {method!r}; expected one of {FIELD_METHODS}")
    check_new_label(loaded.class_names, label, where)
    if method == "avcil":
        check_gradient_update(loaded.head, where)


def preflight_new_class(model: ModelDir, label: str, method: str = "analytic"):
    """The refusals of a new class before anything is recorded or encoded (`avcil learn`, the page): those of
    `check_new_class` against the version that serves, and exemplars that fail their checksums (learning keeps
    them). The version, loaded without its memory (the enrolment gate's reference)."""
    loaded = model.load(with_memory=False)
    check_new_class(loaded, label, method, model.root)
    model.check_exemplars(loaded)
    return loaded


def task_ranges(classes: list[dict]) -> list[tuple[int, int]]:
    """The [start, end) logit range of each step, from the manifest's classes in logit order."""
    ranges: list[tuple[int, int]] = []
    for index, entry in enumerate(classes):
        if ranges and entry["step"] == classes[ranges[-1][0]]["step"]:
            ranges[-1] = (ranges[-1][0], index + 1)
        else:
            ranges.append((index, index + 1))
    steps = [classes[start]["step"] for start, _ in ranges]
    if len(set(steps)) != len(steps):
        raise ModelDirError(f"the manifest's classes are not grouped by step ({steps}); cannot tell the old tasks")
    return ranges


def learn_class(model_dir: str | Path, label: str, audio: np.ndarray, visual: np.ndarray,
                settings: FieldSettings | None = None, progress: bool = True, method: str = "analytic",
                log=None, refine: dict | None = None) -> dict:
    """Add class `label` learnt from these clips' features; commit and return a summary with the new version.

    `analytic` (default): one closed-form update of the head's analytic readout (milliseconds); a model dir without
    one (trained with a gradient method, or made before readouts existed) gets it built from its exemplars first.
    `avcil`: one AV-CIL gradient step with the current head as teacher and the exemplars replayed; the head's
    linear classifier decides afterwards.
    `refine`: the summary of an earlier call that committed this class; learn it again from that call's parent
    version (with `method`) and commit the result as a later version, unless the model moved on meanwhile.
    The summary's `seconds` runs from this call's start to just before the commit (writing the new version is not
    in it); `avcil learn` reports it as `learn_seconds`."""
    settings = settings or FieldSettings()
    log = log or (lambda text: print(text, file=sys.stderr, flush=True))
    model = ModelDir(model_dir)
    start = refine["parent"] if refine else None
    if len(audio) == 0 or len(audio) != len(visual):
        raise InvalidInput(f"learning {label!r} needs clips: got {len(audio)} audio and {len(visual)} visual rows")
    if len(audio) == 1:
        log(f"learning {label!r} from a single clip: the class will be weakly learnt; record a few more")
    started = time.perf_counter()
    with model.writer():
        if refine and model.current() != refine["version"]:
            raise ModelDirError(f"{model.root}: the current version is no longer {refine['version']} (another "
                                f"change came first); the refinement of {label!r} is not committed")
        # The callers ran preflight_new_class before recording; checked here, under the lock, since another writer
        # may have added the class meanwhile (loading with the memory refuses damaged exemplars itself).
        loaded = model.load(start)
        check_new_class(loaded, label, method, model.root)
        manifest = loaded.manifest
        classes = manifest[ManifestKey.CLASSES]
        new_index = len(classes)
        clips = ArrayClipSet([f"field/{label}/{i}" for i in range(len(audio))], np.full(len(audio), new_index),
                             np.asarray(audio, np.float32), np.asarray(visual, np.float32))
        expected = manifest[ManifestKey.FEATURES]["shape"]
        if clips.shape.to_dict() != expected:
            raise InvalidInput(f"the new clips have features {clips.shape.to_dict()}, the model expects {expected}")
        memory = loaded.memory
        if memory is not None:
            memory.quota(new_index + 1)  # a budget too small for one more class fails before training
        head = loaded.head
        update = analytic_update if method == "analytic" else _gradient_update
        details = update(head, classes, clips, memory, settings, progress, label, log)
        if memory is not None:
            memory.update(clips, {new_index: np.arange(len(audio))}, embed=fused_embedder(head))
        step = max(c["step"] for c in classes) + 1 if classes else 0
        seconds = time.perf_counter() - started
        how = f"{method}{', refining ' + refine['version'] if refine else ''}"
        try:
            version = model.commit_after(
                loaded, head, memory, f"learnt {label!r} in the field from {len(audio)} clips ({how})",
                {ManifestKey.FIELD_LEARNING: {"label": label, "clips": len(audio), "method": method,
                                              "seconds": round(seconds, 3), "settings": asdict(settings), **details}},
                classes=classes + [{"name": label, "step": step}])
        except OSError as error:  # a full disk, a read-only mount: the commit left nothing a loader sees
            raise ModelDirError(f"{model.root}: class {label!r} not learnt: writing the new version failed "
                                f"({error.strerror or error}); {loaded.version} stays current") from None
    return {"version": version, "parent": loaded.version, "label": label, "clips": len(audio), "method": method,
            "memory_clips": len(memory) if memory is not None else 0, "seconds": seconds, **details}


def analytic_update(head, classes, clips, memory, settings, progress, label, log) -> dict:
    """Add the class's clips to the readout's statistics and solve: exact joint least squares, no replay."""
    config = settings.train_config()
    details = {}
    if head.readout is None or head.config.readout["kind"] != "analytic":
        exemplars = memory.as_clip_set() if memory is not None else None
        if exemplars is None:
            raise ModelDirError("this model has neither an analytic readout nor exemplars to build one from; "
                                "learn with --method avcil")
        log(f"the model has no analytic readout yet: building it from its {len(exemplars.labels)} exemplars "
            f"(once; later classes update it directly)")
        fit_readout(head, analytic_readout_spec(), exemplars, range(len(exemplars.labels)), config, fresh=True)
        details["readout_built_from_exemplars"] = len(exemplars.labels)
    head.add_classes(1)
    fit_readout(head, head.config.readout, clips, np.arange(len(clips.labels)), config)
    return details


def analytic_readout_spec() -> dict:
    from avcil.train.methods import build_method

    return build_method("analytic").readout


def check_gradient_update(head, where: Path) -> None:
    """Refuse a gradient update of a model without the fusion part: a model trained by the analytic method on the
    encoders' features decides by its readout alone and has nothing a gradient step could start from."""
    if not head.has_fusion:
        raise ModelDirError(f"{where}: this model's head was never trained by gradient (its analytic readout reads "
                            f"the encoders' features), so a gradient update has nothing to start from; learn with "
                            f"--method analytic, or train the model with a gradient method")


def _gradient_update(head, classes, clips, memory, settings, progress, label, log) -> dict:
    """One AV-CIL step (the shared learner). The split cross-entropy scores new clips against the new classes'
    logits only: with one new class that is a softmax over one logit, which teaches nothing. A one-class step uses
    the plain cross-entropy over all classes (AV-CIL's "without split" variant); every other AV-CIL term stays."""
    if head.readout is not None:
        log("the gradient update trains the head's linear classifier, which decides from now on (the readout is "
            "set aside)")
        head.set_readout(None)
    teacher = copy.deepcopy(head).eval()
    head.add_classes(1)
    method = build_method("avcil", instance_weight=settings.instance_weight, without=("split",))
    learner = Learner(method, settings.train_config(), progress)
    report = learner.learn_step(head, teacher, task_ranges(classes), clips, np.arange(len(clips.labels)), memory,
                                step_name=f"learn {label}")
    return {"best_epoch": report.best_epoch, "train_seconds": report.seconds}


def record_clips(camera: str, microphone: str, count: int, profile, countdown_s: float = 3.0,
                 pause_s: float = 1.0, out=None, on_recorded=None) -> tuple[np.ndarray, np.ndarray]:
    """Record `count` clips of the profile's window length from live sources, with a countdown before each and
    a progress line, and encode them (see `record_from`)."""
    from avcil.runtime.live import LiveInput
    from avcil.runtime.windows import window_seconds

    out = out or sys.stderr  # looked up now, so that a redirected stderr gets the lines
    seconds = window_seconds(profile.audio_prep)
    with LiveInput(camera, microphone, profile.audio_prep.sample_rate, seconds, seconds, profile.frame_prep) as live:
        return record_from(live, count, profile, countdown_s, pause_s,
                           on_step=lambda step: print(step_line(step), file=out, flush=True),
                           on_recorded=on_recorded)


def step_line(step: dict) -> str:
    """The progress line of a recording step (see `record_from`)."""
    if "countdown" in step:
        return f"clip {step['clip']}/{step['of']} in {step['countdown']} ..."
    return f"clip {step['clip']}/{step['of']}: recording {step['recording_s']:.1f} s"


def record_from(live, count: int, profile, countdown_s: float = 3.0, pause_s: float = 1.0,
                on_step=lambda step: None, on_recorded=None) -> tuple[np.ndarray, np.ndarray]:
    """Record `count` clips of the profile's window length from an open LiveInput (avcil.runtime.live), which
    may be deciding meanwhile, and encode them. Before each clip, `on_step` gets {"clip", "of", "countdown": s}
    once a second, then {"clip", "of", "recording_s"} as the clip starts; `on_recorded(n, window)` gets each
    recorded window (avcil.runtime.windows.Window: its waveform and frames). A clip without a new camera frame or
    with only silence is an error (a stalled stream or a muted input would otherwise teach the class a still
    picture or silence)."""
    from avcil.runtime.sources import SourceError
    from avcil.runtime.windows import WindowAssembler, window_seconds

    seconds = window_seconds(profile.audio_prep)
    assemble = WindowAssembler(live.audio.ring, live.frames, seconds, profile.frame_prep)
    audio_inputs, visual_inputs = [], []
    for n in range(1, count + 1):
        for left in range(math.ceil(countdown_s), 0, -1):
            on_step({"clip": n, "of": count, "countdown": left})
            time.sleep(min(1.0, countdown_s - (left - 1)))  # a fractional countdown shortens its first second
        on_step({"clip": n, "of": count, "recording_s": seconds})
        end = time.monotonic() + seconds
        time.sleep(seconds)
        window = assemble(end)
        newest = live.frames.latest()
        if newest is None or newest[0] < window.start:
            raise SourceError(f"camera {live.camera_name!r} delivered no frame during clip {n}/{count}; "
                              f"did the stream stop?")
        if not np.any(np.abs(window.waveform) > SILENT_PEAK):
            raise SourceError(f"microphone {live.microphone_name!r} recorded only silence during clip {n}/{count}; "
                              f"is it muted, or the wrong input?")
        if on_recorded is not None:
            on_recorded(n, window)
        audio_input, visual_input = profile.clip_inputs(window.waveform, window.rate, window.frames)
        audio_inputs.append(audio_input)
        visual_inputs.append(visual_input)
        time.sleep(pause_s)
    return profile.encode_batch(np.stack(audio_inputs), np.stack(visual_inputs))


def record_stretch(camera: str, microphone: str, seconds: float, windows: int, profile, seed: int = 0,
                   out=None) -> tuple[np.ndarray, np.ndarray]:
    """Features of `windows` live windows spread at random over a stretch of `seconds` of these sources that the
    operator vouches holds none of the classes (see `record_stretch_from`). File sources loop, standing in for a
    camera that keeps looking."""
    from avcil.runtime.live import LiveInput
    from avcil.runtime.windows import window_seconds

    length = window_seconds(profile.audio_prep)
    with LiveInput(camera, microphone, profile.audio_prep.sample_rate, length, length / 3, profile.frame_prep,
                   loop=True) as live:
        out = out or sys.stderr
        return record_stretch_from(live, seconds, windows, profile, seed,
                                   on_line=lambda line: print(line, file=out, flush=True))


def record_stretch_from(live, seconds: float, windows: int, profile, seed: int = 0,
                        on_line=lambda line: None) -> tuple[np.ndarray, np.ndarray]:
    """Features of `windows` windows spread at random over the next `seconds` of an open LiveInput
    (avcil.runtime.live), which may be deciding meanwhile: background of the device's own place, what lowers false
    accepts most (docs/decision.md#background-learnt-on-purpose). A window is cut every hop, as `avcil run` cuts
    them, and kept by reservoir sampling (the i-th enters with probability windows / i, in the place of a random
    kept one), so that every window of the stretch is equally likely to be kept; a window is encoded only when it
    enters, and nothing but the kept windows' features is held. `on_line` gets a progress line every 10 s."""
    from avcil.runtime.sources import clock
    from avcil.runtime.windows import WindowAssembler, window_seconds

    length = window_seconds(profile.audio_prep)
    hop = length / 3  # as `avcil run` decides
    rng = np.random.default_rng(seed)
    kept: list[tuple[np.ndarray, np.ndarray]] = []
    assemble = WindowAssembler(live.audio.ring, live.frames, length, profile.frame_prep)
    begin = max(live.start, clock())
    end, last_line, cut = begin + length, -math.inf, 0
    while end <= begin + seconds:
        time.sleep(max(0.0, end - clock()))  # the sources' clock: a window is whole once it has passed
        cut += 1
        place = len(kept) if len(kept) < windows else int(rng.integers(cut))
        if place < windows:
            window = assemble(end)
            features = profile.encode_batch(*(part[None] for part in profile.clip_inputs(
                window.waveform, window.rate, window.frames)))
            kept[place:place + 1] = [tuple(part[0] for part in features)]
        if end - last_line >= 10 or end + hop > begin + seconds:
            on_line(f"background: {end - begin:.0f} of {seconds:.0f} s, {cut} windows seen, {len(kept)} kept")
            last_line = end
        end += hop
    if not kept:
        raise InvalidInput(f"a stretch of {seconds:g} s holds no whole window of {length:g} s: record for longer")
    return np.stack([a for a, _ in kept]), np.stack([v for _, v in kept])
