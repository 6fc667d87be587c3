"""A device installs torch and `avcil[runtime]` only, and runs, learns and reloads with it (README, "On a device").

The test builds that virtual environment for real (pip from the registry, torch from its wheel), so it takes a few
minutes: it runs in CI (CI=true) or with AVCIL_TEST_RUNTIME_ALONE=1. The model dir it uses is trained and exported
here, in the full environment, as a user would before copying it to the device."""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from support.media import TOY_CLASSES, make_clip
from support.models import train_toy_model


REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not (os.environ.get("CI") or os.environ.get("AVCIL_TEST_RUNTIME_ALONE")),
                                reason="builds a fresh virtual environment with pip (minutes): runs in CI, or with "
                                       "AVCIL_TEST_RUNTIME_ALONE=1")
# What a device must not need: training, plots, the paper encoders, the data builders' and export's libraries.
NOT_ON_A_DEVICE = ("matplotlib", "transformers", "sklearn", "h5py", "skimage", "pytest")


def _pip(python: Path, *args: str) -> None:
    subprocess.run([str(python), "-m", "pip", "install", "--disable-pip-version-check", "-q", *args], check=True,
                   timeout=1200)


@pytest.fixture(scope="module")
def device_python(tmp_path_factory) -> Path:
    venv = tmp_path_factory.mktemp("device") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    _pip(python, "torch==2.13.0")
    _pip(python, f"{REPO}[runtime]")  # a plain (not editable) install, as on a device
    _pip(python, "--no-deps", "aisfx==0.1.2")  # README, "On a device": its metadata pins a numpy from 2022
    return python


def _avcil(python: Path, *args, check: bool = True) -> subprocess.CompletedProcess:
    # Run from a folder outside the repository, so that only the installed package can be imported.
    result = subprocess.run([str(python), "-m", "avcil", *map(str, args)], capture_output=True, text=True,
                            cwd=python.parent, timeout=600, env={k: v for k, v in os.environ.items()
                                                                 if k != "PYTHONPATH"})
    if check and result.returncode != 0:
        raise AssertionError(f"avcil {' '.join(map(str, args))} failed ({result.returncode}):\n{result.stderr}")
    return result


@pytest.fixture(scope="module")
def window_clips(tmp_path_factory) -> dict[str, list[Path]]:
    """Toy clips as long as the lite window (3 s), so that a live window holds one whole file, as in training."""
    root = tmp_path_factory.mktemp("window-clips")
    return {name: [make_clip(root / f"{name}-{i}.mp4", colour, tone * (1 + 0.02 * (i - 3)), seconds=3.0)
                   for i in range(6)] for name, (colour, tone) in TOY_CLASSES.items()}


@pytest.fixture(scope="module")
def exported_lite_model(tmp_path_factory, window_clips) -> Path:
    from avcil.export.command import add_parser
    from avcil.model.encoders import load_profile

    root = train_toy_model(tmp_path_factory.mktemp("lite") / "model", load_profile("lite"), window_clips,
                           ["red", "blue"], method="analytic")
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    args = parser.parse_args(["export", "--model", str(root), "--format", "onnx"])
    assert args.func(args) == 0
    return root


def test_the_runtime_environment_has_no_training_or_export_libraries(device_python):
    missing = subprocess.run([str(device_python), "-c", "import importlib.util, json, sys; print(json.dumps([m for m in "
                              "sys.argv[1:] if importlib.util.find_spec(m) is None]))", *NOT_ON_A_DEVICE],
                             capture_output=True, text=True, check=True)
    assert json.loads(missing.stdout) == list(NOT_ON_A_DEVICE)
    help_text = _avcil(device_python, "--help").stdout
    assert all(f"    {command} " in help_text for command in ("run", "learn", "model"))


def test_a_device_runs_learns_and_reloads_with_the_runtime_extra_alone(device_python, exported_lite_model,
                                                                       window_clips, tmp_path):
    toy_clips = window_clips
    model = exported_lite_model
    red = ",".join(str(p) for p in toy_clips["red"][:3])
    jsonl = tmp_path / "decisions.jsonl"
    # One decision per clip: the hop is the window, and a clip fills it.
    paced = ("--quiet", "--smoothing", "1", "--score", "softmax", "--threshold", "0", "--hop", "3")
    _avcil(device_python, "run", "--model", model, "--backend", "onnxruntime", "--camera", red, "--mic", red,
           "--jsonl", jsonl, *paced)
    decisions = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert len(decisions) >= 2 and sum(d["label"] == "red" for d in decisions) > len(decisions) / 2
    assert all(d["model_version"] == "v0001" and d["threads"]["onnxruntime_spinning"] == [] for d in decisions)

    learnt = _avcil(device_python, "learn", "--model", model, "--label", "green", "--json", "--files",
                    *toy_clips["green"][:4])
    summary = json.loads(learnt.stdout.strip().splitlines()[-1])
    assert summary["version"] == "v0002" and summary["label"] == "green"
    listing = json.loads(_avcil(device_python, "model", "list", "--model", model, "--json").stdout)
    assert [row["classes"][-1] for row in listing if row["version"] == "v0002" and row["current"]] == ["green"]

    green = ",".join(str(p) for p in toy_clips["green"][4:])
    _avcil(device_python, "run", "--model", model, "--backend", "onnxruntime", "--camera", green, "--mic", green,
           "--jsonl", jsonl, "--spin", *paced)
    after = [json.loads(line) for line in jsonl.read_text().splitlines()][len(decisions):]
    assert len(after) >= 2 and all(d["model_version"] == "v0002" for d in after)
    assert all(d["threads"]["onnxruntime_spinning"] == ["audio_sfx", "audio_sfx_columns"] for d in after)
    assert sum(d["label"] == "green" for d in after) > len(after) / 2, [d["label"] for d in after]


def test_a_damaged_clip_on_a_device_is_one_line_and_exit_2(device_python, exported_lite_model, tmp_path):
    junk = tmp_path / "damaged.mp4"
    junk.write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(2000))
    result = _avcil(device_python, "learn", "--model", exported_lite_model, "--label", "junk", "--files", junk,
                    check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    # Beside the progress bar (which tqdm redraws with carriage returns), one line: the error, naming the file.
    lines = [line for line in result.stderr.replace("\r", "\n").splitlines()
             if line.strip() and not line.startswith("encode clips")]
    assert len(lines) == 1 and lines[0].startswith("avcil learn: error: ") and str(junk) in lines[0], lines
