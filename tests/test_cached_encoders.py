"""Bulk encoding in ONNX Runtime (avcil/export/cached.py): the lite encoders, exported once into the cache, give
torch's features; a later call reuses the export; a damaged export is made again; what cannot run in ONNX Runtime
falls back to torch under 'auto' and is refused when ONNX Runtime is asked for; extraction stores the same
features either way."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from avcil.data.store import open_store
from avcil.export.cached import cache_folder, use_onnxruntime
from avcil.export.onnx import TOLERANCE
from avcil.model.encoders import load_profile
from avcil.train.extract import extract
from support.media import TOY_CLASSES, make_clip


@pytest.fixture(scope="module")
def lite():
    return load_profile("lite")


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """One 3 s clip per toy class at the lite profile's audio rate, in extract's class-per-folder layout."""
    root = tmp_path_factory.mktemp("videos")
    for name, (colour, tone) in TOY_CLASSES.items():
        (root / name).mkdir()
        make_clip(root / name / f"{name}.mp4", colour, tone, seconds=3.0, rate=44100, size="160x120")
    return root


@pytest.fixture
def torch_lite(lite):
    """The module's lite profile, encoding in torch again after the test."""
    lite.runtime = None
    yield lite
    lite.runtime = None


def _inputs(profile, videos):
    paths = sorted(videos.rglob("*.mp4"))
    return tuple(np.stack(part) for part in zip(*(profile.file_inputs(p)[:2] for p in paths)))


def _relative_error(expected: np.ndarray, got: np.ndarray) -> float:
    return float(np.abs(got - expected).max() / np.abs(expected).max())


def test_lite_encodes_in_onnxruntime_as_torch_does_and_is_exported_once(torch_lite, videos, tmp_path):
    audio, visual = _inputs(torch_lite, videos)
    expected = torch_lite.encode_batch(audio, visual)
    assert use_onnxruntime(torch_lite, tmp_path)
    folder = cache_folder(torch_lite, tmp_path)
    written = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    assert set(written) == {"audio.onnx", "visual.onnx"}
    got = torch_lite.encode_batch(audio, visual)
    for name, e, g in zip(("audio", "visual"), expected, got):
        assert g.shape == e.shape and _relative_error(e, g) <= TOLERANCE, name
    torch_lite.runtime = None  # as a later process finds it: the export is reused, not made again
    assert use_onnxruntime(torch_lite, tmp_path)
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == written
    assert list(tmp_path.joinpath("onnx").iterdir()) == [folder]  # no staging folder left behind


def test_a_damaged_export_is_made_again(torch_lite, videos, tmp_path):
    audio, visual = _inputs(torch_lite, videos)
    assert use_onnxruntime(torch_lite, tmp_path)
    expected = torch_lite.encode_batch(audio, visual)
    visual_file = cache_folder(torch_lite, tmp_path) / "visual.onnx"
    visual_file.write_bytes(visual_file.read_bytes()[:1000])  # a copy cut short
    torch_lite.runtime = None
    assert use_onnxruntime(torch_lite, tmp_path)
    np.testing.assert_array_equal(torch_lite.encode_batch(audio, visual)[1], expected[1])


def test_torch_is_kept_where_asked_on_a_gpu_and_for_other_profiles(torch_lite, tiny_profile, tmp_path):
    assert not use_onnxruntime(torch_lite, tmp_path, when="torch")
    assert not use_onnxruntime(torch_lite, tmp_path, device="cuda")
    assert not use_onnxruntime(tiny_profile, tmp_path)
    assert torch_lite.runtime is None and tiny_profile.runtime is None
    assert not tmp_path.joinpath("onnx").exists()


def test_an_export_that_cannot_be_written_falls_back_to_torch_unless_onnxruntime_was_asked(torch_lite, tmp_path,
                                                                                          caplog):
    blocked = tmp_path / "cache"
    blocked.write_text("a file where the cache folder should be")
    with caplog.at_level(logging.WARNING):
        assert not use_onnxruntime(torch_lite, blocked)
    assert torch_lite.runtime is None and "encoding in torch" in caplog.text
    with pytest.raises(OSError):
        use_onnxruntime(torch_lite, blocked, when="onnxruntime")


def test_extraction_stores_the_same_features_in_either_runtime(lite, videos, tmp_path, monkeypatch):
    monkeypatch.setenv("AVCIL_CACHE", str(tmp_path / "cache"))
    stores = {}
    for backend in ("torch", "onnxruntime"):
        lite.runtime = None
        summary = extract(videos, tmp_path / backend, profile=lite, backend=backend, progress=False)
        assert summary["extracted"] == len(TOY_CLASSES) and not summary["failures"]
        clips = open_store(tmp_path / backend).clip_set("train", sorted(TOY_CLASSES))
        stores[backend] = dict(zip(clips.ids, zip(*clips.load(range(len(clips.ids))))))
    lite.runtime = None
    assert set(stores["torch"]) == set(stores["onnxruntime"])
    for clip, expected in stores["torch"].items():
        for part, e, g in zip(("audio", "visual"), expected, stores["onnxruntime"][clip]):
            assert _relative_error(e, g) < 2e-3, (clip, part)  # stored in fp16: 1e-3 of the range is its rounding
