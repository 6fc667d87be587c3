"""Live recognition: clip window -> preprocessing -> encoders (chosen backend) -> head -> probabilities ->
smoothing over recent windows -> a label, or `unknown` under the threshold.

Where the visual encoder encodes each frame on its own (lite), the frames of the next window are encoded while the
recognizer waits for it to end (avcil.runtime.frame_tokens), so that after the end at most the newest frame is left
(mostly none: it is final up to 0.19 s before the end);
likewise the lite audio's speech-embedding windows as their audio arrives (avcil.runtime.speech_stream), so that
after the end aiSFX and the newest speech window or two are left.

A live microphone whose stream ends mid-run (unplugged, its sound server's source removed) does not stop the
run: its windows are decided on video alone, each such decision is marked `"audio_missing": true`, and one line
on stderr says when the audio went missing and one when it is back (avcil.runtime.windows.SourcePresence). A device
keeps recognising what it sees rather than going dark; the decisions say which ones heard nothing. (PulseAudio
moves a stream whose source went away to its fallback source after about 2 s, so the audio usually comes back,
silent, from there.) A live camera that stops delivering frames is the same the other way round: decided on audio
alone, `"video_missing": true`, a line when it is lost and one when it is back. "Alone" means by the analytic
readout's readout of that modality alone (`"decided_on": "video"` or `"audio"`) where the model keeps one; a model
without (older ones, gradient methods) decides with silence or black frames standing in for what is missing. A
camera file that gives no frame at all is refused at the start (avcil.runtime.sources.check_video_file); `avcil run
--audio-only` decides on sound alone on purpose, every decision marked video_missing.

The head always runs in torch from the model dir's current version (it is small, and it is the part field learning
changes): a watcher thread notices a new version (`avcil learn`, `avcil model rollback`), loads and verifies it
off the recognition path, and swaps it in between two decisions, so recognition never pauses for an update.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TextIO

import numpy as np
import torch

from avcil.data.preprocess import audio_preprocess_from_settings, frame_preprocess_from_settings
from avcil.runtime.decision import (DEFAULT_SMOOTHING, DEFAULT_TOP_K, FALLBACK_SCORE, UNKNOWN, DecisionRule,
                                    REJECTED, HeadScores, default_score)
from avcil.runtime.frame_tokens import FrameTokens
from avcil.runtime.heap import trim_heap
from avcil.runtime.speech_stream import SpeechStream, snap_hop
from avcil.modeldir import LoadedModel, ModelDir, ModelDirError
from avcil.modeldir.schema import ManifestKey
from avcil.runtime.sources import clock
from avcil.runtime.threads import RuntimeThreads
from avcil.runtime.windows import Schedule, SourcePresence, Window, WindowAssembler

log = logging.getLogger(__name__)

WATCH_INTERVAL_S = 0.5
FRAME_POLL_S = 0.02  # while waiting for a window's end: how often to look for frames ready to encode


@dataclass
class _Head:
    version: str
    head: torch.nn.Module
    class_names: list[str]
    scores: HeadScores
    rule: DecisionRule


class Recognizer:
    """Decides one window at a time. `backend`: torch | onnxruntime | tensorrt for the encoders; `profile`: an
    already built encoder profile for the torch backend (default: rebuilt from the manifest); `threads`: the
    thread counts to run with (avcil.runtime.threads; recorded in each decision)."""

    def __init__(self, model_dir: str | Path, backend: str = "torch", device: str = "cpu", profile=None,
                 threshold: float | None = None, smoothing: int = DEFAULT_SMOOTHING, top_k: int = DEFAULT_TOP_K,
                 watch: bool = True, threads: RuntimeThreads | None = None, score: str | None = None):
        from avcil.backends import model_backends

        self.threads = (threads or RuntimeThreads(backend=backend)).apply()
        self.model = ModelDir(model_dir)
        loaded = self.model.load(with_memory=False)
        record = loaded.manifest[ManifestKey.FEATURES].get("profile")
        if not record:
            raise ModelDirError(f"{model_dir}: the model records no encoder profile (trained on features from "
                                f"elsewhere), so live sources cannot be encoded for it")
        self.audio_prep = audio_preprocess_from_settings(record["settings"]["audio"])
        self.frame_prep = frame_preprocess_from_settings(record["settings"]["visual"])
        options = ({"threads": self.threads["onnxruntime_intra_op"], "spinning": self.threads["onnxruntime_spinning"]}
                   if backend == "onnxruntime" else {})
        encoders = model_backends(model_dir, backend, device, profile=profile, manifest=loaded.manifest,
                                  **options)
        self.audio_encoder, self.visual_encoder = encoders["audio"], encoders["visual"]
        self.frame_tokens = (FrameTokens(self.visual_encoder, self.frame_prep)
                             if FrameTokens.supports(self.visual_encoder) else None)
        self.speech = None  # the lite audio's speech windows, embedded as the audio arrives (runtime.speech_stream)
        if {"audio_sfx", "speech_window"} <= set(encoders) and SpeechStream.supports(self.audio_prep):
            self.speech = SpeechStream(encoders["audio_sfx"], encoders["speech_window"], self.audio_prep,
                                       encoders.get("audio_sfx_columns"), self.audio_encoder)
        self.backend = backend
        # `score` None: each version's default (decision.default_score). A --threshold is on the scale of the score
        # in effect when it was given; a later version that needs another score decides with that one's default.
        self._asked = {"score": score, "threshold": threshold, "smoothing": smoothing, "top_k": top_k}
        self._current = self._wrap(loaded, None)
        self._threshold_score = self._current.rule.score  # the score a --threshold given was meant for
        self.last_features: tuple[np.ndarray, np.ndarray] | None = None  # the last window's, for benchmarks
        self.reloads: list[dict] = []
        self._stop = threading.Event()
        self._watcher = threading.Thread(target=self._watch, name="model watcher", daemon=True) if watch else None
        if self._watcher is not None:
            self._watcher.start()

    def _wrap(self, loaded: LoadedModel, previous: _Head | None) -> _Head:
        """The version's head with its scorer and decision rule (`previous`: the version in use, None at start);
        the rule (and its smoothing) carries over from the version before when the score stays the same."""
        head = loaded.head.eval()
        scores = HeadScores(head)
        score = self._asked["score"] or default_score(scores)
        if not scores.supports(score):
            if previous is None:
                raise ModelDirError(f"{self.model.root}: the {score} score needs the analytic readout, which this "
                                    f"model (method {loaded.manifest.get('training', {}).get('method', '?')}) "
                                    f"does not have")
            log.warning("%s cannot give the %s score asked for (no analytic readout); deciding with %s",
                        loaded.version, score, FALLBACK_SCORE)
            score = FALLBACK_SCORE
        if previous is not None and previous.rule.score == score:
            rule = previous.rule
        else:
            threshold = self._asked["threshold"] if previous is None or score == self._threshold_score else None
            rule = DecisionRule(score, threshold, self._asked["smoothing"], self._asked["top_k"])
            if previous is not None:
                log.warning("%s decides with the %s score, threshold %s", loaded.version, score, rule.threshold)
        scores.prepare(rule.score)  # on a reload: here on the watcher thread, not in the next decision
        return _Head(loaded.version, head, loaded.class_names, scores, rule)

    @property
    def rule(self) -> DecisionRule:
        """The decision rule of the version in use."""
        return self._current.rule

    @property
    def version(self) -> str:
        return self._current.version

    @property
    def class_names(self) -> list[str]:
        return self._current.class_names

    # Hot reload ------------------------------------------------------------------------------------------------
    def _watch(self) -> None:
        seen = self._current.version
        while not self._stop.wait(WATCH_INTERVAL_S):
            try:
                pointer = self.model.current()
            except ModelDirError:
                continue
            if pointer == seen:
                continue
            seen = pointer
            self.reload()

    def reload(self) -> bool:
        """Load the current version (or the last good one) and swap it in; False (and the old head kept) when
        nothing loadable is there."""
        try:
            loaded = self.model.load(with_memory=False)
        except ModelDirError as error:
            log.error("model dir changed but no version loads (%s); keeping %s", error, self._current.version)
            return False
        if loaded.version == self._current.version:
            return False
        self.reloads.append({"time": time.time(), "from": self._current.version, "to": loaded.version,
                             "refused": loaded.refused})
        # One reference assignment: a decision sees the old or the new head.
        self._current = self._wrap(loaded, self._current)
        log.info("now using model %s (%d classes)", loaded.version, len(loaded.class_names))
        trim_heap()  # the old head's memory, else kept by this thread's arena (avcil.runtime.heap)
        return True

    def close(self) -> None:
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(timeout=5)

    # Deciding --------------------------------------------------------------------------------------------------
    def start_stream(self) -> None:
        """Forget what was encoded from an earlier stream before deciding a new one: frame tokens and speech windows
        are kept by their clock time and aiSFX's heads by their ring's sample index, which a new stream gives to
        other content (a replay's clock starts at 0, a new ring counts from 0). Without this a replay after another
        took the first one's frames for its own windows at the same times."""
        if self.frame_tokens is not None:
            self.frame_tokens.forget()
        if self.speech is not None:
            self.speech.forget()

    def decide(self, window: Window) -> dict:
        """One decision: label, score, top-k, and the latency of each stage in milliseconds."""
        marks = [("start", time.perf_counter())]

        def mark(stage: str) -> None:
            marks.append((stage, time.perf_counter()))

        speech_after_end = sfx_frames = 0
        if self.speech is not None:
            spectrogram = self.speech.sfx_input(window.waveform, window.rate, window.first_sample)
            mark("audio_preprocess")
            audio_features, speech_after_end, sfx_frames = self.speech.audio_features(
                spectrogram, window.waveform, window.rate, window.start, window.first_sample)
        else:
            audio_input = self.audio_prep(window.waveform, window.rate)[None]
            mark("audio_preprocess")
            audio_features, = self.audio_encoder(audio_input)
        mark("audio_encoder")
        if self.frame_tokens is not None and window.frame_stamps is not None:
            prepared = self.frame_tokens.prepare(list(zip(window.frame_stamps, window.frames)))
            mark("frame_preprocess")
            self.frame_tokens.encode(prepared)
            visual_features = self.frame_tokens.window(window.frame_stamps)
            frames_encoded = len(prepared[0])
        else:
            frames = window.frames
            if frames is None:  # no camera frame yet: black frames, as an unlit camera would show
                frames = self.frame_prep.black_frames()
            visual_input = self.frame_prep(frames)[None]
            mark("frame_preprocess")
            visual_features, = self.visual_encoder(visual_input)
            frames_encoded = self.frame_prep.count
        mark("visual_encoder")
        current = self._current
        self.last_features = (audio_features, visual_features)
        rule = current.rule
        alone = single_modality(window)
        ranking, scores = current.scores(torch.from_numpy(audio_features), torch.from_numpy(visual_features),
                                         (rule.score,), alone)
        mark("head")
        latency = {stage: (t - marks[i][1]) * 1000 for i, (stage, t) in enumerate(marks[1:])}
        rejected = bool(scores[REJECTED][0]) if REJECTED in scores else False
        decided_on = alone if current.scores.decides_alone(alone) else current.scores.head.config.modality
        return {**rule(ranking[0], float(scores[rule.score][0]), current.class_names, rejected),
                "decided_on": decided_on,
                "latency_ms": {k: round(v, 2) for k, v in latency.items()},
                "frames_encoded_after_end": frames_encoded,
                "speech_windows_after_end": speech_after_end, "sfx_frames_after_end": sfx_frames,
                "model_version": current.version, "backend": self.backend, "threads": self.threads}

    def wait_for_end(self, end: float, assembler: WindowAssembler, stop: threading.Event) -> None:
        """Sleep until the window ending at clock time `end` has ended (or `stop`); meanwhile, for a frame-by-frame
        visual encoder, encode each of its frames once it is final (WindowAssembler.settled_times): its moment has
        passed, or, for the newest, no frame still to come can replace it."""
        streaming = self.frame_tokens is not None or self.speech is not None
        poll = FRAME_POLL_S if streaming else float("inf")
        while not stop.is_set() and (now := clock()) < end:
            worked = False
            ready = assembler.settled_times(end, now) if self.frame_tokens is not None else ()
            if len(ready):
                stamped = assembler.sample(end, ready)
                worked = bool(stamped and self.frame_tokens.encode(self.frame_tokens.prepare(stamped)))
            if self.speech is not None:
                worked = self.speech.encode_ready(assembler.ring, end - assembler.seconds) > 0 or worked
            if not worked:  # after work, look at the clock again before sleeping
                stop.wait(min(end - now, poll))


def labelled_frame(frame_rgb: np.ndarray, decision: dict | None, width: int | None = None) -> np.ndarray:
    """A BGR copy of the frame (scaled to `width`, keeping its aspect) with the decision's label and score
    written on it, white on a black outline so that it reads on any picture."""
    import cv2

    image = cv2.cvtColor(frame_rgb, cv2.COLOR_RGB2BGR)
    if width and image.shape[1] != width:
        image = cv2.resize(image, (width, max(1, round(image.shape[0] * width / image.shape[1]))))
    if decision is not None:
        text = f"{decision['label']} {decision['score']:.2f}"
        cv2.putText(image, text, (8, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(image, text, (8, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (255, 255, 255), 1, cv2.LINE_AA)
    return image


class DecisionWriter:
    """Where decisions go: JSON lines (a file, flushed per line), a console line, and optionally an annotated
    video (the window's last frame with the decision written on it, one frame per decision)."""

    def __init__(self, jsonl: str | Path | None = None, console: TextIO | None = sys.stdout,
                 video: str | Path | None = None, video_fps: float = 1.0):
        self.jsonl = open(jsonl, "a") if jsonl else None
        self.console = console
        self.video_path, self.video_fps = video, video_fps
        self.video = None

    def __call__(self, decision: dict, window: Window) -> None:
        if self.jsonl is not None:
            self.jsonl.write(json.dumps(decision) + "\n")
            self.jsonl.flush()
        if self.console is not None:
            top = ", ".join(f"{t['label']} {t['score']:.2f}" for t in decision["top_k"])
            print(f"{time.strftime('%H:%M:%S')} {decision['label']:>12} {decision['score']:.2f}  [{top}]  "
                  f"{decision['latency_ms']['total']:.0f} ms  dropped {decision['dropped_windows']}  "
                  f"{decision['model_version']}", file=self.console, flush=True)
        if self.video_path is not None and window.frames is not None:
            self._annotate(decision, window.frames[-1])

    def _annotate(self, decision: dict, frame_rgb: np.ndarray) -> None:
        import cv2

        image = labelled_frame(frame_rgb, decision)
        if self.video is None:
            self.video_size = (image.shape[1], image.shape[0])
            self.video = cv2.VideoWriter(str(self.video_path), cv2.VideoWriter_fourcc(*"mp4v"), self.video_fps,
                                         self.video_size)
        self.video.write(cv2.resize(image, self.video_size))  # a reconnected stream may come back at another size

    def close(self) -> None:
        if self.jsonl is not None:
            self.jsonl.close()
        if self.video is not None:
            self.video.release()


def recognise(recognizer: Recognizer, assembler: WindowAssembler, schedule: Schedule,
              on_decision: Callable[[dict, Window], None], until: float | None = None,
              stop: threading.Event | None = None, sources_done: Callable[[], bool] = lambda: False,
              audio: SourcePresence | None = None, video: SourcePresence | None = None) -> int:
    """Decide every scheduled window until clock time `until`, `stop` is set, or the sources have finished;
    returns the number of decisions. Each decision gains `time` (wall clock), `window` (its clock span),
    `dropped_windows` (so far), `latency_ms.total` (from the window's end to the decision), `audio_missing` (a
    live microphone's audio did not reach the window's end: the stream ended or the device went away; the
    decision is made on video alone) and `video_missing` (a live camera delivered no frame lately; the decision
    is made on audio alone); `decided_on` says which readout decided (see the module's docstring). `audio`,
    `video`: the presence watchers of live sources (SourcePresence, which say in one line when one is lost and
    when it is back); None for file sources, which are never missing."""
    count = 0
    stop = stop or threading.Event()
    recognizer.start_stream()
    while not stop.is_set():
        end = schedule.next_end()
        if until is not None and end > until:
            break
        recognizer.wait_for_end(end, assembler, stop)
        if stop.is_set():
            break
        window = assembler(end, audio_live=audio is not None, video_live=video is not None)
        decision = recognizer.decide(window)
        decision["latency_ms"]["total"] = round((time.monotonic() - end) * 1000, 2)
        for presence, missing in ((audio, window.audio_missing), (video, window.video_missing)):
            if presence is not None:
                presence.update(missing, window.end)
        on_decision(decision_line(decision, window, schedule.dropped), window)
        count += 1
        if sources_done():
            break
    return count


def single_modality(window: Window) -> str | None:
    """The modality a window holds alone ("audio" or "video"; its other source is missing), else None."""
    if window.audio_missing != window.video_missing:
        return "video" if window.audio_missing else "audio"
    return None


def decision_line(decision: dict, window: Window, dropped_windows: int = 0) -> dict:
    """A decision (`Recognizer.decide`) as `avcil run` writes it: with `time` (wall clock), `window` (its clock
    span), `dropped_windows` (so far) and whether the window's audio or video was missing."""
    return {"time": round(time.time(), 3), "window": [round(window.start, 3), round(window.end, 3)], **decision,
            "dropped_windows": dropped_windows, "audio_missing": window.audio_missing,
            "video_missing": window.video_missing}


def live_timing(recognizer: Recognizer, hop: float | None = None) -> tuple[float, float]:
    """The window length of the recogniser's profile and the hop between decisions (default: a third of the
    window; for the lite speech embedding snapped so that consecutive windows share speech windows)."""
    from avcil.runtime.windows import HOP_SHARE, window_seconds

    seconds = window_seconds(recognizer.audio_prep)
    if not hop:
        hop = seconds * HOP_SHARE
        if recognizer.speech is not None:
            hop = snap_hop(hop, recognizer.audio_prep)  # 1 s -> 0.96 s: consecutive windows share speech windows
    return seconds, hop


def run_live(recognizer: Recognizer, camera: str, microphone: str, on_decision: Callable[[dict, Window], None],
             hop: float | None = None, duration: float | None = None, loop: bool = False, slot_s: float = 0.0,
             stop: threading.Event | None = None) -> dict:
    """Open the sources (see avcil.runtime.sources.open_camera / open_microphone), then decide every window until
    `duration` seconds have passed, `stop` is set, or file sources have played out. File sources start together
    on the clock, each file taking at least `slot_s` seconds. Returns counts of decisions and dropped windows."""
    from avcil.runtime.live import LiveInput

    seconds, hop = live_timing(recognizer, hop)
    with LiveInput(camera, microphone, recognizer.audio_prep.sample_rate, seconds, hop, recognizer.frame_prep, loop,
                   slot_s) as live:
        decisions, schedule = recognise_input(recognizer, live, on_decision, seconds, hop, duration, stop)
    live.raise_failure()
    return {"decisions": decisions, "dropped_windows": schedule.dropped, "window_s": seconds, "hop_s": hop,
            "camera_reconnects": getattr(live.video, "reconnects", 0), "frames_received": live.frames.received}


def recognise_input(recognizer: Recognizer, live, on_decision: Callable[[dict, Window], None], seconds: float,
                    hop: float, duration: float | None = None,
                    stop: threading.Event | None = None) -> tuple[int, Schedule]:
    """Decide every window of an open LiveInput (avcil.runtime.live) from its start, as `recognise` does; returns
    the number of decisions and the schedule (its `dropped` count)."""
    schedule = Schedule(first_end=live.start + seconds, hop=hop)
    assembler = WindowAssembler(live.audio.ring, live.frames, seconds, recognizer.frame_prep,
                                audio_done=lambda: live.audio.finished)
    decisions = recognise(recognizer, assembler, schedule, on_decision,
                          until=live.start + duration if duration else None, stop=stop,
                          sources_done=lambda: live.finished, audio=live.audio_presence(), video=live.video_presence())
    return decisions, schedule
