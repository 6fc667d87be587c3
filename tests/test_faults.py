"""Faults a device meets, each with real parts: a disk that fills during a commit (a size-limited tmpfs), commands
killed at random moments (SIGKILL of real `avcil` subprocesses), a microphone whose stream ends mid-run (the
PulseAudio null sink unloaded). The camera dropping and returning, a truncated exemplar file and two learners at
once are in test_live.py / test_record.py, test_modeldir.py and test_field.py."""

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from avcil.model.graphs import read_spec
from avcil.fileio import sha256_file
from avcil.modeldir import ModelDir
from support.commands import avcil, read_lines
from support.media import TOY_CLASSES, TOY_RATE, make_wav
from support.waiting import wait_until

SMALL_FS_MB = 64  # room for the toy model and one learnt version (its head with the readout's statistics: 17 MB)


@pytest.fixture
def small_disk(tmp_path):
    """A 64 MB tmpfs mounted for the test (root only), unmounted after."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={SMALL_FS_MB}m", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a size-limited tmpfs here ({done.stderr.strip() or 'not root'})")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(mount: Path, leave_bytes: int) -> Path:
    """A filler file that leaves about `leave_bytes` free on the filesystem."""
    stats = os.statvfs(mount)
    free = stats.f_bavail * stats.f_frsize
    filler = mount / "filler"
    with open(filler, "wb") as f:
        f.truncate(0)
        remaining = max(0, free - leave_bytes)
        block = b"\0" * (1 << 20)
        while remaining > 0:
            remaining -= f.write(block[:min(len(block), remaining)])
    return filler


def visible_state(model: ModelDir) -> tuple:
    return model.current(), model.list_versions(), model.load(with_memory=False).class_names


@pytest.mark.parametrize("free_kb", [0, 64], ids=["no room at all", "room for the exemplars, not the head"])
def test_a_disk_full_during_a_commit_keeps_the_previous_version_and_the_next_commit_works(
        small_disk, toy_model, toy_clips, free_kb):
    model_dir = Path(shutil.copytree(toy_model, small_disk / "model"))
    model = ModelDir(model_dir)
    before = visible_state(model)
    filler = fill(small_disk, free_kb * 1024)

    failed = avcil("learn", "--model", model_dir, "--label", "green", "--files", *toy_clips["green"][:3],
                   check=False)
    assert failed.returncode == 2
    last = failed.stderr.strip().splitlines()[-1]
    assert "'green' not learnt" in last and "No space left on device" in last and "v0001 stays current" in last
    assert "Traceback" not in failed.stderr
    assert visible_state(model) == before  # the previous version is current, nothing new is listed
    loaded = model.load()
    assert not loaded.refused
    assert [row["ok"] for row in model.describe_versions()] == [True]

    filler.unlink()
    learnt = avcil("learn", "--model", model_dir, "--label", "green", "--files", *toy_clips["green"][:3])
    assert "v0001 -> v0002" in learnt.stdout
    assert model.load(with_memory=False).class_names == ["red", "blue", "green"]
    with model.writer():  # what the failed commit left aside is gone (a loader never saw it)
        assert [p.name for p in model_dir.rglob(".*") ] == []
        listed = {e["file"] for v in model.list_versions() for e in model.manifest(v)["exemplars"]}
        assert {p.name for p in (model_dir / "exemplars").iterdir()} == listed


# SIGKILL sweep ------------------------------------------------------------------------------------------------------
KILLS = 20


def whole_export(folder: Path) -> bool:
    """An exported encoders folder whose spec reads and whose every graph matches the checksum it lists."""
    spec = read_spec(folder)
    return all(sha256_file(folder / graph["file"]) == graph["sha256"] for graph in spec["graphs"].values())


def check_exports(model_dir: Path) -> None:
    """MODEL/encoders is whole; or, killed between export's two renames, the previous one is whole aside."""
    if (model_dir / "encoders").is_dir():
        assert whole_export(model_dir / "encoders")
    else:
        aside = list(model_dir.glob(".encoders-old-*/encoders"))
        assert aside and all(whole_export(folder) for folder in aside), "an export was lost"


def rollback_targets(model: ModelDir) -> dict[str, str]:
    """Where `model rollback` goes from the current version: back (no version named: the newest older one) and,
    named, forward to the newest version; only the moves that exist."""
    current, versions = model.current(), model.list_versions()
    older = [v for v in versions if v < current]
    return {**({"back": older[-1]} if older else {}), **({"forward": versions[-1]} if versions[-1] != current else {})}


def test_killing_learn_export_and_rollback_at_random_moments_never_loses_a_reported_class(toy_model, toy_clips):
    model = ModelDir(toy_model)
    tree = str(Path(__file__).parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([tree, os.environ.get("PYTHONPATH", "")])}
    files = [str(p) for p in toy_clips["green"][:3]]
    reported: dict[str, list[str]] = {model.current(): model.load(with_memory=False).class_names}
    durations: dict[str, float] = {}  # each command's time to finish, from its first run, uncut
    kills: dict[str, int] = {"learn": 0, "export": 0, "rollback": 0}
    rng = random.Random(12)
    attempt = 0
    while sum(kills.values()) < KILLS:
        attempt += 1
        assert attempt < 2 * KILLS, "commands kept finishing before the kill"
        before = model.load(with_memory=False)
        targets = rollback_targets(model)
        # Rollbacks take a few seconds, learn and export several times more (their imports): most kills go to
        # rollbacks so that the sweep stays short, and every kind is killed several times.
        kind = rng.choices(["learn", "export", "rollback"], [0.25, 0.2, 0.55])[0] if attempt > 3 else \
            ["learn", "export", "rollback"][attempt - 1]
        if kind == "rollback" and not targets:
            kind = "learn"
        label, way = f"c{attempt}", rng.choice(sorted(targets)) if targets else None
        args = {"learn": ["learn", "--model", str(toy_model), "--label", label, "--nice", "0", "--files", *files],
                "export": ["export", "--model", str(toy_model), "--format", "onnx"],
                "rollback": ["model", "rollback", "--model", str(toy_model),
                             *([targets[way]] if way == "forward" else [])]}[kind]
        began = time.monotonic()
        process = subprocess.Popen([sys.executable, "-m", "avcil.cli", *args], stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
        if kind in durations:
            try:
                process.wait(timeout=rng.uniform(0.25, 1.05) * durations[kind])
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                kills[kind] += 1
        out, err = process.communicate()
        durations.setdefault(kind, time.monotonic() - began)
        finished = process.returncode == 0
        if process.returncode not in (0, -signal.SIGKILL):
            raise AssertionError(f"avcil {kind} failed ({process.returncode}):\n{err}")

        after = model.load()
        assert not after.refused, after.refused  # the current version is whole
        if kind == "learn":
            assert after.version == before.version or after.class_names == before.class_names + [label]
            if finished:
                version = out.split("->")[-1].split()[0]
                assert version == after.version
                reported[version] = after.class_names
        elif kind == "rollback":
            assert after.version in (before.version, targets[way])
            if finished:
                assert f"-> {targets[way]}" in out and after.version == targets[way]
        else:
            assert after.version == before.version
            check_exports(Path(toy_model))
        # Every version a finished command reported still loads, with the classes it reported.
        for version, names in reported.items():
            assert model.load(version, with_memory=False).class_names == names
    assert len(reported) > 1, "no learn finished: the sweep never reached a commit"
    assert min(kills.values()) >= 3, kills


# The microphone's stream ending ------------------------------------------------------------------------------------
def null_sink_module(env: dict) -> str:
    listing = subprocess.run(["pactl", "list", "short", "modules"], env=env, capture_output=True, text=True,
                             check=True).stdout
    return next(line.split()[0] for line in listing.splitlines() if "sink_name=vmic" in line)


def test_a_microphone_that_ends_mid_run_is_said_in_one_line_and_recognition_goes_on_with_audio_marked_missing(
        tmp_path, toy_model, toy_clips, pulse_env, mjpeg_camera):

    camera = mjpeg_camera(toy_clips["red"][0])
    tone = make_wav(tmp_path / "red.wav", TOY_CLASSES["red"][1], seconds=60, rate=TOY_RATE)
    env = {**os.environ, **pulse_env}
    jsonl = tmp_path / "decisions.jsonl"
    player = subprocess.Popen(["paplay", "--device=vmic", str(tone)], env=env)
    run = subprocess.Popen([sys.executable, "-m", "avcil.cli", "run", "--model", str(toy_model), "--camera",
                            camera.url, "--mic", "pulse", "--duration", "60", "--hop", "0.5", "--smoothing", "1",
                            "--score", "softmax", "--threshold", "0", "--jsonl", str(jsonl), "--quiet"], env=env,
                           stderr=subprocess.PIPE, text=True)

    try:
        wait_until(lambda: len(read_lines(jsonl)) >= 4 or run.poll() is not None, 90, "4 decisions", interval=0.1)
        heard = len(read_lines(jsonl))
        subprocess.run(["pactl", "unload-module", null_sink_module(env)], env=env, check=True)
        wait_until(lambda: len(read_lines(jsonl)) >= heard + 12 or run.poll() is not None, 90,
                   "12 decisions after the microphone went away", interval=0.1)
        assert run.poll() is None, run.stderr.read()  # still running
    finally:
        run.terminate()
        _, err = run.communicate(timeout=30)
        player.kill()
        player.wait()
        subprocess.run(["pactl", "load-module", "module-null-sink", "sink_name=vmic", f"rate={TOY_RATE}",
                        "channels=1"], env=env, check=True, capture_output=True)
        subprocess.run(["pactl", "set-default-source", "vmic.monitor"], env=env, check=True)
    made = read_lines(jsonl)
    assert len(made) >= heard + 12  # decisions went on after the stream ended
    assert not any(d["audio_missing"] for d in made[:heard])
    missing = [d for d in made[heard:] if d["audio_missing"]]
    assert missing, [d["audio_missing"] for d in made]
    assert all(d["label"] in ("red", "blue") for d in missing)  # decided on video, not skipped
    said = [line for line in err.splitlines() if "no audio since" in line]
    assert len(said) == 1 and "microphone 'pulse'" in said[0] and "deciding on video alone" in said[0], err
    assert "Traceback" not in err
