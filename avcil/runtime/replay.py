"""Replay: file sources decided through the live path as fast as the CPU allows.

Paced play (avcil.runtime.live) hands a file's frames and audio blocks to the frame history and the audio ring at
their clock times and decides each window once it has ended. Replay hands over the same frames and blocks, stamped
with the same times on a clock of its own that starts at 0, and decides each window as soon as the sources have
delivered up to its end. Windows, encoders, head and decision rule are the live ones, so a replayed window is the
window paced play would cut (tests/test_replay.py holds the two to the same decisions); only the waiting is gone,
and no window is ever dropped. This is what the stream benchmark (avcil.bench.stream) and the demo's figures over
every test clip run on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

from avcil.errors import InvalidInput
from avcil.runtime.sources import (AudioRing, FrameHistory, SourceError, audio_file_chunks, check_video_file,
                                   load_audio_tracks, video_file_frames)
from avcil.runtime.windows import Window, WindowAssembler, history_settings


class _Feed:
    """Items (time, payload) of a time-ordered iterator, handed to `sink` up to a time."""

    def __init__(self, items: Iterator[tuple[float, object]], sink: Callable[[object, float], None]):
        self.items, self.sink = items, sink
        self.pending: tuple[float, object] | None = None
        self.last_time = float("-inf")
        self.finished = False

    def until(self, time: float, inclusive_next: bool = False) -> None:
        """Hand over every item stamped at or before `time` (and, with `inclusive_next`, the first one after it:
        the audio block that covers `time`)."""
        while not self.finished:
            if self.pending is None:
                self.pending = next(self.items, None)
                if self.pending is None:
                    self.finished = True
                    return
            stamp, payload = self.pending
            if stamp > time and not inclusive_next:
                return
            self.sink(payload, stamp)
            self.last_time = stamp
            self.pending = None
            if stamp > time:
                return


class ReplayInput:
    """Video and audio files on a virtual clock starting at 0, with the buffers a LiveInput has (`frames`,
    `ring`) and the same window assembly. `camera`, `microphone`: comma-separated files, as `avcil run` takes."""

    def __init__(self, camera: str, microphone: str, rate: int, seconds: float, hop: float, frame_prep,
                 slot_s: float = 0.0):
        history_s, min_interval = history_settings(seconds, hop, frame_prep)
        self.frames = FrameHistory(history_s, min_interval)
        self.ring = AudioRing(rate, history_s)
        video_paths = [Path(p) for p in camera.split(",")]
        for path in video_paths:
            if not path.is_file():
                raise SourceError(f"camera file {path}: no such file (replay takes files only)")
            check_video_file(path)
        tracks = load_audio_tracks(microphone.split(","), rate, slot_s)
        self.audio_seconds = sum(len(t) for t in tracks) / rate
        self.video = _Feed(video_file_frames(video_paths, 0.0, slot_s=slot_s), self.frames.add)
        self.audio = _Feed(audio_file_chunks(tracks, rate, 0.0), lambda chunk, end: self.ring.append(chunk, end))
        self.assembler = WindowAssembler(self.ring, self.frames, seconds, frame_prep, audio_done=lambda: True)
        self.seconds = seconds

    def window(self, end: float) -> Window:
        """The window ending at `end` (virtual seconds), the sources advanced to it."""
        self.video.until(end)
        self.audio.until(end, inclusive_next=True)
        return self.assembler(end, audio_live=False)

    @property
    def finished(self) -> bool:
        """Both files have been handed over whole."""
        return self.video.finished and self.audio.finished


def replay(recognizer, camera: str, microphone: str, on_decision: Callable[[dict, Window], None],
           hop: float | None = None, slot_s: float = 0.0, limit_s: float | None = None) -> dict:
    """Decide every window of the files from the first full one, hop by hop, until a window ends at or after the
    end of both files (as paced play stops once the sources have played out), or after `limit_s` seconds of
    stream. Decisions are the recognizer's, with `window` in stream seconds; returns counts."""
    from avcil.runtime.recognizer import live_timing

    seconds, hop = live_timing(recognizer, hop)
    source = ReplayInput(camera, microphone, recognizer.audio_prep.sample_rate, seconds, hop, recognizer.frame_prep,
                         slot_s)
    if source.audio_seconds < seconds:
        raise InvalidInput(f"{microphone}: {source.audio_seconds:.2f} s of audio is shorter than one window "
                           f"({seconds:.2f} s)")
    count, end = 0, seconds
    recognizer.start_stream()
    while limit_s is None or end <= limit_s:
        window = source.window(end)
        decision = recognizer.decide(window)
        decision = {"window": [round(window.start, 3), round(window.end, 3)], **decision, "dropped_windows": 0,
                    "audio_missing": False, "video_missing": False}
        on_decision(decision, window)
        count += 1
        if source.finished and end >= source.audio_seconds:
            break
        end = seconds + count * hop
    return {"decisions": count, "dropped_windows": 0, "window_s": seconds, "hop_s": hop}
