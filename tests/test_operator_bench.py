"""The parts of `avcil bench correction` and `avcil bench enrol` that decide what is measured: which windows are
false-accept runs, which version a class is learnt into, which clip count becomes the default."""

from types import SimpleNamespace

import numpy as np
import pytest

from avcil.bench.correction import false_accept_runs
from avcil.bench.enrol import _version_before, default_count
from avcil.errors import InvalidInput
from avcil.modeldir import ModelDir
from avcil.runtime.field_settings import DEFAULT_CLIPS
from support.commands import avcil


def test_false_accept_runs_are_consecutive_background_windows_labelled_a_class():
    background = np.array([1, 1, 1, 0, 0, 1, 1, 1, 1], bool)  # windows 3-4 hold an event
    labels = np.array([2, 2, -1, 5, 5, 3, -1, 3, 3])           # labelled event windows are no false accept
    windows = SimpleNamespace(streams=[{"background": background}, {"background": np.ones(2, bool)}])
    runs = false_accept_runs(windows, [labels, np.array([-1, -1])])
    assert [(s, w.tolist()) for s, w in runs] == [(0, [0, 1]), (0, [5]), (0, [7, 8])]


def rows(recalls: dict) -> list[dict]:
    return [{"view": "recorded", "clips": n, "new_recall_mean": r} for n, r in recalls.items()]


def test_the_default_clip_count_is_the_smallest_within_five_points_of_the_largest():
    assert default_count(rows({1: 0.0, 5: 0.3, 10: 0.76, 20: 0.79, 40: 0.8}), "recorded") == 10
    assert default_count(rows({1: 0.0, 10: 0.1, 20: 0.53, 40: 0.8}), "recorded") == 40
    assert default_count(rows({40: 0.5, 1: 0.6}), "recorded") == 1  # order of the rows does not matter


def test_the_class_is_learnt_into_the_version_before_it(toy_model, toy_clips):
    avcil("learn", "--model", toy_model, "--label", "green", "--files", *map(str, toy_clips["green"][:3]))
    model = ModelDir(toy_model)
    assert _version_before(model, "green") == "v0001"
    with pytest.raises(InvalidInput, match="no version before class 'red'"):
        _version_before(model, "red")


def test_learn_and_the_page_record_the_measured_default():
    shown = avcil("learn", "--help").stdout
    assert f"default {DEFAULT_CLIPS}" in " ".join(shown.split())
