"""Decode a video file into sampled RGB frames (OpenCV) and a mono float waveform (FFmpeg's libraries, PyAV).

Every failure is a `DecodeError` naming the file, so that a caller working through many files records it and goes
on: `NoAudioTrack`, `TruncatedVideo` (the container promises more frames than decode), `EmptyClip` (no frames or
no audio samples). A missing audio track is an error unless the caller asks for silence (`missing_audio='silence'`,
which also warns): a clip without sound is usually a mistake in a data set, and silence would be learnt as a cue.
"""

from __future__ import annotations

import json
import logging
import subprocess
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from avcil.data.preprocess import sample_frame_indices
from avcil.errors import AvcilError, InvalidInput, MissingPackage

log = logging.getLogger(__name__)

MISSING_AUDIO_POLICIES = ("error", "silence")
# Containers often estimate the frame count from duration x rate; a shortfall this small is that, not damage.
_FRAME_COUNT_SLACK = 0.02


class DecodeError(AvcilError):
    """A file that cannot be turned into frames and audio."""

    def __init__(self, path: str | Path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


class NoAudioTrack(DecodeError):
    pass


class TruncatedVideo(DecodeError):
    pass


class EmptyClip(DecodeError):
    pass


@dataclass
class DecodedClip:
    frames: list[np.ndarray]  # RGB uint8 [H, W, 3], sampled uniformly, first and last included
    waveform: np.ndarray  # mono float32
    sample_rate: int
    duration: float  # seconds of video
    silent_fallback: bool = False  # the file had no audio track and `waveform` is silence


def _unopenable(path: Path) -> DecodeError:
    """Why OpenCV could not open a file, as ffprobe sees it (only asked on this failure path)."""
    if path.stat().st_size == 0:
        return EmptyClip(path, "the file is empty (0 bytes)")
    try:
        probe = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "stream=codec_type", "-of", "json",
                                str(path)], capture_output=True, timeout=60)
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return DecodeError(path, "cannot be opened as a video")
    if probe.returncode != 0:
        reason = probe.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["unreadable"]
        return DecodeError(path, f"cannot be opened as a video (damaged or truncated?): {reason[0]}")
    kinds = [s.get("codec_type") for s in json.loads(probe.stdout or b"{}").get("streams", [])]
    if not kinds:
        return EmptyClip(path, "the container holds no streams (a zero-length clip)")
    if "video" not in kinds:
        return DecodeError(path, f"no video stream (streams: {', '.join(map(str, kinds))})")
    return DecodeError(path, "OpenCV cannot decode its video stream")


def open_video(path: Path) -> cv2.VideoCapture:
    """An opened capture of the file, or a DecodeError that says why it cannot be (empty, damaged, no video)."""
    if not path.is_file():
        raise DecodeError(path, "no such file")
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise _unopenable(path)
    return capture


def _count_frames(path: Path) -> int:
    capture = open_video(path)
    count = 0
    while capture.grab():
        count += 1
    capture.release()
    return count


def read_frames(path: str | Path, count: int) -> tuple[list[np.ndarray], float]:
    """`count` RGB frames sampled uniformly over the video (first and last included), and its duration in seconds.

    Decodes sequentially up to the last sampled frame and converts only the sampled ones.
    """
    path = Path(path)
    capture = open_video(path)
    total, fps = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)), float(capture.get(cv2.CAP_PROP_FPS))
    if total <= 0:  # some streams state no count: count them, then decode again from the start
        capture.release()
        total = _count_frames(path)
        if total == 0:
            raise EmptyClip(path, "the video has no frames")
        capture = open_video(path)
    wanted = sample_frame_indices(total, count)
    wanted_set = set(wanted)
    picked: dict[int, np.ndarray] = {}
    last_image, decoded = None, 0
    tail_from = total - max(2, int(_FRAME_COUNT_SLACK * total))
    while decoded <= wanted[-1] and capture.grab():
        if decoded in wanted_set or decoded >= tail_from:
            ok, image = capture.retrieve()
            if not ok:
                break
            last_image = image
            if decoded in wanted_set:
                picked[decoded] = image
        decoded += 1
    capture.release()
    if decoded == 0:
        raise EmptyClip(path, "no frame could be decoded")
    if decoded <= wanted[-1]:
        if decoded < tail_from or last_image is None:
            raise TruncatedVideo(path, f"the container states {total} frames but decoding stopped after {decoded}")
        for index in wanted:  # a slightly optimistic frame count: the true last frame stands in for the missing ones
            picked.setdefault(index, last_image)
    frames = [cv2.cvtColor(picked[i], cv2.COLOR_BGR2RGB) for i in wanted]
    available = total if decoded > wanted[-1] else decoded
    return frames, (available / fps if fps > 0 else 0.0)


def read_audio(path: str | Path, sample_rate: int) -> np.ndarray:
    """The first audio track as mono float32 at `sample_rate`, decoded, downmixed and resampled in this process by
    FFmpeg's libraries (PyAV): the same decoder and resampler as the ffmpeg command, without starting one per clip,
    whose start-up alone took 60 of every 68 ms this cost per AV-Digits clip."""
    try:
        import av
    except ImportError as error:
        raise MissingPackage("decoding a clip's audio needs PyAV: pip install 'av>=14'") from error

    path = Path(path)
    if not path.is_file():
        raise DecodeError(path, "no such file")
    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise NoAudioTrack(path, "the file has no audio track")
            resampler = av.AudioResampler(format="flt", layout="mono", rate=int(sample_rate))
            pieces = [converted.to_ndarray().reshape(-1)
                      for frame in container.decode(container.streams.audio[0])
                      for converted in resampler.resample(frame)]
            pieces += [converted.to_ndarray().reshape(-1) for converted in resampler.resample(None)]
    except av.error.FFmpegError as error:
        raise DecodeError(path, f"could not decode the audio: {error}") from error
    waveform = np.concatenate(pieces).astype(np.float32, copy=False) if pieces else np.zeros(0, np.float32)
    if waveform.size == 0:
        raise EmptyClip(path, "the audio track has no samples")
    return waveform


def decode_clip(path: str | Path, frame_count: int, sample_rate: int, missing_audio: str = "error") -> DecodedClip:
    """Frames and audio of one clip. `missing_audio`: 'error' raises NoAudioTrack for a file without sound;
    'silence' returns zeros as long as the video instead, logs a warning, and marks the clip `silent_fallback`."""
    if missing_audio not in MISSING_AUDIO_POLICIES:
        raise InvalidInput(f"missing_audio must be one of {MISSING_AUDIO_POLICIES}, got {missing_audio!r}")
    frames, duration = read_frames(path, frame_count)
    try:
        return DecodedClip(frames, read_audio(path, sample_rate), sample_rate, duration)
    except NoAudioTrack:
        if missing_audio == "error":
            raise
    log.warning("%s: no audio track; using %.2f s of silence", path, duration)
    silence = np.zeros(max(1, int(round(duration * sample_rate))), dtype=np.float32)
    return DecodedClip(frames, silence, sample_rate, duration, silent_fallback=True)
