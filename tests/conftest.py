"""Shared fixtures of the runtime tests: real media files, a small trained model with the tiny profile, a
PulseAudio server whose null sink is the microphone, and an ffmpeg MJPEG camera on 127.0.0.1
(docs/architecture.md#testing-without-hardware). Plain helpers live in tests/support/."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest

from support.media import TOY_CLASSES, TOY_RATE, make_clip, need
from support.models import train_toy_model
from support.servers import MjpegCamera
from support.waiting import wait_until


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


# Real devices without hardware --------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def pulse_env():
    """A userspace PulseAudio server whose default source is the monitor of a null sink `vmic` (16 kHz mono):
    what is played into `vmic` is what the microphone hears. Yields the environment that reaches it."""
    need("pulseaudio", "pactl", "paplay")
    runtime = tempfile.mkdtemp(prefix="avcil-pulse-")
    env = {**os.environ, "XDG_RUNTIME_DIR": runtime, "PULSE_RUNTIME_PATH": runtime}
    subprocess.run(["pulseaudio", "-D", "--exit-idle-time=-1", "--disallow-exit", "--disable-shm=true"], env=env,
                   check=True, timeout=30)
    try:
        wait_until(lambda: subprocess.run(["pactl", "info"], env=env, capture_output=True).returncode == 0, 10,
                   "the PulseAudio server to answer `pactl info`", interval=0.1)
        subprocess.run(["pactl", "load-module", "module-null-sink", "sink_name=vmic", f"rate={TOY_RATE}",
                        "channels=1"], env=env, check=True, capture_output=True)
        subprocess.run(["pactl", "set-default-source", "vmic.monitor"], env=env, check=True)
        yield {"XDG_RUNTIME_DIR": runtime, "PULSE_RUNTIME_PATH": runtime}
    finally:
        subprocess.run(["pulseaudio", "--kill"], env=env, capture_output=True)
        shutil.rmtree(runtime, ignore_errors=True)


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
