"""Background learnt on purpose (`avcil learn --background`), and the guard against a class recorded as background."""

import json

import numpy as np
import pytest
import torch

from avcil.modeldir import ModelDir
from avcil.runtime.decision import HeadScores
from avcil.runtime.file_windows import DEFAULT_VIEWS, encode_window_views, view_ends
from support.commands import avcil


def ridge_outputs(model_dir, features) -> np.ndarray:
    loaded = ModelDir(model_dir).load(with_memory=False)
    ranking, _ = HeadScores(loaded.head.eval())(*(torch.from_numpy(x) for x in features), ("max_logit",))
    return ranking.max(axis=1)


def test_views_of_a_clip_hold_most_of_it_at_every_offset():
    ends = view_ends(2.0, 3.0, 5)
    starts = ends - 3.0
    held = np.minimum(ends, 2.0) - np.maximum(starts, 0.0)
    assert np.allclose(held.min(), 1.5) and np.allclose(held.max(), 2.0) and len(set(np.round(starts, 3))) == 5
    assert np.allclose(view_ends(9.0, 3.0, 4), [3.0, 5.0, 7.0, 9.0])  # a long file: windows within it


def test_background_learnt_from_files_lowers_the_answer_to_it_and_keeps_the_classes(analytic_model, tiny_profile,
                                                                                   toy_clips):
    green = encode_window_views(tiny_profile, toy_clips["green"][3:], progress=False)
    red = encode_window_views(tiny_profile, toy_clips["red"][3:], progress=False)
    before_green, before_red = ridge_outputs(analytic_model, green), ridge_outputs(analytic_model, red)
    done = avcil("learn", "--model", str(analytic_model), "--background", "--json", "--files",
                 *map(str, toy_clips["green"][:3]))
    summary = json.loads(done.stdout)
    assert summary["version"] == "v0002" and summary["background_windows"] == 3 * DEFAULT_VIEWS
    model = ModelDir(analytic_model)
    assert model.load(with_memory=False).class_names == ["red", "blue"]  # no class added
    after_green, after_red = ridge_outputs(analytic_model, green), ridge_outputs(analytic_model, red)
    assert after_green.mean() < 0.5 * before_green.mean()  # held-out green windows: now far from every class
    assert np.percentile(after_red, 10) > np.percentile(after_green, 90)
    assert after_red.mean() > 0.8 * before_red.mean()  # a class's own windows keep their answer (98 % here)


def test_a_class_offered_as_background_is_refused_naming_it(analytic_model, toy_clips):
    refused = avcil("learn", "--model", str(analytic_model), "--background", "--files", str(toy_clips["red"][0]),
                    check=False)
    assert refused.returncode == 2 and "looks like class 'red'" in refused.stderr and "--force" in refused.stderr
    assert "Traceback" not in refused.stderr and ModelDir(analytic_model).current() == "v0001"
    forced = avcil("learn", "--model", str(analytic_model), "--background", "--force", "--files",
                   str(toy_clips["red"][0]))
    assert ModelDir(analytic_model).current() == "v0002", forced.stderr


def test_the_demos_background_features_are_encoded_once_then_read_back(tiny_profile, toy_clips, tmp_path):
    from avcil.runtime.file_windows import cached_window_views

    paths = toy_clips["green"][:2]
    first, cached = cached_window_views(tiny_profile, paths, tmp_path)
    assert not cached and first["audio"].shape[0] == 2 * DEFAULT_VIEWS and first["probe_audio"].shape[0] == 2
    again, cached = cached_window_views(tiny_profile, paths, tmp_path)
    assert cached and all(np.array_equal(first[k], again[k]) for k in first)
    assert [p.name for p in tmp_path.iterdir()] == [next(tmp_path.iterdir()).name]  # one file, no partial left
    _, cached = cached_window_views(tiny_profile, toy_clips["green"][:1], tmp_path)
    assert not cached  # another clip set is encoded anew


def test_a_vouched_stretch_of_live_time_is_learnt_as_background(analytic_model, tiny_profile, toy_clips):
    """`--minutes`: windows cut every hop from live sources (a file standing in for the camera), a few kept at random
    over the stretch, learnt as background; the same content's other windows then lie far from every class."""
    green = str(toy_clips["green"][0])
    held_out = encode_window_views(tiny_profile, toy_clips["green"][3:], progress=False)
    before = ridge_outputs(analytic_model, held_out)
    done = avcil("learn", "--model", analytic_model, "--background", "--camera", green, "--mic", green,
                 "--minutes", "0.15", "--windows", "4", "--json")
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["version"] == "v0002" and 1 <= summary["background_windows"] <= 4
    seen = [line for line in done.stderr.splitlines() if line.startswith("background: ")]
    assert seen and "windows seen, " in seen[-1] and int(seen[-1].split(" windows seen")[0].split()[-1]) > 4
    assert ridge_outputs(analytic_model, held_out).mean() < 0.5 * before.mean()
    assert ModelDir(analytic_model).load(with_memory=False).class_names == ["red", "blue"]


@pytest.mark.parametrize("flags, message", [(["--label", "green"], "goes with --background"),
                                            (["--background", "--files", "x.mp4"], "not --files"),
                                            (["--background", "--minutes", "0"], "--minutes")])
def test_a_stretch_with_flags_it_does_not_take_is_refused_in_one_line(analytic_model, toy_clips, flags, message):
    green = str(toy_clips["green"][0])
    extra = [] if "--minutes" in flags else ["--minutes", "1"]
    refused = avcil("learn", "--model", analytic_model, "--camera", green, "--mic", green, *flags, *extra,
                    check=False)
    assert refused.returncode == 2 and message in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    assert ModelDir(analytic_model).current() == "v0001"
