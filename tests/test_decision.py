"""The decision rule and the open-set scores, on cases whose right answer is known by construction."""

import numpy as np
import pytest
import torch

from avcil.errors import InvalidInput
from avcil.model.head import FusionHead, HeadConfig
from avcil.model.readout import readout_spec
from avcil.features import FeatureShape
from avcil.runtime.decision import UNKNOWN, DecisionRule, HeadScores

AUDIO, VISUAL = 6, 4


def clusters(rng, centres, per_class, spread=0.05):
    """Clips around fixed centres: audio [n, AUDIO] and visual [n, 1, 2, VISUAL] (the same token twice)."""
    audio, visual, labels = [], [], []
    for label, (a, v) in enumerate(centres):
        audio.append(a + spread * rng.standard_normal((per_class, AUDIO)))
        token = v + spread * rng.standard_normal((per_class, 1, 1, VISUAL))
        visual.append(np.repeat(token, 2, axis=2))
        labels += [label] * per_class
    return (torch.tensor(np.concatenate(audio), dtype=torch.float32),
            torch.tensor(np.concatenate(visual), dtype=torch.float32), torch.tensor(labels))


def fitted_head(audio, visual, labels, classes):
    shape = FeatureShape(audio_dim=AUDIO, time=1, positions=2, visual_dim=VISUAL)
    head = FusionHead(HeadConfig.for_shape(shape, fusion_dim=8), num_classes=classes)
    head.set_readout(readout_spec("analytic", expansion=64, seed=1))
    with torch.no_grad():
        inputs = head.readout_inputs(audio, visual)
    head.readout.accumulate(inputs, labels)
    head.readout.solve()
    return head.eval()


@pytest.fixture
def two_classes():
    rng = np.random.default_rng(0)
    eye = np.eye(max(AUDIO, VISUAL))
    centres = [(eye[0][:AUDIO], eye[0][:VISUAL]), (eye[1][:AUDIO], eye[1][:VISUAL])]
    audio, visual, labels = clusters(rng, centres, 40)
    far_audio, far_visual, _ = clusters(rng, [(eye[3][:AUDIO], eye[3][:VISUAL])], 20)
    near_audio, near_visual, near_labels = clusters(rng, centres, 10)
    return fitted_head(audio, visual, labels, 2), (near_audio, near_visual, near_labels), (far_audio, far_visual)


def test_mahalanobis_separates_clips_like_the_classes_from_clips_unlike_anything_learnt(two_classes):
    head, (near_audio, near_visual, near_labels), (far_audio, far_visual) = two_classes
    scores = HeadScores(head)
    ranking, near = scores(near_audio, near_visual)
    _, far = scores(far_audio, far_visual)
    assert (ranking.argmax(axis=1) == near_labels.numpy()).all()
    # Every clip of the classes scores above every clip from elsewhere: the threshold has room.
    assert near["mahalanobis"].min() > far["mahalanobis"].max()
    # The softmax of the ridge outputs cannot say so: a clip unlike both classes still gets a confident class.
    assert np.median(far["softmax"]) > 0.5 * np.median(near["softmax"])


def test_background_learnt_lowers_the_ridge_output_on_that_background(two_classes):
    head, (near_audio, near_visual, near_labels), (far_audio, far_visual) = two_classes
    ridge = ("max_logit",)  # the ridge outputs themselves; a softmax over two classes never falls below 0.5
    before, _ = HeadScores(head)(far_audio, far_visual, ridge)
    with torch.no_grad():
        inputs = head.readout_inputs(far_audio, far_visual, head.features(far_audio, far_visual).fused)
    head.readout.accumulate_background(inputs[:10])
    head.readout.solve()
    scores = HeadScores(head)
    after, _ = scores(far_audio[10:], far_visual[10:], ridge)  # windows of that background not learnt
    near_ranking, _ = scores(near_audio, near_visual, ridge)
    assert after.max(axis=1).mean() < 0.5 * before[10:].max(axis=1).mean()
    # The classes still answer, and well above the background: a threshold between them holds.
    assert (near_ranking.argmax(axis=1) == near_labels.numpy()).all()
    assert np.percentile(near_ranking.max(axis=1), 10) > np.percentile(after.max(axis=1), 90)


def test_a_readout_of_pooled_features_decides_without_running_the_fusion_part(two_classes, monkeypatch):
    head, (audio, visual, _), _ = two_classes
    ranking, scores = HeadScores(head)(audio, visual)

    def untrained_fusion(*args):
        raise AssertionError("the fusion part ran for a readout that does not read it")

    monkeypatch.setattr(head, "features", untrained_fusion)
    again, scores_again = HeadScores(head)(audio, visual)
    assert np.array_equal(ranking, again) and np.array_equal(scores["mahalanobis"], scores_again["mahalanobis"])


def test_the_rule_smooths_over_windows_and_says_unknown_under_its_threshold():
    rule = DecisionRule("max_logit", threshold=0.5, smoothing=2, top_k=2)
    first = rule(np.array([0.9, 0.1]), 0.9, ["a", "b"])
    second = rule(np.array([0.1, 0.1]), 0.0, ["a", "b"])  # averaged with the first: 0.45 < 0.5
    assert first["label"] == "a" and second["label"] == UNKNOWN
    assert second["score"] == pytest.approx(0.45) and second["top_k"][0] == {"label": "a", "score": 0.5}
    third = rule(np.array([0.2, 0.8, 0.1]), 0.8, ["a", "b", "c"])  # a new class set: no averaging across it
    assert third["label"] == "b" and third["score"] == pytest.approx(0.8)


@pytest.mark.parametrize("settings, message", [
    ({"score": "softmax", "threshold": 1.5}, r"outside the softmax score's range \[0.0, 1.0\]"),
    ({"score": "max_logit", "threshold": float("nan")}, "finite"),
    ({"score": "nonsense"}, "unknown score"),
    ({"smoothing": 0}, "smoothing"),
    ({"top_k": 0}, "top-k"),
])
def test_a_bad_setting_is_refused_in_one_line(settings, message):
    with pytest.raises(InvalidInput, match=message):
        DecisionRule(**settings)
