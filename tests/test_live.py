"""`avcil run` against real sources: a PulseAudio null sink as the microphone and an ffmpeg MJPEG camera on
127.0.0.1; and `avcil learn` while `avcil run` keeps deciding."""

import os
import subprocess
import sys
from support.commands import avcil, read_lines
from support.media import TOY_CLASSES, TOY_RATE, make_wav
from support.waiting import wait_until


KEYS = {"time", "window", "label", "score", "top_k", "latency_ms", "dropped_windows", "model_version"}


def test_run_decides_from_a_pulseaudio_microphone_and_an_mjpeg_camera(tmp_path, toy_model, toy_clips, pulse_env,
                                                                       mjpeg_camera):
    camera = mjpeg_camera(toy_clips["red"][0])
    tone = make_wav(tmp_path / "red.wav", TOY_CLASSES["red"][1], seconds=30, rate=TOY_RATE)
    env = {**os.environ, **pulse_env}
    # What is played into the null sink `vmic` is what its monitor, the default source, records.
    player = subprocess.Popen(["paplay", "--device=vmic", str(tone)], env=env)
    try:
        jsonl = tmp_path / "decisions.jsonl"
        result = avcil("run", "--model", toy_model, "--camera", camera.url, "--mic", "pulse", "--duration", "6",
                       "--hop", "0.5", "--smoothing", "1", "--score", "softmax", "--threshold", "0", "--jsonl", jsonl,
                       env=pulse_env, timeout=90)
    finally:
        player.kill()
        player.wait()
    decisions = read_lines(jsonl)
    assert len(decisions) >= 6, result.stderr
    assert all(KEYS <= set(d) for d in decisions)
    assert all(0 < d["latency_ms"]["total"] < 2000 for d in decisions)
    labels = [d["label"] for d in decisions]
    assert labels.count("red") >= 0.8 * len(labels), labels
    assert result.stdout.count(" red ") >= 0.8 * len(labels)  # the console line per decision


def test_run_picks_up_a_class_learnt_while_it_runs(tmp_path, toy_model, toy_clips):
    jsonl = tmp_path / "decisions.jsonl"
    green = ",".join(str(p) for p in toy_clips["green"][4:])
    run = subprocess.Popen([sys.executable, "-m", "avcil.cli", "run", "--model", str(toy_model), "--camera", green,
                            "--mic", green, "--loop", "--duration", "120", "--hop", "0.5", "--smoothing", "1",
                            "--score", "softmax", "--threshold", "0", "--jsonl", str(jsonl), "--quiet"],
                           stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: len(read_lines(jsonl)) >= 3, 100, "3 decisions by the first version", interval=0.2)
        avcil("learn", "--model", toy_model, "--label", "green", "--epochs", "40", "--batch-size", "16", "--files",
              *toy_clips["green"][:4])
        wait_until(lambda: sum(d["model_version"] == "v0002" for d in read_lines(jsonl)) >= 6, 100,
                   "6 decisions by v0002", interval=0.2)
    finally:
        run.terminate()
        run.wait(timeout=30)
    decisions = read_lines(jsonl)
    before = [d["label"] for d in decisions if d["model_version"] == "v0001"]
    after = [d["label"] for d in decisions if d["model_version"] == "v0002"]
    assert before and "green" not in before
    assert len(after) >= 6 and after[-4:] == ["green"] * 4, after
