"""Live sources on one monotonic clock: a camera (OpenCV), a microphone (sounddevice), and audio/video files
paced in real time so that they behave like live sources.

Every source runs its own reader thread and only ever keeps a bounded recent past:
- video sources keep timestamped frames thinned to `min_interval` (what a clip window samples from) over the last
  `history_s` seconds; a slow consumer never makes them fall behind, it just sees newer frames;
- audio sources keep a ring buffer of the last `history_s` seconds at the source's own rate, with the monotonic
  time of its newest sample; the window's preprocessing resamples to the profile's rate
  (avcil.data.preprocess.resample), so a device or file at another rate works unchanged.

`open_camera(SRC)` takes a device index ("0"), a video file, or an http(s)/rtsp URL; `open_microphone(SRC)` takes
a sounddevice name or index, or an audio/video file. Streams that drop are reopened with exponential backoff.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from pathlib import Path
from typing import Iterator, Sequence

import cv2
import numpy as np

from avcil.errors import AvcilError
from avcil.data.preprocess import as_mono

log = logging.getLogger(__name__)

clock = time.monotonic
STREAM_PREFIXES = ("http://", "https://", "rtsp://", "rtsps://", "udp://", "tcp://")
# How finely paced files and the microphone hand audio to the ring. A window's decision waits for the block that
# holds its end, half a block on average: 10 ms blocks (WebRTC's frame) wait 5 ms less than 20 ms ones.
AUDIO_BLOCK_S = 0.01
RECONNECT_BACKOFF_S = (0.25, 4.0)  # first and largest wait between attempts to reopen a dropped stream


class SourceError(AvcilError, RuntimeError):
    """A source that cannot be opened: the message says what was asked for and what exists."""


# Buffers ---------------------------------------------------------------------------------------------------------
class AudioRing:
    """The last `seconds` of mono audio at `rate`, and the clock time of the newest sample."""

    def __init__(self, rate: int, seconds: float):
        self.rate = int(rate)
        self.buffer = np.zeros(int(np.ceil(seconds * rate)), dtype=np.float32)
        self.written = 0  # samples ever appended
        self.newest_time: float | None = None
        self.lock = threading.Lock()

    def append(self, samples: np.ndarray, end_time: float) -> None:
        samples = np.asarray(samples, dtype=np.float32)[-len(self.buffer):]
        with self.lock:
            start = self.written % len(self.buffer)
            first = min(len(samples), len(self.buffer) - start)
            self.buffer[start:start + first] = samples[:first]
            self.buffer[:len(samples) - first] = samples[first:]
            self.written += len(samples)
            self.newest_time = end_time

    def covers(self, end_time: float) -> bool:
        with self.lock:
            return self.newest_time is not None and self.newest_time >= end_time

    def window(self, end_time: float, seconds: float) -> np.ndarray:
        """The `seconds` of audio that end at clock time `end_time`; zeros where nothing was recorded (before the
        source started, or after its newest sample)."""
        return self.cut(end_time, seconds)[0]

    def cut(self, end_time: float, seconds: float) -> tuple[np.ndarray, int | None]:
        """`window`, and the index (samples ever appended before it) of its first sample: the same index is the
        same samples, so that work done on part of a window before it ends can be matched to it (None: nothing
        recorded yet)."""
        length = int(round(seconds * self.rate))
        out = np.zeros(length, dtype=np.float32)
        with self.lock:
            if self.newest_time is None:
                return out, None
            end = self.written - int(round((self.newest_time - end_time) * self.rate))  # sample index of end_time
            start = end - length
            lo, hi = max(start, self.written - len(self.buffer), 0), min(end, self.written)
            if hi > lo:
                out[lo - start:hi - start] = self.buffer[np.arange(lo, hi) % len(self.buffer)]
        return out, start


class SteadyStamps:
    """Clock times for a sound card's blocks counted from its samples rather than read when each callback runs, so
    that a moment maps to the same sample index of the ring whenever it is asked (a window's head and the window
    itself, avcil.runtime.sfx_stream). A callback runs a few milliseconds late, and by a different amount each time;
    the count follows the clock again when the two drift apart by more than `max_drift_s` (a card's clock runs some
    ppm off the computer's, and an overflow loses samples)."""

    def __init__(self, rate: int, max_drift_s: float = 0.05):
        self.rate, self.max_drift_s = rate, max_drift_s
        self.anchor: float | None = None  # the clock time of sample 0 of the count
        self.samples = 0

    def __call__(self, count: int, now: float) -> float:
        """The clock time of the last of `count` samples handed over at clock time `now`."""
        self.samples += count
        stamp = None if self.anchor is None else self.anchor + self.samples / self.rate
        if stamp is None or abs(stamp - now) > self.max_drift_s:
            self.anchor, self.samples, stamp = now, 0, now
        return stamp


class FrameHistory:
    """Timestamped RGB frames of the last `seconds`, at most one per `min_interval`."""

    def __init__(self, seconds: float, min_interval: float):
        self.seconds, self.min_interval = seconds, min_interval
        self.frames: collections.deque[tuple[float, np.ndarray]] = collections.deque()
        self.lock = threading.Lock()
        self.received = 0
        self.newest_time: float | None = None  # of the newest frame received, kept or thinned out

    def add(self, frame_bgr: np.ndarray, when: float) -> None:
        with self.lock:
            self.received += 1
            self.newest_time = when
            if self.frames and when - self.frames[-1][0] < self.min_interval:
                return
            self.frames.append((when, cv2.cvtColor(frame_bgr, cv2.COLOR_BGR2RGB)))
            while self.frames and when - self.frames[0][0] > self.seconds:
                self.frames.popleft()

    def settled_before(self, earliest: float) -> float:
        """Clock times (from `earliest`, as `sample_stamped` takes it) before this one pick the frame they pick now,
        whatever arrives later: a frame is kept only `min_interval` or more after the newest kept. -inf while no
        frame at or after `earliest` is kept (one that arrives would replace the newest)."""
        with self.lock:
            if not self.frames or self.frames[-1][0] < earliest:
                return float("-inf")
            return self.frames[-1][0] + self.min_interval

    def latest(self) -> tuple[float, np.ndarray] | None:
        with self.lock:
            return self.frames[-1] if self.frames else None

    def sample(self, times: Sequence[float]) -> list[np.ndarray] | None:
        """For each clock time, the newest frame taken at or before it (the oldest one kept for times before all
        frames); None while no frame has arrived."""
        stamped = self.sample_stamped(times)
        return None if stamped is None else [frame for _, frame in stamped]

    def sample_stamped(self, times: Sequence[float],
                       earliest: float | None = None) -> list[tuple[float, np.ndarray]] | None:
        """`sample` with each frame's clock time, which identifies it (a frame's features can be reused). With
        `earliest` (a window's start), a time whose newest frame was taken before it takes the first frame taken at
        or after it instead, where there is one: the frames kept are thinned to one per `min_interval`, so the
        newest at a window's start may be up to that much older, and of the clip before (where paced files each
        fill a window, every window's first frame was the previous clip's last)."""
        with self.lock:
            if not self.frames:
                return None
            stamps = np.array([t for t, _ in self.frames])
            picks = np.clip(np.searchsorted(stamps, np.asarray(times), side="right") - 1, 0, len(stamps) - 1)
            if earliest is not None:
                first = int(np.searchsorted(stamps, earliest, side="left"))
                if first < len(stamps):
                    picks = np.maximum(picks, first)
            return [self.frames[i] for i in picks]


# Threads ---------------------------------------------------------------------------------------------------------
class _Reader:
    """A daemon thread running `_loop` until `stop()`."""

    name = "source"

    def __init__(self):
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None

    def start(self) -> "_Reader":
        self._thread = threading.Thread(target=self._guarded, name=self.name, daemon=True)
        self._thread.start()
        return self

    def _guarded(self) -> None:
        try:
            self._loop()
        except BaseException as error:  # noqa: BLE001 - kept for the consumer, which reports it
            self.error = error
            log.error("%s stopped: %s", self.name, error)

    def _loop(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    @property
    def finished(self) -> bool:
        return self._thread is not None and not self._thread.is_alive()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


# Video -------------------------------------------------------------------------------------------------------------
class CameraSource(_Reader):
    """A camera index or a network stream, read as fast as it delivers; reopened with backoff when it drops."""

    name = "camera"

    def __init__(self, source: int | str, history: FrameHistory, open_timeout_s: float = 10.0):
        super().__init__()
        self.source, self.history = source, history
        self.open_timeout_s = open_timeout_s
        self.reconnects = 0

    def _open(self) -> cv2.VideoCapture | None:
        capture = cv2.VideoCapture(self.source)
        if capture.isOpened():
            return capture
        capture.release()
        return None

    def wait_opened(self, timeout: float | None = None) -> None:
        """Block until the first frame arrives; a SourceError if none comes within the open timeout."""
        deadline = clock() + (timeout or self.open_timeout_s)
        while self.history.latest() is None:
            if self.error is not None:
                raise SourceError(f"camera {self.source!r}: {self.error}")
            if clock() > deadline:
                raise SourceError(f"camera {self.source!r}: no frame within {timeout or self.open_timeout_s:.0f} s "
                                  f"(is the device or stream there? /dev/video* and URLs are what OpenCV opens)")
            time.sleep(0.02)

    def _loop(self) -> None:
        wait = RECONNECT_BACKOFF_S[0]
        while not self._stop.is_set():
            capture = self._open()
            if capture is None:
                log.warning("camera %r: cannot open; retrying in %.2f s", self.source, wait)
                self._stop.wait(wait)
                wait = min(wait * 2, RECONNECT_BACKOFF_S[1])
                continue
            got_frame = False
            while not self._stop.is_set():
                ok, frame = capture.read()
                if not ok:
                    break
                got_frame = True
                self.history.add(frame, clock())
            capture.release()
            if self._stop.is_set():
                break
            if got_frame:
                wait = RECONNECT_BACKOFF_S[0]
                self.reconnects += 1
            log.warning("camera %r: stream ended; reconnecting in %.2f s", self.source, wait)
            self._stop.wait(wait)
            wait = min(wait * 2, RECONNECT_BACKOFF_S[1])


def check_video_file(path: Path) -> None:
    """A SourceError unless the file gives at least one video frame: an empty, damaged, truncated or sound-only
    file would otherwise play as a camera that shows nothing, and every decision would be made on audio alone."""
    from avcil.data.decode import DecodeError, open_video

    if not path.is_file():
        raise SourceError(f"camera file {path}: no such file")
    try:
        capture = open_video(path)
    except DecodeError as error:
        raise SourceError(f"camera {path} gives no video frame: {error.reason}") from None
    try:
        ok, _ = capture.read()
    finally:
        capture.release()
    if not ok:
        raise SourceError(f"camera {path} gives no video frame: its video stream decodes to nothing (truncated?)")


class NoCamera:
    """The camera of a run asked to decide on sound alone (`avcil run --audio-only`): it delivers no frame."""

    name = "no camera"
    error = None
    finished = True

    def start(self) -> "NoCamera":
        return self

    def stop(self) -> None:
        pass


def _video_fps(path: Path) -> float:
    capture = cv2.VideoCapture(str(path))
    fps = float(capture.get(cv2.CAP_PROP_FPS))
    capture.release()
    return fps if fps > 0 else 25.0


class PacedVideoFiles(_Reader):
    """Video files played one after the other in real time from clock time `start`: each file occupies at least
    `slot_s` seconds (its last frame is held), optionally looping. Frames are decoded just in time."""

    name = "video files"

    def __init__(self, paths: Sequence[str | Path], history: FrameHistory, start: float | None = None,
                 loop: bool = False, slot_s: float = 0.0):
        super().__init__()
        self.paths = [Path(p) for p in paths]
        for path in self.paths:
            check_video_file(path)
        self.history, self.start_time, self.loop, self.slot_s = history, start, loop, slot_s

    def _loop(self) -> None:
        start = self.start_time if self.start_time is not None else clock()
        for when, frame in video_file_frames(self.paths, start, self.loop, self.slot_s):
            self._stop.wait(max(0.0, when - clock()))
            if self._stop.is_set():
                return
            self.history.add(frame, when)


def video_file_frames(paths: Sequence[Path], start: float, loop: bool = False,
                      slot_s: float = 0.0) -> Iterator[tuple[float, np.ndarray]]:
    """(clock time, BGR frame) of video files played one after the other from clock time `start`, decoded just in
    time: each file takes at least `slot_s` seconds, in the middle of its slot, its first frame held before it and
    its last after it, as a still camera would keep showing them (the audio likewise, load_audio_tracks): a clip's
    features hold it centred in its window, and so does a window that is its slot. Paced play waits for each time;
    replay (avcil.runtime.replay) does not, so both see the same frames at the same times."""
    at = start
    while True:
        for path in paths:
            period = 1.0 / _video_fps(path)
            capture = cv2.VideoCapture(str(path))
            count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) if slot_s else 0
            lead = max(0.0, slot_s - count * period) / 2 if count > 0 else 0.0  # no count given: no lead
            index, frame = 0, None
            try:
                while True:
                    ok, image = capture.read()
                    if not ok:
                        break
                    if index == 0:
                        yield from _held(image, at, at + lead, period)
                    frame = image
                    yield at + lead + index * period, frame
                    index += 1
            finally:
                capture.release()
            end = at + max(lead + index * period, slot_s)
            yield from _held(frame, at + lead + index * period, end, period)
            at = end
        if not loop:
            return


def _held(frame: np.ndarray | None, since: float, until: float, period: float) -> Iterator[tuple[float, np.ndarray]]:
    """A frame held from clock time `since` until `until`, a copy every `period`; the last stamped before
    `until - period / 2`, so that the frame seen at `until` is the one that comes next."""
    when = since
    while frame is not None and when < until - period / 2:
        yield when, frame
        when += period


# Audio -------------------------------------------------------------------------------------------------------------
def read_audio_file(path: str | Path, fallback_rate: int) -> tuple[np.ndarray, int]:
    """Mono float32 audio of a file at its own rate when soundfile reads it (wav, flac, ogg), otherwise decoded by
    ffmpeg at `fallback_rate` (video containers)."""
    import soundfile as sf

    from avcil.data.decode import read_audio

    path = Path(path)
    if not path.is_file():
        raise SourceError(f"microphone file {path}: no such file")
    try:
        samples, rate = sf.read(str(path), dtype="float32", always_2d=True)
        return as_mono(samples), int(rate)
    except sf.LibsndfileError:
        return read_audio(path, fallback_rate), fallback_rate


class PacedAudioFiles(_Reader):
    """Audio of files (wav, or the sound track of videos) appended to the ring in real time from clock time
    `start`, each file padded with silence to `slot_s` seconds, optionally looping. Files at a rate other than
    the ring's are resampled once when loaded."""

    name = "audio files"

    def __init__(self, paths: Sequence[str | Path], ring: AudioRing, start: float | None = None, loop: bool = False,
                 slot_s: float = 0.0):
        super().__init__()
        self.ring, self.start_time, self.loop = ring, start, loop
        self.tracks = load_audio_tracks(paths, ring.rate, slot_s)

    def _loop(self) -> None:
        start = self.start_time if self.start_time is not None else clock()
        for end, chunk in audio_file_chunks(self.tracks, self.ring.rate, start, self.loop):
            self._stop.wait(max(0.0, end - clock()))
            if self._stop.is_set():
                return
            self.ring.append(chunk, end)


def audio_file_chunks(tracks: Sequence[np.ndarray], rate: int, start: float,
                      loop: bool = False) -> Iterator[tuple[float, np.ndarray]]:
    """(clock time of its last sample, samples) of tracks at `rate` played one after the other from clock time
    `start`, in blocks of AUDIO_BLOCK_S as a sound card hands them over."""
    block = max(1, int(AUDIO_BLOCK_S * rate))
    at = start
    while True:
        for track in tracks:
            for offset in range(0, len(track), block):
                chunk = track[offset:offset + block]
                yield at + (offset + len(chunk)) / rate, chunk
            at += len(track) / rate
        if not loop:
            return


def load_audio_tracks(paths: Sequence[str | Path], rate: int, slot_s: float = 0.0) -> list[np.ndarray]:
    """Mono float32 tracks of audio or video files at `rate`, each padded with silence to `slot_s` seconds, half
    before it and half after (video_file_frames centres its frames alike)."""
    from avcil.data.preprocess import resample

    tracks = []
    for path in paths:
        samples, file_rate = read_audio_file(path, rate)
        samples = resample(samples, file_rate, rate)
        pad = max(0, int(round(slot_s * rate)) - len(samples))
        tracks.append(np.concatenate([np.zeros(pad // 2, np.float32), samples, np.zeros(pad - pad // 2, np.float32)]))
    return tracks


def list_input_devices() -> list[dict]:
    """The input devices sounddevice sees: index, name, channels, default rate."""
    import sounddevice as sd

    return [{"index": i, "name": d["name"], "channels": d["max_input_channels"],
             "default_rate": d["default_samplerate"]}
            for i, d in enumerate(sd.query_devices()) if d["max_input_channels"] > 0]


def find_input_device(name_or_index: str | int) -> dict:
    """An input device by index or by (part of its) name, or a SourceError that lists the devices there are."""
    devices = list_input_devices()
    text = str(name_or_index)
    if text.isdigit():
        matches = [d for d in devices if d["index"] == int(text)]
    else:
        matches = [d for d in devices if d["name"] == text] or [d for d in devices if text.lower() in d["name"].lower()]
    if not matches:
        listing = "\n".join(f"  {d['index']}: {d['name']} ({d['channels']} ch, {d['default_rate']:.0f} Hz)"
                            for d in devices) or "  (none: no sound server or card is visible to PortAudio)"
        raise SourceError(f"microphone {text!r}: no such input device. Input devices here:\n{listing}")
    return matches[0]


class Microphone:
    """A sounddevice input stream whose callback appends to the ring (mono, at the rate the device was opened
    with: the profile's when the device accepts it, else its default)."""

    name = "microphone"

    def __init__(self, device: str | int, rate: int, history_s: float):
        import sounddevice as sd

        self.device = find_input_device(device)
        self.rate = self._supported_rate(sd, rate)
        self.ring = AudioRing(self.rate, history_s)
        self.callbacks = 0
        self.overflows = 0
        self.stamps = SteadyStamps(self.rate)
        self.stream = sd.InputStream(device=self.device["index"], channels=1, samplerate=self.rate,
                                     blocksize=max(1, int(AUDIO_BLOCK_S * self.rate)), dtype="float32",
                                     callback=self._callback)
        self.error: BaseException | None = None

    def _supported_rate(self, sd, wanted: int) -> int:
        try:
            sd.check_input_settings(device=self.device["index"], channels=1, samplerate=wanted)
            return wanted
        except Exception:  # noqa: BLE001 - PortAudio reports an unsupported rate in several ways
            rate = int(self.device["default_rate"])
            log.info("microphone %s: %d Hz not supported, recording at %d Hz and resampling", self.device["name"],
                     wanted, rate)
            return rate

    def _callback(self, indata, frames, times, status) -> None:
        if status.input_overflow:
            self.overflows += 1
        self.callbacks += 1
        self.ring.append(indata[:, 0].copy(), self.stamps(frames, clock()))

    def start(self) -> "Microphone":
        self.stream.start()
        return self

    def wait_started(self, timeout: float = 10.0) -> None:
        """The first callback comes 1.5-2 s after the stream starts with PulseAudio
        (docs/architecture.md#testing-without-hardware)."""
        deadline = clock() + timeout
        while self.callbacks == 0:
            if clock() > deadline:
                raise SourceError(f"microphone {self.device['name']!r}: no audio within {timeout:.0f} s")
            time.sleep(0.02)

    def stop(self) -> None:
        self.stream.stop()
        self.stream.close()

    @property
    def finished(self) -> bool:
        return False


# Opening by name ---------------------------------------------------------------------------------------------------
def is_stream(source: str) -> bool:
    return source.lower().startswith(STREAM_PREFIXES)


def open_camera(source: str | None, history: FrameHistory, start: float | None = None, loop: bool = False,
                slot_s: float = 0.0):
    """A camera index, a stream URL, or video file(s) (comma-separated) paced in real time; None: no camera."""
    if source is None:
        return NoCamera()
    if source.isdigit():
        return CameraSource(int(source), history)
    if is_stream(source):
        return CameraSource(source, history)
    return PacedVideoFiles(source.split(","), history, start, loop, slot_s)


def open_microphone(source: str, rate: int, history_s: float, start: float | None = None, loop: bool = False,
                    slot_s: float = 0.0):
    """Audio file(s) (comma-separated; wav or the sound track of videos) paced in real time, or else a sounddevice
    input by index or name ('default', 'pulse', part of a device name)."""
    parts = source.split(",")
    if all(Path(p).suffix and Path(p).is_file() for p in parts):
        return PacedAudioFiles(parts, AudioRing(rate, history_s), start, loop, slot_s)
    if Path(source).suffix and not source.isdigit() and len(parts) == 1 and "/" in source:
        raise SourceError(f"microphone file {source}: no such file")
    return Microphone(source, rate, history_s)
