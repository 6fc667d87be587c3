"""Shared fixtures of the runtime tests: real media files, a small trained model with the tiny profile, a
PulseAudio server whose null sink is the microphone, and an ffmpeg MJPEG camera on 127.0.0.1
(docs/architecture.md#testing-without-hardware)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

# Each class of the toy world: a colour on screen and a tone (Hz) on the sound track.
TOY_CLASSES = {"red": ("0xd02020", 440), "blue": ("0x2040d0", 1250), "green": ("0x20b040", 2600)}
TOY_RATE = 16000


def _need(*programs: str) -> None:
    missing = [p for p in programs if shutil.which(p) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (scripts/setup.sh installs them)")


def make_clip(path: Path, colour: str, tone_hz: float, seconds: float = 2.0, rate: int = TOY_RATE,
              size: str = "64x48", fps: int = 10) -> Path:
    """A video file with a solid colour crossed by moving noise, and a tone over soft noise."""
    _need("ffmpeg")
    video = f"color=c={colour}:s={size}:r={fps}:d={seconds},noise=alls=30:allf=t"
    audio = (f"sine=frequency={tone_hz}:sample_rate={rate}:duration={seconds},volume=6[a];"
             f"anoisesrc=color=pink:amplitude=0.05:sample_rate={rate}:duration={seconds}[n];[a][n]amix=inputs=2")
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", video, "-filter_complex", audio,
                    "-c:v", "mpeg4", "-q:v", "3", "-c:a", "aac", "-ar", str(rate), "-shortest", str(path)], check=True)
    return path


def make_wav(path: Path, tone_hz: float, seconds: float, rate: int) -> Path:
    import soundfile as sf

    t = np.arange(int(seconds * rate)) / rate
    rng = np.random.default_rng(0)
    sf.write(str(path), (0.5 * np.sin(2 * np.pi * tone_hz * t) + 0.02 * rng.normal(size=t.size)).astype(np.float32),
             rate)
    return path


@pytest.fixture(scope="session")
def toy_clips(tmp_path_factory) -> dict[str, list[Path]]:
    """Six 2-second clips per toy class, tones and shades varied a little."""
    root = tmp_path_factory.mktemp("toy-clips")
    clips: dict[str, list[Path]] = {}
    for name, (colour, tone) in TOY_CLASSES.items():
        clips[name] = [make_clip(root / f"{name}-{i}.mp4", colour, tone * (1 + 0.02 * (i - 3))) for i in range(6)]
    return clips


@pytest.fixture(scope="session")
def tiny_profile():
    from avcil.model.encoders import load_profile

    return load_profile("tiny")


def train_toy_model(model_dir: Path, profile, clips: dict[str, list[Path]], names: list[str], epochs: int = 150,
                    memory_budget: int = 12, method: str = "avcil") -> Path:
    """A model dir with the tiny profile's features of `names` learnt in one step by `method`."""
    from avcil.data.clips import ArrayClipSet, Benchmark
    from avcil.modeldir import ModelDir
    from avcil.train.learner import TrainConfig
    from avcil.train.methods import build_method
    from avcil.train.protocol import run_protocol

    paths = [p for n in names for p in clips[n]]
    labels = np.array([i for i, n in enumerate(names) for _ in clips[n]])
    audio, visual = profile.encode_files(paths, progress=False)
    data = ArrayClipSet([str(p) for p in paths], labels, audio, visual)
    # No validation clips: the learner then keeps the last epoch, not the first that fits the training clips.
    no_val = ArrayClipSet([], np.zeros(0), audio[:0], visual[:0])
    benchmark = Benchmark("toy", names, [list(range(len(names)))], {"train": data, "val": no_val, "test": data},
                          data.shape)
    outcome = run_protocol(benchmark, build_method(method), TrainConfig(epochs=epochs, lr=3e-3, batch_size=16,
                           exemplar_batch_size=16), memory_budget, fusion_dim=32, progress=False)
    ModelDir(model_dir).commit(outcome.head, outcome.memory, [{"name": n, "step": 0} for n in names],
                               {"shape": data.shape.to_dict(), "profile": profile.describe()},
                               extra={"training": {"method": outcome.results["config"]["method"]}})  # as write_run
    return model_dir


@pytest.fixture(scope="session")
def toy_model_template(tmp_path_factory, tiny_profile, toy_clips) -> Path:
    return train_toy_model(tmp_path_factory.mktemp("toy-model") / "model", tiny_profile, toy_clips, ["red", "blue"])


@pytest.fixture
def toy_model(tmp_path, toy_model_template) -> Path:
    """A fresh copy of the trained red/blue model, free to change."""
    return Path(shutil.copytree(toy_model_template, tmp_path / "model"))


@pytest.fixture(scope="session")
def analytic_template(tmp_path_factory, tiny_profile, toy_clips) -> Path:
    """The red/blue toy model with the analytic readout, which background and corrections ("not X") update."""
    return train_toy_model(tmp_path_factory.mktemp("analytic") / "model", tiny_profile, toy_clips, ["red", "blue"],
                           method="analytic")


@pytest.fixture
def analytic_model(tmp_path, analytic_template) -> Path:
    """A fresh copy of the analytic red/blue model, free to change."""
    return Path(shutil.copytree(analytic_template, tmp_path / "model"))


@pytest.fixture(scope="session")
def tiny_model_dir_template(tmp_path_factory, tiny_profile) -> Path:
    """A model dir of three versions for the tiny profile, made in a second (no training): v0001 with two classes
    and their exemplars, then a class learnt in the field per version, sharing the earlier exemplar files. What the
    model dir's hostile-file tests damage copies of."""
    from avcil.data.clips import ArrayClipSet
    from avcil.model.head import FusionHead, HeadConfig
    from avcil.model.memory import ExemplarMemory
    from avcil.modeldir import ModelDir
    from avcil.runtime.field import learn_class

    root = tmp_path_factory.mktemp("tiny-model") / "model"
    shape, rng = tiny_profile.shape, np.random.default_rng(0)

    def features(count: int) -> tuple[np.ndarray, np.ndarray]:
        return (rng.normal(size=(count, shape.audio_dim)).astype(np.float32),
                rng.normal(size=(count, *shape.visual)).astype(np.float32))

    labels = np.repeat(np.arange(2), 4)
    clips = ArrayClipSet([f"x{i}" for i in range(len(labels))], labels, *features(len(labels)))
    memory = ExemplarMemory(12)
    memory.update(clips, {c: np.flatnonzero(labels == c) for c in range(2)})
    head = FusionHead(HeadConfig.for_shape(shape, fusion_dim=16), num_classes=2)
    ModelDir(root).commit(head, memory, [{"name": "red", "step": 0}, {"name": "blue", "step": 0}],
                          {"shape": shape.to_dict(), "profile": tiny_profile.describe()})
    for label in ("green", "white"):
        learn_class(root, label, *features(3), progress=False, log=lambda line: None)
    return root


def avcil(*args: str, env: dict | None = None, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    """Run the avcil command line in a subprocess, as a user would."""
    result = subprocess.run([sys.executable, "-m", "avcil.cli", *map(str, args)], capture_output=True, text=True,
                            env={**os.environ, **(env or {})}, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"avcil {' '.join(map(str, args))} failed ({result.returncode}):\n{result.stderr}")
    return result


# Real devices without hardware --------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def pulse_env():
    """A userspace PulseAudio server whose default source is the monitor of a null sink `vmic` (16 kHz mono):
    what is played into `vmic` is what the microphone hears. Yields the environment that reaches it."""
    _need("pulseaudio", "pactl", "paplay")
    runtime = tempfile.mkdtemp(prefix="avcil-pulse-")
    env = {**os.environ, "XDG_RUNTIME_DIR": runtime, "PULSE_RUNTIME_PATH": runtime}
    subprocess.run(["pulseaudio", "-D", "--exit-idle-time=-1", "--disallow-exit", "--disable-shm=true"], env=env,
                   check=True, timeout=30)
    try:
        for _ in range(100):
            if subprocess.run(["pactl", "info"], env=env, capture_output=True).returncode == 0:
                break
            time.sleep(0.1)
        subprocess.run(["pactl", "load-module", "module-null-sink", "sink_name=vmic", f"rate={TOY_RATE}",
                        "channels=1"], env=env, check=True, capture_output=True)
        subprocess.run(["pactl", "set-default-source", "vmic.monitor"], env=env, check=True)
        yield {"XDG_RUNTIME_DIR": runtime, "PULSE_RUNTIME_PATH": runtime}
    finally:
        subprocess.run(["pulseaudio", "--kill"], env=env, capture_output=True)
        shutil.rmtree(runtime, ignore_errors=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MjpegCamera:
    """ffmpeg serving a looped video file as MJPEG over HTTP on 127.0.0.1 (one client per ffmpeg process, so a
    reconnecting client needs `restart()`)."""

    def __init__(self, video: Path):
        _need("ffmpeg")
        self.video, self.port = video, free_port()
        self.url = f"http://127.0.0.1:{self.port}/cam"
        self.process: subprocess.Popen | None = None

    def start(self) -> "MjpegCamera":
        self.process = subprocess.Popen(
            ["ffmpeg", "-v", "error", "-re", "-stream_loop", "-1", "-i", str(self.video), "-an", "-c:v", "mjpeg",
             "-q:v", "3", "-f", "mpjpeg", "-listen", "1", self.url], stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not self.listening():
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError(f"ffmpeg did not listen on {self.url}")
            time.sleep(0.05)
        return self

    def listening(self) -> bool:
        """Whether the port is in LISTEN state (read from /proc: connecting would use up ffmpeg's one client)."""
        wanted = f":{self.port:04X} "
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            try:
                lines = Path(table).read_text().splitlines()[1:]
            except OSError:
                continue
            if any(wanted in line and line.split()[3] == "0A" for line in lines):
                return True
        return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process = None


@pytest.fixture
def mjpeg_camera():
    """A factory: mjpeg_camera(video) -> a started MjpegCamera, stopped after the test."""
    cameras: list[MjpegCamera] = []

    def start(video: Path) -> MjpegCamera:
        cameras.append(MjpegCamera(video).start())
        return cameras[-1]

    yield start
    for camera in cameras:
        camera.stop()
