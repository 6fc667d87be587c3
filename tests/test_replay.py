import numpy as np
import pytest

from avcil.errors import InvalidInput
from avcil.runtime.recognizer import Recognizer, run_live
from avcil.runtime.replay import replay
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
