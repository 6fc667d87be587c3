"""The feature store: what extraction writes is what training reads, across crashes and reopenings."""

import pickle
import tracemalloc

import numpy as np
import pytest

from avcil.data import store as store_module
from avcil.data.clips import SPLITS, BenchmarkDefaults
from avcil.data.store import FeatureStoreWriter, open_store
from avcil.errors import InvalidInput
from avcil.features import Features, FeatureShape

SHAPE = FeatureShape(audio_dim=6, time=2, positions=4, visual_dim=5)
PROFILE = {"name": "tiny", "sample_rate": 16000, "frames": [8, 224]}
LABELS = ["dog", "cat", "bird", "car"]


def clip(i: int, shape: FeatureShape = SHAPE) -> tuple[str, str, str, Features]:
    """Clip i: its id, label, split and features (distinct values per clip, so mix-ups show)."""
    rng = np.random.default_rng(i)
    features = Features(rng.standard_normal(shape.audio_dim).astype(np.float32),
                        rng.standard_normal(shape.visual).astype(np.float32))
    return f"clip{i:03d}", LABELS[i % len(LABELS)], SPLITS[(i // len(LABELS)) % len(SPLITS)], features


def write(root, clips, chunk_size=4, shape=SHAPE):
    with FeatureStoreWriter(root, shape, PROFILE, chunk_size=chunk_size) as writer:
        for i in clips:
            writer.add(*clip(i, shape))


def assert_holds(store, clips):
    """The store holds exactly these clips, with their labels, splits and features (fp16 on disk)."""
    held = 0
    for split in SPLITS:
        clip_set = store.clip_set(split, LABELS)
        held += len(clip_set.ids)
        order = np.random.default_rng(0).permutation(len(clip_set.ids))
        audio, visual = clip_set.load(order)
        assert audio.dtype == visual.dtype == np.float32
        for row, k in enumerate(order):
            clip_id, label, clip_split, features = clip(int(clip_set.ids[k][4:]))
            assert (clip_split, LABELS[clip_set.labels[k]]) == (split, label)
            np.testing.assert_allclose(audio[row], features.audio, rtol=1e-3, atol=1e-3)
            np.testing.assert_allclose(visual[row], features.visual, rtol=1e-3, atol=1e-3)
    assert held == len(clips)
    assert sorted(i for s in SPLITS for i in store.clip_set(s, LABELS).ids) == sorted(clip(i)[0] for i in clips)


def test_round_trip(tmp_path):
    write(tmp_path / "s", range(30), chunk_size=4)
    store = open_store(tmp_path / "s")
    assert store.shape == SHAPE and store.profile == PROFILE
    assert len(list((tmp_path / "s" / "chunks").glob("*.json"))) == 8  # 30 clips in chunks of 4
    assert_holds(store, range(30))
    audio, visual = store.clip_set("train", LABELS).load([2, 2, 0])  # repeats and any order
    assert audio.shape == (3, 6) and visual.shape == (3, 2, 4, 5)
    np.testing.assert_array_equal(audio[0], audio[1])


def test_resume_after_crash_mid_commit(tmp_path, monkeypatch):
    root = tmp_path / "s"
    writer = FeatureStoreWriter(root, SHAPE, PROFILE, chunk_size=4)
    for i in range(6):
        writer.add(*clip(i))  # 0-3 committed as chunk 0, 4-5 buffered

    def crash(*_):
        raise KeyboardInterrupt

    monkeypatch.setattr(store_module, "write_json", crash)  # dies after chunk 1's arrays, before its index
    with pytest.raises(KeyboardInterrupt):
        for i in range(6, 8):
            writer.add(*clip(i))
    monkeypatch.undo()
    (root / "chunks" / "000002.visual.npy.tmp").write_bytes(b"half a chunk")
    assert sorted(p.name for p in (root / "chunks").iterdir()) == [
        "000000.audio.npy", "000000.json", "000000.visual.npy", "000001.audio.npy", "000001.visual.npy",
        "000002.visual.npy.tmp"]
    assert_holds(open_store(root), range(4))  # only the committed chunk is visible

    resumed = FeatureStoreWriter(root, SHAPE, PROFILE, chunk_size=4)
    assert resumed.done_ids() == {clip(i)[0] for i in range(4)}
    assert sorted(p.name for p in (root / "chunks").iterdir()) == [
        "000000.audio.npy", "000000.json", "000000.visual.npy"]
    with resumed:
        for i in range(10):
            if clip(i)[0] not in resumed.done_ids():
                resumed.add(*clip(i))
    assert_holds(open_store(root), range(10))


def test_uncommitted_buffer_is_lost_and_redone(tmp_path):
    root = tmp_path / "s"
    writer = FeatureStoreWriter(root, SHAPE, PROFILE, chunk_size=4)
    for i in range(6):
        writer.add(*clip(i))
    del writer  # the process died: no close
    assert FeatureStoreWriter(root, SHAPE, PROFILE).done_ids() == {clip(i)[0] for i in range(4)}


def test_refuses_other_shape_profile_or_directory(tmp_path):
    root = tmp_path / "s"
    write(root, range(3))
    other_shape = FeatureShape(audio_dim=6, time=2, positions=4, visual_dim=7)
    with pytest.raises(ValueError, match=str(root)):
        FeatureStoreWriter(root, other_shape, PROFILE)
    with pytest.raises(ValueError, match=str(root)):
        FeatureStoreWriter(root, SHAPE, {**PROFILE, "sample_rate": 11430})
    FeatureStoreWriter(root, SHAPE, {**PROFILE, "frames": (8, 224)})  # the same profile, as a tuple
    with pytest.raises(ValueError, match=r"holds features of the tiny v1 .* these are tiny v2 .*new folder") as e:
        FeatureStoreWriter(root, SHAPE, {**PROFILE, "version": 2})
    assert "\n" not in str(e.value)

    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "cat.jpg").write_bytes(b"")
    with pytest.raises(ValueError, match="photos"):
        FeatureStoreWriter(tmp_path / "photos", SHAPE, PROFILE)


def test_bad_clips_are_refused(tmp_path):
    root = tmp_path / "s"
    with FeatureStoreWriter(root, SHAPE, PROFILE, chunk_size=2) as writer:
        writer.add(*clip(0))
        with pytest.raises(ValueError, match="clip000"):
            writer.add(*clip(0))  # still in the buffer
        writer.add(*clip(1))
        with pytest.raises(ValueError, match="clip001"):
            writer.add(*clip(1))  # committed
        clip_id, label, _, features = clip(2)
        with pytest.raises(ValueError, match="split 'training'"):
            writer.add(clip_id, label, "training", features)
        with pytest.raises(ValueError, match="clip002.*expected audio \\(6,\\)"):
            writer.add(clip_id, label, "train", Features(features.audio[:5], features.visual))
    with pytest.raises(ValueError, match="clip000"):
        FeatureStoreWriter(root, SHAPE, PROFILE).add(*clip(0))


@pytest.mark.parametrize("damage", ["missing", "truncated"])
def test_damaged_chunk_is_named(tmp_path, damage):
    root = tmp_path / "s"
    write(root, range(8), chunk_size=4)
    victim = root / "chunks" / "000001.visual.npy"
    if damage == "missing":
        victim.unlink()
    else:
        victim.write_bytes(victim.read_bytes()[:-100])
    with pytest.raises((FileNotFoundError, ValueError), match="000001.visual.npy"):
        open_store(root)


def test_reads_lazily(tmp_path):
    shape = FeatureShape(audio_dim=32, time=4, positions=49, visual_dim=64)
    root = tmp_path / "s"
    write(root, range(200), chunk_size=16, shape=shape)
    on_disk = sum(p.stat().st_size for p in (root / "chunks").glob("*.npy"))
    open_store(root).clip_set("val", LABELS).load([0])  # numpy's first memory map costs ~1 MB of imports, once

    tracemalloc.start()
    store = open_store(root)
    train = store.clip_set("train", LABELS)
    audio, visual = train.load([5, 40])
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < on_disk / 20, f"opening the store and loading 2 clips took {peak} bytes; the store is {on_disk}"

    # The features come from the files when loaded, not from a copy made when the store was opened.
    chunk, row = int(train.chunk_of[5]), int(train.row_of[5])
    on_file = np.load(root / "chunks" / f"{chunk:06d}.visual.npy", mmap_mode="r+")
    on_file[row] = 7.0
    on_file.flush()
    assert np.all(train.load([5])[1] == 7.0)


def test_pickles_as_paths(tmp_path):
    write(tmp_path / "s", range(12))
    train = open_store(tmp_path / "s").clip_set("train", LABELS)
    data = pickle.dumps(train)
    assert len(data) < 3000  # ids and indices, not features
    copy = pickle.loads(data)
    for got, want in zip(copy.load([0, 3]), train.load([0, 3])):
        np.testing.assert_array_equal(got, want)


def test_benchmark(tmp_path):
    root = tmp_path / "s"
    write(root, range(24))
    store = open_store(root)
    assert store.class_names() == sorted(LABELS)

    bench = store.benchmark(2, defaults=BenchmarkDefaults(memory_budget=10))
    assert bench.name == "s" and bench.class_names == sorted(LABELS)
    assert bench.steps == [[0, 1], [2, 3]] and bench.defaults.given() == {"memory_budget": 10}
    assert bench.shape == SHAPE and bench.profile == PROFILE
    for split in SPLITS:
        clips = [clip(i) for i in range(24) if clip(i)[2] == split]
        assert sorted(bench.splits[split].ids) == sorted(c[0] for c in clips)
        labels = dict(zip(bench.splits[split].ids, bench.splits[split].labels))
        assert all(bench.class_names[labels[clip_id]] == label for clip_id, label, _, _ in clips)

    ordered = store.benchmark(4, class_order=LABELS, name="animals")
    assert ordered.name == "animals" and ordered.steps == [[0], [1], [2], [3]]
    test_set = ordered.splits["test"]
    assert [LABELS[k] for k in test_set.labels] == [clip(int(i[4:]))[1] for i in test_set.ids]
    with pytest.raises(ValueError, match="car"):
        store.clip_set("train", ["dog", "cat", "bird"])
    with pytest.raises(ValueError, match="4 classes cannot be split into 3"):
        store.benchmark(3)


def test_shards_merged_into_a_store_read_as_one_store_and_no_array_is_copied(tmp_path):
    root = tmp_path / "store"
    write(root, [])
    write(store_module.shard_root(root, 0, 2), range(0, 20, 2))
    write(store_module.shard_root(root, 1, 2), range(1, 20, 2))
    assert store_module.merge_shards(root) == 20
    assert store_module.merge_shards(root) == 0  # idempotent: a rerun merges only what is new
    assert not list((root / "chunks").glob("*.npy"))
    assert_holds(open_store(root), range(20))
    write(root, range(20, 23))  # one process adds to the merged store as to any other
    assert_holds(open_store(root), range(23))


def test_a_shard_of_other_features_or_a_clip_twice_is_refused_by_the_merge(tmp_path):
    root = tmp_path / "store"
    write(root, range(3))
    write(store_module.shard_root(root, 0, 1), [2])
    with pytest.raises(InvalidInput, match="clip002.*already has"):
        store_module.merge_shards(root)
    other = tmp_path / "other"
    write(other, [])
    write(store_module.shard_root(other, 0, 1), [0], shape=FeatureShape(7, 2, 4, 5))
    with pytest.raises(InvalidInput, match="rank-000-of-001.*does not belong"):
        store_module.merge_shards(other)
