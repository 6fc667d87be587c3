"""One camera and one microphone, opened together on the sources' clock and kept open: what `avcil run` decides
from, what `avcil learn --camera --mic` records from, and what `avcil serve` shares between the two (a device
opens its camera and microphone once, so the server's recogniser and its recordings read the same frame history
and audio ring).

    with LiveInput("http://...", "pulse", rate=16000, seconds=1.28, hop=0.43, frame_prep=prep) as live:
        live.frames.latest(), live.audio.ring.window(end, 1.28)
"""

from __future__ import annotations

from avcil.errors import StageFailed
from avcil.runtime.sources import (CameraSource, FrameHistory, Microphone, NoCamera, clock, open_camera,
                                   open_microphone)
from avcil.runtime.windows import SourcePresence, history_settings

FILE_START_DELAY_S = 0.2  # file sources begin this long after opening, in step on the clock


class LiveInput:
    """The pair of sources and their buffers: `frames` (FrameHistory), `audio.ring` (AudioRing). `start` is the
    clock time from which both deliver (for a live microphone: its first callback). File sources (`loop`,
    `slot_s`: see open_camera / open_microphone) are paced in real time, in step. `camera` None: no camera, every
    window decided on sound alone."""

    def __init__(self, camera: str | None, microphone: str, rate: int, seconds: float, hop: float, frame_prep,
                 loop: bool = False, slot_s: float = 0.0):
        self.camera_name, self.microphone_name = camera, microphone
        history_s, min_interval = history_settings(seconds, hop, frame_prep)
        self.frames = FrameHistory(history_s, min_interval)
        self.start = clock() + FILE_START_DELAY_S
        self.video = open_camera(camera, self.frames, self.start, loop, slot_s)
        self.audio = open_microphone(microphone, rate, history_s, self.start, loop, slot_s)
        self.live_audio = isinstance(self.audio, Microphone)
        self.live_video = isinstance(self.video, (CameraSource, NoCamera))
        self.closed = False

    def open(self) -> "LiveInput":
        """Start both readers and wait for a live microphone's first audio and a camera's first frame (a
        SourceError naming the source when either stays silent)."""
        self.video.start()
        self.audio.start()
        try:
            if self.live_audio:
                self.audio.wait_started()
                self.start = clock()
            if isinstance(self.video, CameraSource):
                self.video.wait_opened()
        except BaseException:
            self.close()
            raise
        return self

    def audio_presence(self) -> SourcePresence | None:
        """What watches a live microphone for loss (None for files, which are never missing)."""
        return SourcePresence.audio(f"microphone {self.microphone_name!r}") if self.live_audio else None

    def video_presence(self) -> SourcePresence | None:
        """What watches a live camera for loss (None for files); without a camera, the loss is said at the start
        (`avcil run --audio-only`) and not again."""
        if isinstance(self.video, NoCamera):
            return SourcePresence.video("no camera", said=True)
        return SourcePresence.video(f"camera {self.camera_name!r}") if self.live_video else None

    @property
    def finished(self) -> bool:
        """Whether file sources have played out (live ones never finish)."""
        return self.video.finished and self.audio.finished

    def close(self) -> None:
        """Stop both readers (once: a microphone's stream cannot be closed twice)."""
        if not self.closed:
            self.closed = True
            self.video.stop()
            self.audio.stop()

    def raise_failure(self) -> None:
        """A StageFailed for a reader thread that stopped with an error."""
        for source in (self.video, self.audio):
            if getattr(source, "error", None) is not None:
                raise StageFailed(f"{source.name} failed: {source.error}")

    def __enter__(self) -> "LiveInput":
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()
