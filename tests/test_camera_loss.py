"""A camera that shows nothing is said, never silently decided around: a camera file without a video frame is one
line and exit 2 at the start; a live camera (the ffmpeg MJPEG server of conftest.py) that stops mid-run marks each
decision `video_missing` while it is gone, with one line when it is lost and one when it is back; `--audio-only`
decides on sound alone on purpose, every decision marked."""

import subprocess
import sys

import pytest
from support.commands import avcil, read_lines
from support.media import TOY_CLASSES, TOY_RATE, make_wav
from support.waiting import wait_until



def empty(path, clip):
    path.write_bytes(b"")


def text(path, clip):
    path.write_text("not a video, a note someone saved with the wrong name\n")


def truncated(path, clip):
    path.write_bytes(clip.read_bytes()[:len(clip.read_bytes()) // 3])  # the index (moov) at the end is cut off


def sound_only(path, clip):
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(clip), "-vn", "-c:a", "copy", str(path)], check=True)


@pytest.mark.parametrize("make, suffix, reason", [
    (empty, ".mp4", "the file is empty"), (text, ".mp4", "cannot be opened as a video"),
    (truncated, ".mp4", "cannot be opened as a video"), (sound_only, ".m4a", "no video stream (streams: audio)")],
    ids=["empty", "text", "truncated", "audio only"])
def test_a_camera_file_without_a_video_frame_is_one_line_at_the_start(tmp_path, toy_model, toy_clips, make, suffix,
                                                                       reason):
    camera = tmp_path / f"camera{suffix}"
    make(camera, toy_clips["red"][0])
    jsonl = tmp_path / "decisions.jsonl"
    result = avcil("run", "--model", toy_model, "--camera", camera, "--mic", toy_clips["red"][1], "--jsonl", jsonl,
                   "--quiet", check=False)
    assert result.returncode == 2, result.stderr
    start, error = result.stderr.strip().splitlines()  # the model's line, then one line for the camera
    assert start.startswith("model v0001") and "Traceback" not in result.stderr
    assert error.startswith(f"avcil run: error: camera {camera} gives no video frame: ") and reason in error, error
    assert read_lines(jsonl) == []  # nothing decided on audio alone


def test_audio_only_is_asked_for_and_every_decision_says_so(tmp_path, toy_model, toy_clips):
    jsonl = tmp_path / "decisions.jsonl"
    result = avcil("run", "--model", toy_model, "--audio-only", "--mic", toy_clips["red"][1], "--jsonl", jsonl,
                   "--quiet", "--hop", "0.25")
    decisions = read_lines(jsonl)
    assert len(decisions) >= 3 and all(d["video_missing"] is True for d in decisions)
    assert result.stderr.count("video_missing") == 1 and "--audio-only" in result.stderr
    refused = avcil("run", "--model", toy_model, "--mic", toy_clips["red"][1], check=False)
    assert refused.returncode == 2 and refused.stderr.strip().splitlines() == [
        "avcil run: error: name the camera with --camera SRC (or decide on sound alone with --audio-only)"]


def test_a_live_camera_that_stops_marks_decisions_video_missing_and_says_so_once(tmp_path, toy_model, toy_clips,
                                                                                 mjpeg_camera):
    camera = mjpeg_camera(toy_clips["red"][0])
    tone = make_wav(tmp_path / "red.wav", TOY_CLASSES["red"][1], seconds=90, rate=TOY_RATE)
    jsonl = tmp_path / "decisions.jsonl"
    run = subprocess.Popen([sys.executable, "-m", "avcil.cli", "run", "--model", str(toy_model), "--camera",
                            camera.url, "--mic", str(tone), "--duration", "80", "--hop", "0.5", "--smoothing", "1",
                            "--score", "softmax", "--threshold", "0", "--jsonl", str(jsonl), "--quiet"],
                           stderr=subprocess.PIPE, text=True)

    def wait_for(done, what: str) -> list[dict]:
        """The decisions written, once `done(decisions)`; fails at once if the run ends first."""
        decisions = wait_until(lambda: run.poll() is not None or ((d := read_lines(jsonl)) and done(d) and d), 60,
                               lambda: f"{what}: {[d['video_missing'] for d in read_lines(jsonl)]}", interval=0.1)
        assert run.poll() is None, f"the run ended before {what}: {run.stderr.read()}"
        return decisions

    try:
        seen = len(wait_for(lambda d: len(d) >= 4, "decisions"))
        camera.stop()  # the stream server goes away mid-run
        lost = len(wait_for(lambda d: sum(x["video_missing"] for x in d[seen:]) >= 4, "decisions marked missing"))
        camera.start()  # and comes back on the same URL: the source reconnects
        wait_for(lambda d: len(d) > lost and not any(x["video_missing"] for x in d[-3:]), "decisions with video")
    finally:
        run.terminate()
        _, err = run.communicate(timeout=30)
    made = read_lines(jsonl)
    flags = [d["video_missing"] for d in made]
    assert not any(flags[:seen]), flags
    assert flags[-3:] == [False] * 3, flags
    # Lost once and back once: one run of missing windows, each decided (on audio) rather than skipped.
    first, last = flags.index(True), len(flags) - 1 - flags[::-1].index(True)
    assert all(flags[first:last + 1]), flags
    missing = made[first:last + 1]
    assert all(d["label"] in ("red", "blue") and not d["audio_missing"] for d in missing)
    lost_lines = [line for line in err.splitlines() if "no video frame since" in line]
    back_lines = [line for line in err.splitlines() if "video is back after" in line]
    assert len(lost_lines) == 1 and lost_lines[0].startswith(f"camera '{camera.url}': "), err
    assert "deciding on audio alone, decisions marked video_missing" in lost_lines[0]
    assert len(back_lines) == 1 and back_lines[0].startswith(f"camera '{camera.url}': "), err
    assert "Traceback" not in err
