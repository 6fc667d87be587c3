"""Clip windows on the sources' monotonic clock: window length and hop from the encoder profile, frames sampled
across the window as the encoders were trained (first and last included), and a schedule that never queues:
when recognition falls behind, the windows it has no time for are dropped and counted.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Callable, TextIO

import numpy as np

from avcil.errors import InvalidInput
from avcil.data.preprocess import FramePreprocess, KaldiFbank, SfxMel
from avcil.runtime.sources import AudioRing, FrameHistory, clock

HOP_SHARE = 1 / 3  # default hop as a share of the window: a decision every third of a clip
AUDIO_WAIT_S = 0.25  # longest wait for a live source's audio to reach the window's end
# A live microphone hands over a block every 10 ms: newest audio this old means its stream has stopped, and a
# window does not wait for it (each decision would otherwise come AUDIO_WAIT_S late).
AUDIO_STALE_S = 1.0
# A live camera's newest frame this much older than a window's end means it has stopped delivering (a camera gives
# 5 to 30 frames a second; a dropped stream is reopened within RECONNECT_BACKOFF_S's first wait).
VIDEO_STALE_S = 2.0
# What a live window holds, for caches of encoded windows (the demo's background, the stream benchmark's windows):
# 2 since a window's frames are those taken within it, [start, end) (frame_times, WindowAssembler.sample).
WINDOW_CUT_VERSION = 2
END_FRAME_MARGIN_S = 1e-3  # a frame stamped this close to a window's end counts as after it (float stamps)


def window_seconds(audio_prep: KaldiFbank | SfxMel) -> float:
    """The clip length the audio encoder sees (each preprocessing states its own): the paper profile's 1024 fbank
    frames (10.24 s), lite's 3 s."""
    return float(audio_prep.window_seconds)


@dataclass
class Window:
    start: float  # clock time
    end: float
    waveform: np.ndarray  # mono float32 at `rate`
    rate: int
    frames: list[np.ndarray] | None  # `count` RGB frames, None while the camera delivers nothing
    frame_stamps: list[float] | None = None  # each frame's clock time: the same stamp is the same frame
    audio_missing: bool = False  # a live microphone's audio did not reach the window's end (zeros stand in)
    video_missing: bool = False  # a live camera delivered no frame lately (frames is None: black frames stand in)
    first_sample: int | None = None  # the ring's index of the waveform's first sample (AudioRing.cut); None: replayed


class WindowAssembler:
    """Cuts the window ending at a clock time out of an audio ring and a frame history."""

    def __init__(self, ring: AudioRing, frames: FrameHistory, seconds: float, frame_prep: FramePreprocess,
                 audio_done: Callable[[], bool] = lambda: False):
        self.ring, self.frames, self.seconds, self.count = ring, frames, seconds, frame_prep.count
        self.audio_done = audio_done  # whether a file source has delivered all its audio

    def __call__(self, end: float, audio_live: bool = True, video_live: bool = False) -> Window:
        """The window [end - seconds, end]. Waits (at most AUDIO_WAIT_S) for audio up to `end` to arrive, since a
        sound card and paced files hand it over in blocks: so that a window of paced files holds the same samples
        as the same window replayed (avcil.runtime.replay). With `video_live`, a camera that has delivered no frame
        for VIDEO_STALE_S gives no frames (rather than its last picture, frozen) and marks the window
        video_missing; file sources hold their last frame by design and are never missing."""
        deadline = clock() + AUDIO_WAIT_S
        while (not self.ring.covers(end) and clock() < deadline and not self.audio_done()
               and not (audio_live and self.audio_stale())):
            time.sleep(0.002)
        video_missing = video_live and self.video_stale(end)
        stamped = None if video_missing else self.sample(end, self.frame_times(end))
        waveform, first_sample = self.ring.cut(end, self.seconds)
        return Window(end - self.seconds, end, waveform, self.ring.rate,
                      None if stamped is None else [frame for _, frame in stamped],
                      None if stamped is None else [stamp for stamp, _ in stamped],
                      audio_missing=audio_live and not self.ring.covers(end), video_missing=video_missing,
                      first_sample=first_sample)

    def audio_stale(self) -> bool:
        newest = self.ring.newest_time
        return newest is not None and clock() - newest > AUDIO_STALE_S

    def video_stale(self, end: float) -> bool:
        newest = self.frames.newest_time
        return newest is None or end - newest > VIDEO_STALE_S

    def sample(self, end: float, times: np.ndarray) -> list[tuple[float, np.ndarray]] | None:
        """The stamped frames of the window ending at `end` at some of its `frame_times`: taken within it where it
        holds any (FrameHistory.sample_stamped)."""
        return self.frames.sample_stamped(times, earliest=end - self.seconds)

    def settled_times(self, end: float, now: float) -> np.ndarray:
        """The `frame_times` of the window ending at `end` whose frame is final at clock time `now`: their moment has
        passed, or no frame still to come can be kept before them (FrameHistory.settled_before). The newest frame
        is kept up to `min_interval` (0.19 s for the lite window) before the window's last time, so that one is
        mostly final, and can be encoded, before the window ends."""
        times = self.frame_times(end)
        return times[(times <= now) | (times < self.frames.settled_before(end - self.seconds))]

    def frame_times(self, end: float) -> np.ndarray:
        """The clock times at which the window ending at `end` samples its frames (first and last included), each
        taking the newest frame stamped at or before it (FrameHistory.sample_stamped)."""
        start = end - self.seconds
        if self.count == 1:
            return np.array([start + self.seconds / 2])
        times = np.linspace(start, end, self.count)
        # Half-open, like the audio: [start, end). A frame stamped at the very end is the next window's first (where
        # paced files each fill a window, the next clip's first frame: the demo's live windows each took one frame of
        # the clip after theirs, and decided differently from the clip's own features).
        times[-1] = end - END_FRAME_MARGIN_S
        return times


class SourcePresence:
    """Says in one line when a live source stops reaching the windows (its stream ended, the device was
    unplugged), and in one line when it is back; recognition goes on meanwhile on the other source alone, and each
    decision says which one was missing. `SourcePresence.audio(name)` for a microphone, `.video(name)` for a
    camera."""

    def __init__(self, name: str, what: str, other: str, flag: str, out: TextIO | None = None,
                 said: bool = False):
        self.name, self.what, self.other, self.flag, self.out = name, what, other, flag, out
        self.missing_since: float | None = None
        self.said = said  # the loss was announced already (a run without a camera says so at its start)

    @classmethod
    def audio(cls, name: str, out: TextIO | None = None) -> "SourcePresence":
        return cls(name, "audio", "video", "audio_missing", out)

    @classmethod
    def video(cls, name: str, out: TextIO | None = None, said: bool = False) -> "SourcePresence":
        return cls(name, "video frame", "audio", "video_missing", out, said)

    def update(self, missing: bool, at: float) -> None:
        """The presence in the window ending at clock time `at`."""
        out = self.out or sys.stderr  # looked up now, so that a redirected stderr gets the lines
        if missing and self.missing_since is None:
            self.missing_since = at
            if not self.said:
                print(f"{self.name}: no {self.what} since {time.strftime('%H:%M:%S')} (its stream ended or the "
                      f"device was unplugged); deciding on {self.other} alone, decisions marked {self.flag}",
                      file=out, flush=True)
        elif not missing and self.missing_since is not None:
            print(f"{self.name}: {self.what.split()[0]} is back after {at - self.missing_since:.1f} s", file=out,
                  flush=True)
            self.missing_since = None
            self.said = False


def history_settings(seconds: float, hop: float, frame_prep: FramePreprocess) -> tuple[float, float]:
    """How much past the sources keep (a window, two hops and a margin) and the finest frame spacing worth
    keeping (half the spacing of the frames a window samples)."""
    return seconds + 2 * hop + 1.0, seconds / max(1, frame_prep.count) / 2


class Schedule:
    """Window ends at `first_end + k * hop`. `next_end()` is the end of the next window to process: the newest
    one that has already ended when recognition is late (the skipped ones count in `dropped`), else the next."""

    def __init__(self, first_end: float, hop: float):
        if hop <= 0:
            raise InvalidInput(f"the hop between windows must be positive, got {hop}")
        self.first_end, self.hop = first_end, hop
        self.index = -1
        self.dropped = 0

    def next_end(self, now: float | None = None) -> float:
        now = clock() if now is None else now
        wanted = self.index + 1
        newest_ended = int(np.floor((now - self.first_end) / self.hop))
        if newest_ended > wanted:
            self.dropped += newest_ended - wanted
            wanted = newest_ended
        self.index = wanted
        return self.first_end + wanted * self.hop
