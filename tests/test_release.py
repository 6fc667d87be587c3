"""The AV-CIL feature release reader, on the real split files with generated features for some of their ids."""

import pickle
import re
import shutil
import tracemalloc
from pathlib import Path

import h5py
import numpy as np
import pytest

from avcil.data import release
from avcil.data.clips import SPLITS, equal_steps
from avcil.data.release import AUDIO_FILE, VISUAL_H5, VISUAL_NPY, convert_visual_dict, load_release
from support.models import HostilePickle

# The real split files of the three benchmarks (a copy of shared/data/avcil-splits).
SPLIT_DIR = Path(__file__).parent / "data" / "avcil-splits"

RELEASED = (1568, 768)


def load_dict(path: Path) -> dict:
    return np.load(path, allow_pickle=True).item()


def save_dict(path: Path, d: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, d, allow_pickle=True)


def real_ids(bench: str, classes, per_split) -> dict[str, dict[int, list[str]]]:
    """The first few video ids of these classes in each split of the real benchmark: {split: {class: ids}}."""
    by_class = load_dict(SPLIT_DIR / bench / "all_classId_vid_dict.npy")
    return {split: {c: by_class[split][c][:k] for c in classes} for split, k in zip(SPLITS, per_split)}


def make_release(parent: Path, bench: str, visual_format: str, classes=(0, 1, 8), per_split=(2, 1, 1),
                 audio_shape=(768,), visual_shape=RELEASED, no_audio=(), no_visual=()) -> tuple[Path, dict]:
    """A release of `bench` reduced to the first few real video ids of some classes in each split, with random
    features (none for the ids in no_audio / no_visual). Returns its directory and the features {id: (a, v)}."""
    real, root = SPLIT_DIR / bench, parent / bench
    root.mkdir(parents=True)
    shutil.copy(real / "category_encode_dict.npy", root)
    by_id = load_dict(real / "all_id_category_dict.npy")
    kept = real_ids(bench, classes, per_split)
    save_dict(root / "all_classId_vid_dict.npy", kept)
    save_dict(root / "all_id_category_dict.npy",
              {split: {i: by_id[split][i] for ids in kept[split].values() for i in ids} for split in SPLITS})

    rng = np.random.default_rng(1)
    ids = [i for split in SPLITS for ids in kept[split].values() for i in ids] + ["not-in-splits"]
    features = {i: (rng.standard_normal(audio_shape, dtype=np.float32),
                    rng.standard_normal(visual_shape, dtype=np.float32)) for i in ids}
    save_dict(root / AUDIO_FILE, {i: a for i, (a, _) in features.items() if i not in no_audio})
    visual = {i: v for i, (_, v) in features.items() if i not in no_visual}
    if visual_format == "npy":
        save_dict(root / VISUAL_NPY, visual)
    else:
        (root / VISUAL_H5).parent.mkdir(parents=True)
        with h5py.File(root / VISUAL_H5, "w") as f:
            for i, v in visual.items():
                f.create_dataset(i, data=v)
    return root, features


@pytest.mark.parametrize("bench, visual_format, classes, steps, defaults", [
    ("AVE", "npy", 28, 4, {"memory_budget": 340, "instance_weight": 0.5}),
    ("kinetics-sounds", "h5", 30, 5, {"memory_budget": 500, "instance_weight": 0.1}),
    ("VGGSound_100", "h5", 100, 10, {"memory_budget": 1500, "instance_weight": 0.1}),
    ("VGGSound_100", "npy", 100, 10, {"memory_budget": 1500, "instance_weight": 0.1}),
])
def test_reads_release(tmp_path, bench, visual_format, classes, steps, defaults):
    root, features = make_release(tmp_path, bench, visual_format)
    benchmark = load_release(root)

    encode = load_dict(root / "category_encode_dict.npy")
    assert benchmark.name == bench and len(benchmark.class_names) == classes
    assert [encode[name] for name in benchmark.class_names] == list(range(classes))
    assert benchmark.steps == equal_steps(classes, steps) and benchmark.defaults.given() == defaults
    assert benchmark.shape.visual == (8, 196, 768) and benchmark.shape.audio_dim == 768

    splits = load_dict(root / "all_id_category_dict.npy")
    for split in SPLITS:
        clips = benchmark.splits[split]
        assert clips.ids == list(splits[split])
        assert [benchmark.class_names[k] for k in clips.labels] == [splits[split][i] for i in clips.ids]
        order = np.random.default_rng(0).permutation(len(clips.ids))
        audio, visual = clips.load(order)
        assert audio.dtype == visual.dtype == np.float32 and visual.shape == (len(order), 8, 196, 768)
        for row, k in enumerate(order):
            released_audio, released_visual = features[clips.ids[k]]
            np.testing.assert_array_equal(audio[row], released_audio)
            np.testing.assert_array_equal(visual[row, 3, 17], released_visual[3 * 196 + 17])  # group 3, position 17
            np.testing.assert_array_equal(visual[row].reshape(RELEASED), released_visual)

    assert len(load_release(root, num_steps=2, name="halves").steps) == 2


def test_unrecognised_benchmark_needs_steps(tmp_path):
    root, _ = make_release(tmp_path, "AVE", "h5")
    mine = root.rename(tmp_path / "mine")
    assert load_release(mine).name == "AVE"  # 28 classes: recognised by count
    save_dict(mine / "category_encode_dict.npy", {**load_dict(mine / "category_encode_dict.npy"), "Tabla": 28})
    with pytest.raises(ValueError, match="29 classes.*num_steps"):
        load_release(mine)
    bench = load_release(mine, num_steps=29)
    assert bench.name == "mine" and bench.defaults.given() == {} and bench.class_names[-1] == "Tabla"


def test_conversion_is_cached(tmp_path, monkeypatch):
    root, _ = make_release(tmp_path, "AVE", "npy", classes=(0,), per_split=(1, 1, 1))
    cache = tmp_path / "cache"
    first = load_release(root, cache_dir=cache).splits["test"].load([0])[1]
    assert sorted(p.name for p in cache.iterdir()) == ["index.json", "visual.f32"]
    assert not (root / release.VISUAL_NPY_CACHE).exists()

    conversions = []
    monkeypatch.setattr(release, "_Spool", lambda *a: conversions.append(a) or pytest.fail("converted again"))
    np.testing.assert_array_equal(load_release(root, cache_dir=cache).splits["test"].load([0])[1], first)
    monkeypatch.undo()

    (cache / "index.json").unlink()  # an interrupted conversion leaves no index: it is redone
    np.testing.assert_array_equal(load_release(root, cache_dir=cache).splits["test"].load([0])[1], first)
    assert (cache / "index.json").is_file()


def test_conversion_holds_one_array_at_a_time(tmp_path):
    count = 40
    save_dict(tmp_path / "visual.npy", {f"v{i}": np.full(RELEASED, i, np.float32) for i in range(count)})
    one_array = 4 * RELEASED[0] * RELEASED[1]

    tracemalloc.start()
    raw = convert_visual_dict(tmp_path / "visual.npy", tmp_path / "cache")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 3 * one_array, f"converting {count} arrays of {one_array} bytes peaked at {peak} bytes"
    assert [raw.read([f"v{i}"])[0, 0, 0, 0] for i in (0, 17, 39)] == [0, 17, 39]


def test_clip_set_pickles_as_paths(tmp_path):
    root, _ = make_release(tmp_path, "kinetics-sounds", "h5", classes=(0,), per_split=(2, 1, 1))
    train = load_release(root).splits["train"]
    data = pickle.dumps(train)  # as a DataLoader worker gets it
    assert len(data) < 20_000
    for got, want in zip(pickle.loads(data).load([1, 0]), train.load([1, 0])):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("missing, named", [
    ("category_encode_dict.npy", "category_encode_dict.npy, which should hold {class name: class index}"),
    ("all_id_category_dict.npy", "all_id_category_dict.npy, which should hold {'train'|'val'|'test': {video id"),
    ("all_classId_vid_dict.npy", "all_classId_vid_dict.npy, which should hold"),
    (AUDIO_FILE, "audio_pretrained_feature_dict.npy, which should hold {video id: \\(768,\\)"),
    (VISUAL_H5, "visual_features.h5 .*or visual_pretrained_feature/visual_pretrained_feature_dict.npy"),
])
def test_missing_file_is_named(tmp_path, missing, named):
    root, _ = make_release(tmp_path, "AVE", "h5", classes=(0,), per_split=(1, 1, 1))
    (root / missing).unlink()
    with pytest.raises(FileNotFoundError, match=named):
        load_release(root)


@pytest.mark.parametrize("visual_format", ["npy", "h5"])
def test_ids_without_features_are_listed(tmp_path, visual_format):
    lost = [i for ids in real_ids("AVE", (0, 1), (2, 1, 1))["val"].values() for i in ids]
    root, _ = make_release(tmp_path, "AVE", visual_format, classes=(0, 1), no_audio=lost)
    audio_name = Path(AUDIO_FILE).name
    with pytest.raises(ValueError, match=f"{audio_name}: no audio features for 2 video id.*{re.escape(lost[1])}"):
        load_release(root)

    root, _ = make_release(tmp_path / "b", "AVE", visual_format, classes=(0, 1), no_visual=lost)
    name = Path(VISUAL_NPY if visual_format == "npy" else VISUAL_H5).name
    with pytest.raises(ValueError, match=f"{name}: no visual features for 2 video id.*{re.escape(lost[0])}"):
        load_release(root)


@pytest.mark.parametrize("visual_format", ["npy", "h5"])
def test_wrong_shapes_are_named(tmp_path, visual_format):
    root, _ = make_release(tmp_path, "AVE", visual_format, classes=(0,), per_split=(1, 1, 1),
                           visual_shape=(1568, 512))
    name = Path(VISUAL_NPY if visual_format == "npy" else VISUAL_H5).name
    with pytest.raises(ValueError, match=f"{name}: visual features of video id '.+' have shape \\(1568, 512\\), "
                                         "expected \\(1568, 768\\)"):
        load_release(root)

    root, _ = make_release(tmp_path / "b", "AVE", visual_format, classes=(0,), per_split=(1, 1, 1),
                           audio_shape=(1, 768))
    with pytest.raises(ValueError, match="audio_pretrained_feature_dict.npy: audio features of video id '.+' "
                                         "have shape \\(1, 768\\), expected \\(768,\\)"):
        load_release(root)


def test_split_files_must_agree(tmp_path):
    root, _ = make_release(tmp_path, "AVE", "h5", classes=(0, 1), per_split=(1, 1, 1))
    by_class = load_dict(root / "all_classId_vid_dict.npy")
    by_class["test"] = {0: by_class["test"][1], 1: by_class["test"][0]}  # two clips swap classes
    save_dict(root / "all_classId_vid_dict.npy", by_class)
    with pytest.raises(ValueError, match="test split of all_classId_vid_dict.npy does not list the same"):
        load_release(root)


@pytest.mark.parametrize("target", ["category_encode_dict.npy", AUDIO_FILE, VISUAL_NPY])
def test_a_release_file_that_would_run_code_is_refused_and_runs_nothing(tmp_path, target):
    root, _ = make_release(tmp_path, "AVE", "npy")
    marker = tmp_path / "marker"
    path = root / target
    original = load_dict(path)
    key = next(iter(original))
    save_dict(path, {**original, key: HostilePickle(marker)})
    with pytest.raises(ValueError, match=rf"{re.escape(target)}: refused to unpickle the global (posix|os)\.system"):
        release.load_release(root, num_steps=3, cache_dir=tmp_path / "cache").splits["train"].load([0])
    assert not marker.exists()


def test_the_real_split_files_load_with_the_restricted_unpickler():
    from avcil.data.safe_pickle import load_npy

    for bench in ("AVE", "kinetics-sounds", "VGGSound_100"):
        for name in ("category_encode_dict.npy", "all_id_category_dict.npy", "all_classId_vid_dict.npy"):
            assert load_npy(SPLIT_DIR / bench / name).item() == load_dict(SPLIT_DIR / bench / name)
