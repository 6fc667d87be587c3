"""Recording a new class live (`record_clips`, `avcil learn --camera --mic --clips`) from real sources: the ffmpeg
MJPEG camera on 127.0.0.1 and the PulseAudio null sink `vmic` as the microphone (conftest.py)."""

import io
import json

import numpy as np
import pytest

from avcil.cli import main
from avcil.runtime.field import record_clips
from avcil.modeldir import ModelDir
from support.commands import avcil
from support.media import TOY_CLASSES, TOY_RATE, make_wav, playing_tone
from support.waiting import free_port


@pytest.fixture
def pulse_mic(pulse_env, monkeypatch):
    """The in-process microphone 'pulse' reaches the test's PulseAudio server."""
    for key, value in pulse_env.items():
        monkeypatch.setenv(key, value)
    return pulse_env


def nearest(row: np.ndarray, candidates: dict[str, np.ndarray]) -> str:
    return min(candidates, key=lambda name: float(np.linalg.norm(row - candidates[name])))


def test_learn_records_a_class_live_and_then_recognises_it(tmp_path, toy_model, toy_clips, pulse_env,
                                                            mjpeg_camera, capsys):
    assert "green" not in ModelDir(toy_model).load(with_memory=False).class_names
    camera = mjpeg_camera(toy_clips["green"][0])
    with playing_tone(tmp_path, pulse_env, "green"):
        learnt = avcil("learn", "--model", toy_model, "--label", "green", "--camera", camera.url, "--mic", "pulse",
                       "--clips", "4", "--countdown", "0", "--epochs", "40", "--batch-size", "16",
                       env=pulse_env, timeout=180)
        camera.stop()
        camera.start()  # ffmpeg serves one client: `avcil run` needs a fresh server on the same URL
        jsonl = tmp_path / "decisions.jsonl"
        ran = avcil("run", "--model", toy_model, "--camera", camera.url, "--mic", "pulse", "--duration", "5",
                    "--hop", "0.5", "--smoothing", "1", "--score", "softmax", "--threshold", "0", "--jsonl", jsonl,
                    "--quiet", env=pulse_env, timeout=120)
    progress = [line for line in learnt.stderr.splitlines() if line.startswith("clip ")]
    assert [line.split(":")[0] for line in progress] == [f"clip {n}/4" for n in range(1, 5)], learnt.stderr
    assert "v0001 -> v0002" in learnt.stdout and "from 4 clips" in learnt.stdout
    assert main(["model", "list", "--model", str(toy_model)]) == 0
    listing = capsys.readouterr().out.splitlines()
    assert listing[1].startswith("* v0002") and "3 classes" in listing[1] and "learnt 'green'" in listing[1]
    assert ModelDir(toy_model).load(with_memory=False).class_names == ["red", "blue", "green"]
    decisions = [json.loads(line) for line in jsonl.read_text().splitlines()] if jsonl.exists() else []
    labels = [d["label"] for d in decisions]
    assert len(labels) >= 4, ran.stderr
    assert {d["model_version"] for d in decisions} == {"v0002"}
    assert labels.count("green") >= 0.8 * len(labels), labels


def test_recorded_clips_hold_what_the_camera_showed_and_the_microphone_heard(tmp_path, tiny_profile, toy_clips,
                                                                            pulse_mic, mjpeg_camera):
    profile = tiny_profile
    camera = mjpeg_camera(toy_clips["red"][0])
    out = io.StringIO()
    with playing_tone(tmp_path, pulse_mic, "red") as tone:
        audio, visual = record_clips(camera.url, "pulse", 2, profile, countdown_s=1, pause_s=0.5, out=out)
    shape = profile.describe()["shape"]
    assert audio.shape == (2, shape["audio_dim"])
    assert visual.shape == (2, shape["time"], shape["positions"], shape["visual_dim"])
    assert np.isfinite(audio).all() and np.isfinite(visual).all()
    assert out.getvalue().splitlines() == ["clip 1/2 in 1 ...", "clip 1/2: recording 1.3 s",
                                           "clip 2/2 in 1 ...", "clip 2/2: recording 1.3 s"]

    # What the profile gives for known content, one window each: silence, the tones, black frames (what a
    # recogniser uses before any frame arrives), and the toy videos decoded from their files.
    import soundfile as sf

    samples = int(round(1.28 * TOY_RATE))
    played = sf.read(str(tone), dtype="float32")[0][:samples]
    other = make_wav(tmp_path / "blue.wav", TOY_CLASSES["blue"][1], seconds=1.28, rate=TOY_RATE)
    sounds = {"silence": np.zeros(samples, np.float32), "red tone": played,
              "blue tone": sf.read(str(other), dtype="float32")[0][:samples]}
    black = [np.zeros((48, 64, 3), np.uint8)] * profile.frame_prep.count
    known_audio, black_visual = profile.encode_batch(
        np.stack([profile.preprocess_audio(s, TOY_RATE) for s in sounds.values()]),
        np.stack([profile.preprocess_frames(black)] * len(sounds)))
    audio_of = dict(zip(sounds, known_audio))
    visual_of = {"black": black_visual[0]}
    _, file_visual = profile.encode_files([toy_clips[name][0] for name in TOY_CLASSES], progress=False)
    visual_of.update(zip(TOY_CLASSES, file_visual))
    for clip in range(2):
        assert nearest(audio[clip], audio_of) == "red tone"
        assert nearest(visual[clip], visual_of) == "red"


def test_a_camera_that_delivers_nothing_is_named_and_the_model_is_unchanged(tmp_path, toy_model, pulse_mic,
                                                                           capsys):
    url = f"http://127.0.0.1:{free_port()}/cam"  # nothing listens there
    # The command line in-process (as `avcil` runs it), which saves the start-up of two interpreters.
    with playing_tone(tmp_path, pulse_mic, "green"):
        code = main(["learn", "--model", str(toy_model), "--label", "green", "--camera", url, "--mic", "pulse",
                     "--clips", "2", "--countdown", "0"])
    error = capsys.readouterr().err
    assert code == 2, error
    assert f"avcil learn: error: camera {url!r}: no frame" in error
    assert main(["model", "list", "--model", str(toy_model)]) == 0
    listing = capsys.readouterr().out.splitlines()
    assert len(listing) == 1 and listing[0].startswith("* v0001") and "2 classes" in listing[0], listing
    assert ModelDir(toy_model).load(with_memory=False).class_names == ["red", "blue"]


def test_a_silent_microphone_is_refused(toy_clips, tiny_profile, pulse_mic, mjpeg_camera):
    camera = mjpeg_camera(toy_clips["red"][0])
    # Nothing plays into `vmic`: its monitor delivers digital silence, as a muted or wrong input does.
    with pytest.raises(RuntimeError, match="microphone 'pulse'.*silence"):
        record_clips(camera.url, "pulse", 1, tiny_profile, countdown_s=0, pause_s=0, out=io.StringIO())


class StopCameraAt(io.StringIO):
    """The progress stream of record_clips: stops the camera when the line starting with `prefix` is printed."""

    def __init__(self, camera, prefix: str):
        super().__init__()
        self.camera, self.prefix = camera, prefix

    def write(self, text: str) -> int:
        if text.startswith(self.prefix):
            self.camera.stop()
        return super().write(text)


def test_a_camera_that_stops_while_recording_is_refused(tmp_path, toy_clips, tiny_profile, pulse_mic,
                                                       mjpeg_camera):
    camera = mjpeg_camera(toy_clips["red"][0])
    # The server goes away as clip 2 starts: clip 3 at the latest has no frame of its own, only older ones.
    out = StopCameraAt(camera, "clip 2/3")
    with playing_tone(tmp_path, pulse_mic, "red"), pytest.raises(RuntimeError, match=f"camera '{camera.url}'"):
        record_clips(camera.url, "pulse", 3, tiny_profile, countdown_s=0, pause_s=0.5, out=out)


def test_a_fractional_countdown_is_counted_down_not_dropped(tmp_path, toy_clips, tiny_profile, pulse_mic,
                                                           mjpeg_camera):
    camera = mjpeg_camera(toy_clips["red"][0])
    out = io.StringIO()
    with playing_tone(tmp_path, pulse_mic, "red"):
        record_clips(camera.url, "pulse", 1, tiny_profile, countdown_s=1.5, pause_s=0, out=out)
    assert out.getvalue().splitlines()[:2] == ["clip 1/1 in 2 ...", "clip 1/1 in 1 ..."]
