import numpy as np
import pytest

from avcil.errors import InvalidInput
from avcil.runtime.recognizer import Recognizer, run_live
from avcil.runtime.replay import replay
from avcil.runtime.windows import Window
from support.media import make_clip


def _decisions(play, recognizer, files, **kwargs) -> list[dict]:
    decisions = []
    paths = ",".join(str(p) for p in files)
    play(recognizer, paths, paths, lambda d, w: decisions.append(d), **kwargs)
    return decisions


def test_replay_decides_the_windows_that_paced_play_decides(toy_model, tiny_profile, toy_clips):
    files = [toy_clips["red"][1], toy_clips["blue"][2], toy_clips["red"][3]]
    recognizer = Recognizer(toy_model, profile=tiny_profile, smoothing=1, score="softmax", threshold=0.0, watch=False)
    try:
        paced = _decisions(run_live, recognizer, files, hop=0.5, slot_s=2.5)
        replayed = _decisions(replay, recognizer, files, hop=0.5, slot_s=2.5)
    finally:
        recognizer.close()
    assert not any(d["dropped_windows"] for d in paced), "a loaded machine dropped windows; rerun on a quieter one"
    # Paced windows sit on the sources' clock, replayed ones on a clock starting at 0: the same offsets from the
    # first window's end.
    paced_ends = np.array([d["window"][1] for d in paced]) - paced[0]["window"][1]
    replayed_ends = np.array([d["window"][1] for d in replayed]) - replayed[0]["window"][1]
    common = min(len(paced), len(replayed))
    assert common >= 12 and abs(len(paced) - len(replayed)) <= 1
    assert np.allclose(paced_ends[:common], replayed_ends[:common], atol=1e-6)
    assert [d["label"] for d in paced[:common]] == [d["label"] for d in replayed[:common]]
    assert np.allclose([d["score"] for d in paced[:common]], [d["score"] for d in replayed[:common]], atol=2e-3)


def test_a_stream_shorter_than_one_window_is_refused_in_one_line(toy_model, tiny_profile, tmp_path):

    short = make_clip(tmp_path / "short.mp4", "red", 440.0, seconds=0.5)
    recognizer = Recognizer(toy_model, profile=tiny_profile, watch=False)
    try:
        with pytest.raises(InvalidInput, match="shorter than one window"):
            _decisions(replay, recognizer, [short])
    finally:
        recognizer.close()


def _windows(recognizer, files, slot_s: float) -> list[tuple[Window, np.ndarray, np.ndarray]]:
    """Each window of `files` replayed one per slot (window = hop = slot), with its encoder features."""
    windows = []
    paths = ",".join(str(p) for p in files)
    replay(recognizer, paths, paths,
           lambda d, w: windows.append((w, *(f.copy() for f in recognizer.last_features))), hop=slot_s, slot_s=slot_s)
    return windows


def _reds(window: Window) -> list[bool]:
    return [bool(frame[..., 0].mean() > frame[..., 2].mean()) for frame in window.frames]


def test_a_clip_that_fills_its_window_is_decided_on_its_own_frames(toy_model, tiny_profile, tmp_path):
    recognizer = Recognizer(toy_model, profile=tiny_profile, smoothing=1, score="softmax", threshold=0.0, watch=False)
    slot = float(recognizer.audio_prep.window_seconds)
    red, blue = (make_clip(tmp_path / f"{c}.mp4", c, tone, seconds=slot) for c, tone in (("red", 440), ("blue", 880)))
    try:
        alone = _windows(recognizer, [red], slot)
        red_then_blue = _windows(recognizer, [red, blue], slot)
        blue_then_red = _windows(recognizer, [blue, red], slot)
    finally:
        recognizer.close()
    # The frame stamped at a window's very end is the next clip's first, and the newest frame at its start may be
    # the previous clip's last: neither is the window's.
    assert [_reds(w) for w, _, _ in red_then_blue] == [[True] * 4, [False] * 4]
    assert [_reds(w) for w, _, _ in blue_then_red] == [[False] * 4, [True] * 4]
    np.testing.assert_allclose(red_then_blue[0][2], alone[0][2], atol=1e-5)
    np.testing.assert_allclose(red_then_blue[0][1], alone[0][1], atol=1e-4)


def test_a_replay_after_another_takes_nothing_encoded_from_it(tmp_path):
    # The lite encoders keep frame tokens and speech windows by their clock time, which every replay starts at 0.
    from avcil.bench.live_latency import lite_model

    profile = lite_model(tmp_path / "lite", "torch")
    slot = 3.0
    red, blue = (make_clip(tmp_path / f"{c}.mp4", c, tone, seconds=slot) for c, tone in (("red", 440), ("blue", 880)))
    used = Recognizer(tmp_path / "lite", profile=profile, smoothing=1, score="softmax", threshold=0.0, watch=False)
    fresh = Recognizer(tmp_path / "lite", profile=profile, smoothing=1, score="softmax", threshold=0.0, watch=False)
    try:
        _windows(used, [red], slot)
        after = _windows(used, [blue], slot)[0]
        expected = _windows(fresh, [blue], slot)[0]
    finally:
        used.close()
        fresh.close()
    np.testing.assert_allclose(after[2], expected[2], atol=1e-5)
    np.testing.assert_allclose(after[1], expected[1], atol=1e-5)
