"""The analytic readout's per-modality readouts: what decides a window whose microphone or camera is missing."""

import numpy as np
import torch

from avcil.features import FeatureShape
from avcil.model.head import FusionHead, HeadConfig
from avcil.model.readout import AnalyticReadout, readout_spec
from avcil.runtime.decision import HeadScores

AUDIO, VISUAL, CLASSES = 6, 4, 3


def head_with(spec: dict) -> FusionHead:
    shape = FeatureShape(audio_dim=AUDIO, time=1, positions=2, visual_dim=VISUAL)
    head = FusionHead(HeadConfig.for_shape(shape, fusion_dim=8), num_classes=CLASSES)
    head.set_readout(spec)
    return head.eval()


def clips(rng, per_class: int, spread: float = 0.05):
    """Clips whose class shows in both modalities: audio near eye[c], both visual tokens near eye[c]."""
    labels = np.repeat(np.arange(CLASSES), per_class)
    audio = np.eye(AUDIO)[labels] + spread * rng.standard_normal((len(labels), AUDIO))
    visual = np.repeat((np.eye(VISUAL)[labels] + spread * rng.standard_normal((len(labels), VISUAL)))[:, None, None],
                       2, axis=2)
    return (torch.tensor(audio, dtype=torch.float32), torch.tensor(visual, dtype=torch.float32),
            torch.from_numpy(labels))


def fitted(spec: dict, audio, visual, labels) -> FusionHead:
    head = head_with(spec)
    inputs = head.readout_inputs(audio, visual)
    head.readout.accumulate(inputs[:20], labels[:20])  # two updates and background, as a device's life goes
    head.readout.accumulate(inputs[20:], labels[20:])
    head.readout.accumulate_background(inputs[:3] * 0 + inputs.mean(dim=0))
    head.readout.solve()
    return head


def test_each_modality_readout_is_the_readout_of_that_modality_s_columns_fitted_alone():
    audio, visual, labels = clips(np.random.default_rng(0), 15)
    spec = readout_spec("analytic", expansion=32, seed=2)
    head = fitted(spec, audio, visual, labels)
    inputs = head.readout_inputs(audio, visual)
    for modality, (first, end) in head.readout.columns.items():
        alone = AnalyticReadout(spec, end - first, CLASSES)
        alone.accumulate(inputs[:20, first:end], labels[:20])
        alone.accumulate(inputs[20:, first:end], labels[20:])
        alone.accumulate_background(inputs[:3, first:end] * 0 + inputs[:, first:end].mean(dim=0))
        alone.solve()
        part = head.readout.part(modality)
        assert part is not None and part.in_dim == end - first
        for name in ("gram", "cross", "count", "weight", "negative_sum", "negative_count", "shift", "spread"):
            torch.testing.assert_close(getattr(part, name), getattr(alone, name), msg=f"{modality} {name}")
    assert head.readout.columns == {"audio": (0, AUDIO), "video": (AUDIO, AUDIO + 2 * VISUAL)}


def test_a_window_without_its_sound_is_decided_by_the_video_readout_where_silence_misleads_the_joint_one():
    rng = np.random.default_rng(1)
    audio, visual, labels = clips(rng, 15)
    head = fitted(readout_spec("analytic", expansion=64, seed=1), audio, visual, labels)
    scores = HeadScores(head)
    test_audio, test_visual, test_labels = clips(rng, 10)
    # The microphone is gone; what stands in for its sound happens to look like class 0's audio.
    stand_in = torch.zeros_like(test_audio) + torch.eye(AUDIO)[0]
    assert scores.decides_alone("video") and scores.decides_alone("audio")

    def labelled_right(alone: str | None) -> float:
        """The share of windows labelled their class at the default threshold."""
        ranking, open_set = scores(stand_in, test_visual, ("mahalanobis",), alone=alone)
        right = (ranking.argmax(axis=1) == test_labels.numpy()) & (open_set["mahalanobis"] >= 0.05)
        return float(right.mean())

    assert labelled_right("video") >= 0.9
    # Fed the stand-in, the joint readout finds the windows of classes 1 and 2 unlike anything it learnt.
    assert labelled_right(None) <= labelled_right("video") - 0.25
    alone, _ = scores(stand_in, test_visual, ("mahalanobis",), alone="video")
    # The video readout reads only the video: any audio gives the same answer.
    other, _ = scores(torch.randn_like(test_audio), test_visual, ("mahalanobis",), alone="video")
    np.testing.assert_array_equal(other, alone)


def test_a_model_made_before_per_modality_readouts_loads_and_decides_as_before():
    audio, visual, labels = clips(np.random.default_rng(2), 15)
    old_spec = readout_spec("analytic", expansion=32, seed=2, per_modality=False)
    assert "per_modality" not in old_spec  # what a model dir from before records
    old = fitted(old_spec, audio, visual, labels)
    loaded = head_with(old_spec)
    loaded.load_state_dict(old.state_dict())
    scores = HeadScores(loaded)
    assert not loaded.readout.columns and not scores.decides_alone("video")
    joint, _ = scores(audio, visual, ("mahalanobis",))
    missing, _ = scores(audio, visual, ("mahalanobis",), alone="video")  # the joint readout decides, as before
    np.testing.assert_array_equal(joint, missing)


def test_per_modality_readouts_are_saved_and_loaded_with_the_head():
    audio, visual, labels = clips(np.random.default_rng(3), 15)
    spec = readout_spec("analytic", expansion=32, seed=2)
    head = fitted(spec, audio, visual, labels)
    copy = head_with(spec)
    copy.add_classes(0)
    copy.load_state_dict(head.state_dict())
    torch.testing.assert_close(copy.readout.part("video").weight, head.readout.part("video").weight)
    ranking, _ = HeadScores(copy)(audio, visual, ("mahalanobis",), alone="audio")
    assert (ranking.argmax(axis=1) == labels.numpy()).mean() >= 0.9
