""""That was not X" (`avcil learn --not LABEL`): a window the model labelled a class it does not hold becomes
unknown, through the live path, and nothing else changes."""

import json

import numpy as np
import pytest
import torch

from avcil.errors import InvalidInput
from avcil.modeldir import ModelDir
from avcil.runtime.decision import REJECTED, DecisionRule, HeadScores
from avcil.runtime.file_windows import DEFAULT_VIEWS
from support.commands import avcil


def run_labels(model, clip, tmp_path, name: str) -> list[dict]:
    """The decisions of `avcil run` on one clip, played paced; every window labelled its best class unless rejected
    (softmax score, threshold 0)."""
    out = tmp_path / f"{name}.jsonl"
    avcil("run", "--model", model, "--camera", clip, "--mic", clip, "--slot", "3", "--hop", "0.5",
          "--score", "softmax", "--threshold", "0", "--jsonl", out, "--quiet")
    return [json.loads(line) for line in out.read_text().splitlines()]


def test_not_x_turns_the_corrected_clip_unknown_and_keeps_the_classes(analytic_model, toy_clips, tmp_path):
    green = str(toy_clips["green"][0])
    before = run_labels(analytic_model, green, tmp_path, "before")
    mistaken = max({d["label"] for d in before}, key=[d["label"] for d in before].count)
    assert mistaken in ("red", "blue") and not any(d.get(REJECTED) for d in before)
    done = avcil("learn", "--model", analytic_model, "--not", mistaken, "--files", green, "--json")
    summary = json.loads(done.stdout)
    assert summary["version"] == "v0002" and summary["not"] == mistaken
    assert summary["windows"] == DEFAULT_VIEWS and summary["corrections_total"] == DEFAULT_VIEWS
    after = run_labels(analytic_model, green, tmp_path, "after")
    assert after and all(d["label"] == "unknown" and d[REJECTED] for d in after)
    for colour in ("red", "blue"):  # the classes' clips are still labelled them
        kept = run_labels(analytic_model, str(toy_clips[colour][-1]), tmp_path, colour)
        assert {d["label"] for d in kept} == {colour} and not any(d.get(REJECTED) for d in kept)
    loaded = ModelDir(analytic_model).load(with_memory=False)
    assert loaded.class_names == ["red", "blue"] and len(loaded.head.readout.rejection_inputs) == DEFAULT_VIEWS
    assert "not 'red'" in loaded.manifest["note"] or "not 'blue'" in loaded.manifest["note"]


def test_corrections_leave_every_score_of_the_other_windows_as_it_was(analytic_model, tiny_profile, toy_clips):
    """Kept beside the sums, not in them: the ridge, the Gaussians and so every score of a window the correction
    does not reject are unchanged."""
    from avcil.runtime.background import learn_not

    features = tiny_profile.encode_files(toy_clips["red"] + toy_clips["blue"], progress=False)
    green = tiny_profile.encode_files(toy_clips["green"][:1], progress=False)
    before = ModelDir(analytic_model).load(with_memory=False).head.eval()
    ranking_before, scores_before = HeadScores(before)(*(torch.from_numpy(x) for x in features))
    learn_not(analytic_model, "red", *green)
    after = ModelDir(analytic_model).load(with_memory=False).head.eval()
    ranking_after, scores_after = HeadScores(after)(*(torch.from_numpy(x) for x in features))
    assert np.array_equal(ranking_before, ranking_after)
    for score in ("softmax", "max_logit", "energy", "mahalanobis"):
        assert np.array_equal(scores_before[score], scores_after[score])
    assert not scores_after[REJECTED].any()
    _, on_green = HeadScores(after)(*(torch.from_numpy(x) for x in green))
    assert on_green[REJECTED].all()


def test_a_rejected_window_is_unknown_whatever_its_score():
    rule = DecisionRule("softmax", 0.0, 1, 2)
    kept = rule(np.array([0.9, 0.1]), 0.9, ["a", "b"])
    rejected = rule(np.array([0.9, 0.1]), 0.9, ["a", "b"], rejected=True)
    assert kept["label"] == "a" and REJECTED not in kept
    assert rejected["label"] == "unknown" and rejected[REJECTED] and rejected["top_k"][0]["label"] == "a"


def test_not_naming_an_unknown_class_is_one_line_and_changes_nothing(analytic_model, toy_clips):
    refused = avcil("learn", "--model", analytic_model, "--not", "green", "--files", str(toy_clips["green"][0]),
                    check=False)
    assert refused.returncode == 2 and "has no such class" in refused.stderr and "'red', 'blue'" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1 and "Traceback" not in refused.stderr
    assert ModelDir(analytic_model).current() == "v0001"


@pytest.mark.parametrize("extra, message", [(["--background"], "two different things"),
                                            (["--label", "green"], "takes no --label"),
                                            (["--force"], "--force goes with --background")])
def test_not_with_flags_it_does_not_take_is_refused(analytic_model, toy_clips, extra, message):
    refused = avcil("learn", "--model", analytic_model, "--not", "red", *extra, "--files", str(toy_clips["green"][0]),
                    check=False)
    assert refused.returncode == 2 and message in refused.stderr


def test_corrections_survive_the_model_dir_and_older_dirs_load_without_any(analytic_model, tiny_profile, toy_clips):
    from avcil.runtime.background import learn_not

    older = ModelDir(analytic_model).load(with_memory=False).head.readout
    assert older.rejection_inputs.shape == (0, older.in_dim)  # a dir made before corrections existed loads too
    green = tiny_profile.encode_files(toy_clips["green"][:2], progress=False)
    learn_not(analytic_model, "blue", *green, sources=["a.mp4", "b.mp4"])
    readout = ModelDir(analytic_model).load(with_memory=False).head.readout
    assert readout.rejection_inputs.shape == (2, readout.in_dim) and readout.rejection_class.tolist() == [1, 1]
    with pytest.raises(InvalidInput, match="no class 'green' to correct"):
        learn_not(analytic_model, "green", *green)
