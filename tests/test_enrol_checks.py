"""The enrolment gate (avcil/runtime/enrol_checks.py, clip_signals.py): clips damaged the ways field recordings go
wrong are each named with their reason, good clips are not, `avcil learn --drop-suspect` leaves them out, and a class
of suspect clips only is refused."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from avcil.data.decode import decode_clip
from avcil.modeldir import ModelDir
from avcil.runtime.clip_signals import measure_signals, signal_faults
from avcil.runtime.enrol_checks import check_enrolment
from support.commands import avcil
from support.media import TOY_RATE

GOOD = 4  # the first four green clips are the good ones; the last two are damaged


def _damage(source: Path, out: Path, *ffmpeg_args: str) -> Path:
    """`source` re-encoded through ffmpeg filters, as the toy clips are encoded."""
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(source), *ffmpeg_args, "-c:v", "mpeg4", "-q:v", "3",
                    "-c:a", "aac", "-ar", str(TOY_RATE), str(out)], check=True)
    return out


@pytest.fixture(scope="module")
def enrolment(tmp_path_factory, toy_clips) -> dict[str, Path]:
    """A green class to enrol: four good clips, then one of each fault made from the other green clips."""
    root = tmp_path_factory.mktemp("enrolment")
    green = toy_clips["green"]
    clips = {f"good-{i}": green[i] for i in range(GOOD)}
    clips["silent"] = _damage(green[4], root / "silent.mp4", "-af", "volume=0")
    # Overdriven by 18 dB into 16-bit samples, which stop at full scale: clipped as a converter clips.
    clips["clipped"] = _damage(green[4], root / "clipped.mp4", "-af", "volume=8,aformat=sample_fmts=s16")
    clips["black"] = _damage(green[5], root / "black.mp4", "-vf", "drawbox=x=0:y=0:w=iw:h=ih:color=black:t=fill")
    clips["frozen"] = _damage(green[5], root / "frozen.mp4", "-vf",
                              "trim=end_frame=1,tpad=stop_mode=clone:stop_duration=2")
    clips["duplicate"] = Path(shutil.copy(green[0], root / "copy-of-good-0.mp4"))
    clips["other-class"] = toy_clips["red"][0]
    return clips


def _encode(profile, paths: list[Path]):
    signals = []
    audio, visual = profile.encode_files(paths, progress=False, on_decoded=lambda path, clip: signals.append(
        measure_signals(clip.waveform, clip.frames)))
    return audio, visual, signals


def test_each_damaged_clip_is_named_with_its_reason_and_the_good_ones_are_not(toy_model, tiny_profile, enrolment):
    # The toy model was trained by gradient and has no readout: the gate fits one from its exemplars to judge with.
    names, paths = list(enrolment), list(enrolment.values())
    audio, visual, signals = _encode(tiny_profile, paths)
    model = ModelDir(toy_model)
    check = check_enrolment(model.load(with_memory=False), audio, visual, signals, [p.name for p in paths],
                            exemplars=lambda: model.load().memory)
    found = {names[i]: reasons for i, reasons in check.suspects.items()}
    assert set(found) == {"silent", "clipped", "black", "frozen", "duplicate", "other-class"}, found
    expected = {"silent": "silent audio (peak -inf dBFS)", "clipped": "clipped audio (",
                "black": "dark camera (mean luminance 0 %", "frozen": "frozen camera (",
                "duplicate": "near-duplicate of clip 1 (green-0.mp4)", "other-class": "closer to class 'red' ("}
    for name, start in expected.items():
        assert found[name][0].startswith(start), (name, found[name])
    assert all(len(reasons) == 1 for reasons in found.values()), found  # a black clip is not also called frozen
    # The class learnt from the good clips stands apart: each good clip left out is still recognised.
    separation = check.separation(range(GOOD))
    assert separation["nearest_class"] in ("red", "blue") and separation["recognised"] == 1.0
    assert 0.5 < separation["weakest_margin"] <= separation["margin"] <= 1.2, separation


def test_a_blurred_camera_is_told_from_a_sharp_one(tmp_path):
    """A pan over a real photograph (scikit-image's astronaut), sharp and through a Gaussian blur of 3 px."""
    import cv2

    data = pytest.importorskip("skimage.data")
    photo = tmp_path / "photo.png"
    cv2.imwrite(str(photo), cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR))
    sharp = tmp_path / "sharp.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-loop", "1", "-framerate", "10", "-i", str(photo), "-f", "lavfi",
                    "-i", f"sine=frequency=440:sample_rate={TOY_RATE}", "-vf",
                    "scale=320:320,crop=160:120:x='t*40':y='t*30',format=yuv420p", "-t", "2", "-c:v", "mpeg4",
                    "-q:v", "3", "-c:a", "aac", str(sharp)], check=True)
    blurred = _damage(sharp, tmp_path / "blurred.mp4", "-vf", "gblur=sigma=3")
    faults = {path.stem: signal_faults(measure_signals(*_raw(path))) for path in (sharp, blurred)}
    assert faults["sharp"] == [], faults
    assert len(faults["blurred"]) == 1 and faults["blurred"][0].startswith("blurred camera (sharpness 0."), faults


def _raw(path: Path):
    clip = decode_clip(path, 8, TOY_RATE)
    return clip.waveform, clip.frames


def test_clean_clips_raise_no_signal_fault(toy_clips):
    for path in [p for clips in toy_clips.values() for p in clips]:
        assert signal_faults(measure_signals(*_raw(path))) == [], path


def test_a_clip_left_out_gets_the_outputs_of_a_readout_learnt_without_it():
    """AnalyticReadout.left_out_outputs, from one solve, against a refit without each clip."""
    from avcil.model.readout import AnalyticReadout, readout_spec

    spec = readout_spec("analytic", expansion=64)
    rng = np.random.default_rng(0)
    readout = AnalyticReadout(spec, 10, 3)
    readout.accumulate(torch.from_numpy(rng.normal(size=(30, 10))).float(), torch.arange(3).repeat_interleave(10))
    readout.solve()
    new = torch.from_numpy(rng.normal(size=(5, 10)) + 1.0).float()
    learnt = torch.tensor([True, True, False, True, True])  # clip 3 is judged but not learnt
    fast = readout.left_out_outputs(new, learnt)
    for i in range(len(new)):
        refit = AnalyticReadout(spec, 10, 3)
        refit.load_state_dict(readout.state_dict())
        refit.add_classes(1)
        taught = [j for j in range(len(new)) if j != i and learnt[j]]
        refit.add(refit.increments(new[taught], torch.full((len(taught),), 3)))
        left_out = refit.expanded(new[i:i + 1]).double()
        # γ is set with every learnt clip in G, the clip itself included: the one solve's, the same for all.
        with_it = refit.gram.double() + (left_out.T @ left_out if learnt[i] else 0)
        system = refit.ridge_system(with_it) - with_it + refit.gram.double()
        expected = left_out @ torch.linalg.solve(system, refit.cross.double())
        np.testing.assert_allclose(fast[i].numpy(), expected[0].numpy(), atol=1e-6)


def test_learn_names_suspect_clips_and_drops_them_when_asked(toy_model, enrolment):
    paths = list(enrolment.values())
    result = avcil("learn", "--model", toy_model, "--label", "green", "--json", "--drop-suspect", "--files", *paths)
    summary = json.loads(result.stdout)
    assert summary["clips"] == GOOD and summary["version"] == "v0002"
    suspect = {Path(entry["clip"]).name: entry for entry in summary["suspect"]}
    assert set(suspect) == {p.name for p in paths[GOOD:]} and all(e["dropped"] for e in suspect.values())
    assert suspect["black.mp4"]["reasons"][0].startswith("dark camera")
    assert summary["separation"]["recognised"] == 1.0 and summary["separation"]["margin"] > 0.5
    lines = result.stderr.splitlines()
    for path in paths[GOOD:]:
        assert any(line.startswith(f"{path} looks wrong: ") and line.endswith("; dropped") for line in lines), lines
    assert ModelDir(toy_model).load(with_memory=False).head.num_classes == 3


def test_learn_keeps_suspect_clips_unless_asked_with_a_line_each(toy_model, enrolment):
    paths = [enrolment[name] for name in ("good-0", "good-1", "good-2", "silent")]
    result = avcil("learn", "--model", toy_model, "--label", "green", "--json", "--files", *paths)
    summary = json.loads(result.stdout)
    assert summary["clips"] == 4 and summary["suspect"] == [
        {"clip": str(enrolment["silent"]), "reasons": ["silent audio (peak -inf dBFS)"], "dropped": False}]
    assert f"{enrolment['silent']} looks wrong: silent audio (peak -inf dBFS); kept (--drop-suspect leaves it out)" \
        in result.stderr.splitlines()


def test_a_class_of_suspect_clips_only_is_refused_naming_the_reasons(toy_model, enrolment):
    paths = [enrolment[name] for name in ("silent", "black", "frozen")]
    result = avcil("learn", "--model", toy_model, "--label", "green", "--drop-suspect", "--files", *paths,
                   check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("avcil learn: error: class 'green' not learnt: every clip looks wrong ("), line
    for reason in ("silent audio", "dark camera", "frozen camera"):
        assert reason in line, line
    assert ModelDir(toy_model).list_versions() == ["v0001"]


def test_a_clip_whose_recording_is_at_fault_is_named_for_that_alone(toy_model, tiny_profile, toy_clips, tmp_path):
    # A silenced red clip among green ones: its picture is red's, so its features lie near red, yet the silence
    # is what a user must fix; the same clip with its sound is named for its class.
    green, red = toy_clips["green"][:GOOD], toy_clips["red"][1]
    paths = [*green, _damage(red, tmp_path / "silent-red.mp4", "-af", "volume=0"), red]
    audio, visual, signals = _encode(tiny_profile, paths)
    model = ModelDir(toy_model)
    check = check_enrolment(model.load(with_memory=False), audio, visual, signals, [p.name for p in paths],
                            exemplars=lambda: model.load().memory)
    assert check.suspects[GOOD] == ["silent audio (peak -inf dBFS)"], check.suspects
    assert check.suspects[GOOD + 1][0].startswith("closer to class 'red' ("), check.suspects
    assert set(check.suspects) == {GOOD, GOOD + 1}, check.suspects
