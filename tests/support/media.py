"""Media made for the tests: the toy world's clips and tones, the decoder tests' numbered frames, and a tone played
into the PulseAudio microphone."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

# Each class of the toy world: a colour on screen and a tone (Hz) on the sound track.
TOY_CLASSES = {"red": ("0xd02020", 440), "blue": ("0x2040d0", 1250), "green": ("0x20b040", 2600)}
TOY_RATE = 16000
FPS = 10  # of make_video's videos


def need(*programs: str) -> None:
    """Skip the test unless every one of `programs` is on the PATH."""
    missing = [p for p in programs if shutil.which(p) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (scripts/setup.sh installs them)")


def make_clip(path: Path, colour: str, tone_hz: float, seconds: float = 2.0, rate: int = TOY_RATE,
              size: str = "64x48", fps: int = 10) -> Path:
    """A video file with a solid colour crossed by moving noise, and a tone over soft noise."""
    need("ffmpeg")
    video = f"color=c={colour}:s={size}:r={fps}:d={seconds},noise=alls=30:allf=t"
    audio = (f"sine=frequency={tone_hz}:sample_rate={rate}:duration={seconds},volume=6[a];"
             f"anoisesrc=color=pink:amplitude=0.05:sample_rate={rate}:duration={seconds}[n];[a][n]amix=inputs=2")
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", video, "-filter_complex", audio,
                    "-c:v", "mpeg4", "-q:v", "3", "-c:a", "aac", "-ar", str(rate), "-shortest", str(path)], check=True)
    return path


def make_wav(path: Path, tone_hz: float, seconds: float, rate: int) -> Path:
    """A mono float WAV file: a sine at `tone_hz` over a little noise (seeded)."""
    import soundfile as sf

    t = np.arange(int(seconds * rate)) / rate
    rng = np.random.default_rng(0)
    sf.write(str(path), (0.5 * np.sin(2 * np.pi * tone_hz * t) + 0.02 * rng.normal(size=t.size)).astype(np.float32),
             rate)
    return path


def frame_level(index: int) -> int:
    """The red level of frame `index` in make_video's videos: frames tell which one they are."""
    return 10 + 6 * index


def make_video(path: Path, frames: int = 20, tone_hz: float | None = 440.0, size=(64, 48), faststart=True,
               seed: int = 0) -> Path:
    """An H.264 mp4 whose frame i is uniformly red at frame_level(i) (green 0, blue 200), with a sine track
    at 44.1 kHz as long as the video (or no audio). `seed` adds a little noise so that clips differ."""
    width, height = size
    rng = np.random.default_rng(seed)
    video = np.zeros((frames, height, width, 3), dtype=np.uint8)
    for i in range(frames):
        video[i, ..., 0] = frame_level(i)
    video[..., 2] = 200
    video = np.clip(video.astype(int) + rng.integers(-3, 4, video.shape), 0, 255).astype(np.uint8)
    command = ["ffmpeg", "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}",
               "-r", str(FPS), "-i", "pipe:0"]
    if tone_hz is not None:
        command += ["-f", "lavfi", "-i", f"sine=frequency={tone_hz}:sample_rate=44100:duration={frames / FPS}"]
    command += ["-c:v", "libx264", "-qp", "0", "-pix_fmt", "yuv444p"]
    if tone_hz is not None:
        command += ["-c:a", "aac"]
    if faststart:
        command += ["-movflags", "+faststart"]
    subprocess.run(command + [str(path)], input=video.tobytes(), check=True)
    return path


@contextlib.contextmanager
def playing_tone(tmp_path, pulse_env, name: str, seconds: float = 60):
    """Play toy class `name`'s tone into `vmic`, which the default PulseAudio source (the microphone) records."""
    tone = make_wav(tmp_path / f"{name}.wav", TOY_CLASSES[name][1], seconds=seconds, rate=TOY_RATE)
    player = subprocess.Popen(["paplay", "--device=vmic", str(tone)], env={**os.environ, **pulse_env})
    try:
        yield tone
    finally:
        player.kill()
        player.wait()
