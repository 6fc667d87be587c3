import numpy as np
import pytest

from avcil.data.clips import ArrayClipSet
from avcil.model.memory import ExemplarMemory, herding_order


def clips_of(classes, per_class, shape=(2, 3, 4), audio_dim=5, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(classes), per_class)
    return ArrayClipSet([f"c{i}" for i in range(len(labels))], labels,
                        rng.normal(size=(len(labels), audio_dim)).astype(np.float32),
                        rng.normal(size=(len(labels), *shape)).astype(np.float32))


def by_class(clips, classes):
    return {c: np.flatnonzero(clips.labels == c) for c in classes}


def test_quotas_shrink_old_classes_and_fill_new_ones():
    clips = clips_of(6, 20)
    memory = ExemplarMemory(budget=12)
    memory.update(clips, by_class(clips, [0, 1]))
    assert {c: len(e.ids) for c, e in memory.classes.items()} == {0: 6, 1: 6}
    kept = memory.classes[0].ids[:3]
    memory.update(clips, by_class(clips, [2, 3]))
    assert {c: len(e.ids) for c, e in memory.classes.items()} == {0: 3, 1: 3, 2: 3, 3: 3}
    assert memory.classes[0].ids == kept  # truncation keeps the first-chosen exemplars
    memory.update(clips, by_class(clips, [4, 5]))
    assert len(memory) == 12 and all(len(e.ids) == 2 for e in memory.classes.values())
    # Every exemplar belongs to its class.
    index = {i: n for n, i in enumerate(clips.ids)}
    for c, e in memory.classes.items():
        assert all(clips.labels[index[i]] == c for i in e.ids)


def test_fp16_by_default_fp32_selectable_and_values_kept():
    clips = clips_of(2, 5)
    half, full = ExemplarMemory(4), ExemplarMemory(4, precision="fp32")
    half.update(clips, by_class(clips, [0, 1]))
    full.update(clips, by_class(clips, [0, 1]))
    assert half.classes[0].visual.dtype == np.float16 and full.classes[0].visual.dtype == np.float32
    rows = [clips.ids.index(i) for i in full.classes[0].ids]
    np.testing.assert_array_equal(full.classes[0].visual, clips.visual[rows])
    np.testing.assert_allclose(half.classes[0].visual, clips.visual[rows], atol=2e-3)


def test_random_selection_is_deterministic_under_a_seed():
    clips = clips_of(2, 30)
    picks = []
    for seed in (7, 7, 8):
        m = ExemplarMemory(10, seed=seed)
        m.update(clips, by_class(clips, [0, 1]))
        picks.append(m.classes[0].ids)
    assert picks[0] == picks[1] and picks[0] != picks[2]


def test_herding_mean_is_closer_to_the_class_mean_than_random_picks():
    rng = np.random.default_rng(3)
    feats = rng.normal(size=(200, 8)) + rng.normal(size=8)
    normalised = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    target = normalised.mean(axis=0)
    order = herding_order(feats, 10)
    assert len(set(order)) == 10
    herded = np.linalg.norm(normalised[order].mean(axis=0) - target)
    randoms = [np.linalg.norm(normalised[rng.choice(200, 10, replace=False)].mean(axis=0) - target) for _ in range(50)]
    assert herded < min(randoms)


def test_herding_needs_an_embedder_and_uses_it():
    clips = clips_of(1, 12)
    with pytest.raises(ValueError, match="embedding"):
        ExemplarMemory(4, selection="herding").update(clips, by_class(clips, [0]))
    memory = ExemplarMemory(4, selection="herding")
    memory.update(clips, by_class(clips, [0]), embed=lambda a, v: a)
    assert memory.classes[0].ids == [clips.ids[i] for i in herding_order(clips.audio, 4)]


def test_budget_smaller_than_the_classes_is_a_clear_error():
    clips = clips_of(3, 4)
    with pytest.raises(ValueError, match="budget of 2 clips is smaller than the 3 classes"):
        ExemplarMemory(2).update(clips, by_class(clips, [0, 1, 2]))


def test_round_trip_through_arrays():
    clips = clips_of(3, 6)
    memory = ExemplarMemory(9, seed=1)
    memory.update(clips, by_class(clips, [0, 1, 2]))
    again = ExemplarMemory.from_arrays(memory.settings(), memory.to_arrays(), clips.shape)
    assert {c: e.ids for c, e in again.classes.items()} == {c: e.ids for c, e in memory.classes.items()}
    np.testing.assert_array_equal(again.as_clip_set().visual, memory.as_clip_set().visual)


def test_unknown_settings_are_refused():
    with pytest.raises(ValueError, match="selection"):
        ExemplarMemory(10, selection="best")
    with pytest.raises(ValueError, match="precision"):
        ExemplarMemory(10, precision="int4")
