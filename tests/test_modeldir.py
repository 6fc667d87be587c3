import json
import os

import numpy as np
import pytest
import torch

from avcil.data.clips import ArrayClipSet
from avcil.model.head import FusionHead, HeadConfig
from avcil.runtime.modeldir import ModelDir, ModelDirError
from avcil.train.memory import ExemplarMemory

FEATURES = {"shape": {"audio_dim": 5, "time": 2, "positions": 3, "visual_dim": 4}, "profile": None}


def small_model(classes=3):
    torch.manual_seed(0)
    head = FusionHead(HeadConfig(5, 4, 6), num_classes=classes)
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(classes), 4)
    clips = ArrayClipSet([f"x{i}" for i in range(len(labels))], labels,
                         rng.normal(size=(len(labels), 5)).astype(np.float32),
                         rng.normal(size=(len(labels), 2, 3, 4)).astype(np.float32))
    memory = ExemplarMemory(6)
    memory.update(clips, {c: np.flatnonzero(labels == c) for c in range(classes)})
    return head, memory, [{"name": f"c{c}", "step": 0} for c in range(classes)]


def test_commit_and_load_round_trip(tmp_path):
    head, memory, classes = small_model()
    model = ModelDir(tmp_path / "m")
    assert model.commit(head, memory, classes, FEATURES) == "v0001"
    loaded = model.load()
    assert loaded.version == "v0001" and loaded.class_names == ["c0", "c1", "c2"]
    audio, visual = torch.randn(2, 5), torch.randn(2, 2, 3, 4)
    torch.testing.assert_close(loaded.head(audio, visual).logits, head.eval()(audio, visual).logits)
    assert {c: e.ids for c, e in loaded.memory.classes.items()} == {c: e.ids for c, e in memory.classes.items()}
    assert model.commit(head, memory, classes, FEATURES) == "v0002"
    assert model.list_versions() == ["v0001", "v0002"] and model.current() == "v0002"


def test_truncated_head_file_is_refused(tmp_path):
    head, memory, classes = small_model()
    model = ModelDir(tmp_path / "m")
    model.commit(head, memory, classes, FEATURES)
    path = tmp_path / "m" / "versions" / "v0001" / "head.pt"
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(ModelDirError, match="head.pt: checksum mismatch"):
        model.load()


def test_a_crash_before_the_rename_leaves_the_last_version_current(tmp_path, monkeypatch):
    head, memory, classes = small_model()
    model = ModelDir(tmp_path / "m")
    model.commit(head, memory, classes, FEATURES)

    def crash(*args):
        raise OSError("simulated power loss")

    monkeypatch.setattr(os, "rename", crash)
    with pytest.raises(OSError, match="power loss"):
        model.commit(head, memory, classes, FEATURES)
    monkeypatch.undo()
    assert model.current() == "v0001" and model.list_versions() == ["v0001"]
    assert not [p for p in (tmp_path / "m" / "versions").iterdir() if p.name.startswith(".")]  # staging removed
    assert model.load().version == "v0001"


def test_bad_inputs_are_refused(tmp_path):
    head, memory, classes = small_model()
    model = ModelDir(tmp_path / "m")
    with pytest.raises(ModelDirError, match="no CURRENT"):
        model.load()
    with pytest.raises(ModelDirError, match="duplicate class names"):
        model.commit(head, memory, [{"name": "c0", "step": 0}] * 3, FEATURES)
    with pytest.raises(ModelDirError, match="2 class names for a head with 3"):
        model.commit(head, memory, classes[:2], FEATURES)
    model.commit(head, memory, classes, FEATURES)
    manifest = tmp_path / "m" / "versions" / "v0001" / "manifest.json"
    manifest.write_text(json.dumps({"files": {}})[:-3])
    with pytest.raises(ModelDirError, match="not valid JSON"):
        model.load()
