import json
import os
import shutil
import threading
import time

import numpy as np
import pytest
import torch

from avcil.data.clips import ArrayClipSet
from avcil.fileio import sha256_file
from avcil.model.head import FusionHead, HeadConfig
from avcil.modeldir import ModelDir, ModelDirError
from avcil.model.memory import ClassExemplars
from avcil.modeldir.confined import Confined
from avcil.modeldir.schema import SEAL, seal_of
from support.models import FEATURES, small_model

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

    def crash(*args, **kwargs):
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


def test_a_corrupt_current_version_falls_back_to_the_last_good_one(tmp_path):
    head, memory, classes = small_model()
    model = ModelDir(tmp_path / "m")
    model.commit(head, memory, classes, FEATURES)
    model.commit(head, memory, classes, FEATURES)
    path = tmp_path / "m" / "versions" / "v0002" / "head.pt"
    path.write_bytes(path.read_bytes()[:50])
    with pytest.warns(UserWarning, match="v0002.*checksum mismatch.*last good version v0001"):
        loaded = model.load()
    assert loaded.version == "v0001" and "v0002" in loaded.refused
    with pytest.raises(ModelDirError, match="checksum mismatch"):
        model.load("v0002")  # asked for by name: no substitute
    rows = {r["version"]: r for r in model.describe_versions()}
    assert rows["v0001"]["ok"] and not rows["v0002"]["ok"] and rows["v0002"]["current"]


def test_rollback_goes_to_the_previous_good_version_and_forward_again(tmp_path):
    head, memory, classes = small_model()
    model = ModelDir(tmp_path / "m")
    for _ in range(3):
        model.commit(head, memory, classes, FEATURES)
    (tmp_path / "m" / "versions" / "v0002" / "head.pt").write_bytes(b"damaged")
    assert model.rollback() == "v0001"  # v0002 does not verify: skipped
    assert model.current() == "v0001" and model.load().version == "v0001"
    assert model.rollback("v0003") == "v0003"
    with pytest.raises(ModelDirError, match="checksum mismatch"):
        model.rollback("v0002")
    with pytest.raises(ModelDirError, match="no such version"):
        model.load("v0009")


def in_another_thread(work):
    """What `work()` returns or raises, run in a thread of its own (the lock is re-entrant within a thread only)."""
    outcome = []

    def run():
        try:
            outcome.append(work())
        except Exception as error:  # noqa: BLE001 - handed back to the test
            outcome.append(error)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(60)
    return outcome[0]


def test_a_second_writer_is_refused_while_one_holds_the_lock_whatever_is_removed(tmp_path):
    head, memory, classes = small_model()
    model = ModelDir(tmp_path / "m")
    model.commit(head, memory, classes, FEATURES)
    assert not (tmp_path / "m" / ".lock").exists()  # the lock is the folder's own: no file to remove
    with model.writer():
        for path in (tmp_path / "m").iterdir():  # whatever a user or a script removes meanwhile
            if path.name != "versions":
                shutil.rmtree(path) if path.is_dir() else path.unlink()
        refused = in_another_thread(lambda: ModelDir(tmp_path / "m").commit(head, memory, classes, FEATURES))
        assert isinstance(refused, ModelDirError) and "being written by another process" in str(refused)
        assert model.commit(head, memory, classes, FEATURES) == "v0002"  # the holder itself may commit
    assert in_another_thread(lambda: ModelDir(tmp_path / "m").commit(head, memory, classes, FEATURES)) == "v0003"


def commit_forever(root: str, ready) -> None:
    """A writer that commits until it is killed (runs in a child process)."""
    head, memory, classes = small_model()
    model = ModelDir(root)
    ready.set()
    while True:
        model.commit(head, memory, classes, FEATURES)


def test_killing_a_writer_at_random_moments_never_leaves_a_partial_version(tmp_path):
    import multiprocessing
    import random
    import signal

    head, memory, classes = small_model()
    model = ModelDir(tmp_path / "m")
    model.commit(head, memory, classes, FEATURES)
    # Children fork from a server that has imported torch once, so that each kill costs milliseconds, not seconds.
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["avcil.modeldir", "avcil.data.clips"])
    rng = random.Random(0)
    for _ in range(30):
        before = model.current()
        ready = context.Event()
        writer = context.Process(target=commit_forever, args=(str(tmp_path / "m"), ready))
        writer.start()
        assert ready.wait(60)
        time.sleep(rng.uniform(0.0, 0.1))
        os.kill(writer.pid, signal.SIGKILL)
        writer.join()
        loaded = model.load()
        assert loaded.version >= before and not loaded.refused  # the newest version is whole
        assert all(row["ok"] for row in model.describe_versions())  # and so is every visible one
    with model.writer():  # the next writer clears what killed ones left aside
        hidden = [p.name for p in (tmp_path / "m").rglob(".*")]
        stored = {p.name for p in (tmp_path / "m" / "exemplars").iterdir()}
    assert hidden == []
    assert stored == {e["file"] for v in model.list_versions() for e in model.manifest(v)["exemplars"]}
    assert len(model.list_versions()) > 2  # kills came after commits too: the test did reach the writes


def learn_one_more(model: ModelDir, rng_seed: int = 1) -> str:
    """As field learning does: the current version plus one class, the memory making room for it."""
    loaded = model.load()
    rng = np.random.default_rng(rng_seed)
    label = loaded.head.num_classes
    clips = ArrayClipSet([f"n{i}" for i in range(4)], np.full(4, label), rng.normal(size=(4, 5)).astype(np.float32),
                         rng.normal(size=(4, 2, 3, 4)).astype(np.float32))
    loaded.memory.update(clips, {label: np.arange(4)})
    loaded.head.add_classes(1)
    return model.commit(loaded.head, loaded.memory, loaded.manifest["classes"] + [{"name": f"c{label}", "step": 1}],
                        FEATURES)


def test_versions_share_exemplar_files_and_a_new_class_writes_only_its_own(tmp_path):
    head, memory, classes = small_model(classes=3, budget=6)
    model = ModelDir(tmp_path / "m")
    model.commit(head, memory, classes, FEATURES)
    files_before = sorted(p.name for p in (tmp_path / "m" / "exemplars").iterdir())
    assert len(files_before) == 3  # one file per class
    assert learn_one_more(model) == "v0002"
    files_after = sorted(p.name for p in (tmp_path / "m" / "exemplars").iterdir())
    assert set(files_before) < set(files_after) and len(files_after) == 4  # the old classes' files are reused
    v1, v2 = model.load("v0001"), model.load("v0002")
    assert {c: len(e.ids) for c, e in v1.memory.classes.items()} == {0: 2, 1: 2, 2: 2}
    assert {c: len(e.ids) for c, e in v2.memory.classes.items()} == {0: 1, 1: 1, 2: 1, 3: 1}
    for c in range(3):  # truncation keeps the first exemplars, bit for bit
        assert v2.memory.classes[c].ids == v1.memory.classes[c].ids[:1]
        np.testing.assert_array_equal(v2.memory.classes[c].visual, v1.memory.classes[c].visual[:1])
    assert "memory.npz" not in os.listdir(tmp_path / "m" / "versions" / "v0002")


def test_a_damaged_exemplar_file_costs_its_classes_for_learning_not_the_version(tmp_path):
    head, memory, classes = small_model()
    model = ModelDir(tmp_path / "m")
    model.commit(head, memory, classes, FEATURES)
    learn_one_more(model)
    shared = model.manifest("v0002")["exemplars"][0]["file"]
    path = tmp_path / "m" / "exemplars" / shared
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ModelDirError, match=f"exemplars of 'c0' in v0002 are damaged .*{shared}: checksum mismatch"
                                            f".*avcil model repair --model"):
        model.load()  # both versions list the file: learning on either would lose class c0's exemplars
    assert model.load(with_memory=False).version == "v0002"  # the recognizer does not need the memory
    rows = model.describe_versions()
    assert all(r["ok"] for r in rows) and rows[1]["serving"]
    assert [[d["class"] for d in r["exemplars_damaged"]] for r in rows] == [["c0"], ["c0"]]
    repaired = model.repair()
    assert repaired == {"version": "v0003", "parent": "v0002", "dropped": ["c0"], "refused": {}}
    loaded = model.load()  # learning can go on: every class but c0 keeps its exemplars, the head is v0002's
    assert sorted(loaded.memory.classes) == [1, 2, 3] and loaded.class_names == ["c0", "c1", "c2", "c3"]
    torch.testing.assert_close(loaded.head.state_dict(), model.load("v0002", with_memory=False).head.state_dict())
    assert learn_one_more(model) == "v0004"
    assert model.repair()["version"] is None  # nothing left to repair


def test_only_files_a_writer_staged_are_removed_by_the_next_writer(tmp_path, monkeypatch):
    head, memory, classes = small_model()
    model = ModelDir(tmp_path / "m")
    model.commit(head, memory, classes, FEATURES)
    folder = tmp_path / "m" / "exemplars"
    listed = sorted(p.name for p in folder.iterdir())
    planted = {folder / ("0" * 64 + ".npz"): b"put here by hand", folder / "notes.txt": b"mine"}
    for path, data in planted.items():
        path.write_bytes(data)
    real_rename = Confined.rename

    def crash_at_the_version_rename(self, source, target):
        if target.startswith("versions/"):
            raise OSError("simulated power loss")
        real_rename(self, source, target)

    # A writer that dies after writing a changed class's exemplar file, before its version is renamed into place.
    loaded = model.load()
    loaded.memory.classes[0] = ClassExemplars(["changed"] + loaded.memory.classes[0].ids[1:],
                                              loaded.memory.classes[0].audio, loaded.memory.classes[0].visual)
    monkeypatch.setattr(Confined, "rename", crash_at_the_version_rename)
    with pytest.raises(OSError, match="power loss"):
        model.commit(loaded.head, loaded.memory, classes, FEATURES)
    monkeypatch.undo()
    assert len(list(folder.iterdir())) == len(listed) + len(planted) + 1  # its exemplar file was left behind
    with model.writer():
        pass
    assert sorted(p.name for p in folder.iterdir()) == sorted(listed + [p.name for p in planted])
    assert all(path.read_bytes() == data for path, data in planted.items())  # never written, never removed
    assert model.load().memory is not None and not (tmp_path / "m" / ".staged").exists()


def test_a_format_1_version_with_its_own_memory_file_still_loads(tmp_path):
    head, memory, classes = small_model()
    model = ModelDir(tmp_path / "m")
    model.commit(head, memory, classes, FEATURES)
    folder = tmp_path / "m" / "versions" / "v0001"
    # Rewrite it as avcil 0.1 wrote versions: the whole memory in memory.npz, listed with its sha256.
    np.savez(folder / "memory.npz", **memory.to_arrays())
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["format"] = 1
    del manifest["exemplars"], manifest[SEAL]  # avcil 0.1 wrote no seal
    manifest["files"]["memory.npz"] = sha256_file(folder / "memory.npz")
    (folder / "manifest.json").write_text(json.dumps(manifest))
    shutil.rmtree(tmp_path / "m" / "exemplars")
    loaded = model.load()
    assert {c: e.ids for c, e in loaded.memory.classes.items()} == {c: e.ids for c, e in memory.classes.items()}
    assert learn_one_more(model) == "v0002"  # and learning on top of it writes the shared files
    assert len(list((tmp_path / "m" / "exemplars").iterdir())) == 4


def test_a_manifest_naming_a_file_outside_the_model_dir_is_refused_and_the_last_good_version_loads(tmp_path):
    head, memory, classes = small_model()
    model = ModelDir(tmp_path / "m")
    model.commit(head, memory, classes, FEATURES)
    model.commit(head, memory, classes, FEATURES)
    manifest_path = tmp_path / "m" / "versions" / "v0002" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["exemplars"][0]["file"] = "../../outside.npz"
    manifest[SEAL] = seal_of(manifest)  # a hostile manifest, sealed again: refused for what it names
    manifest_path.write_text(json.dumps(manifest))
    with pytest.warns(UserWarning, match="v0002.*never produces.*last good version v0001"):
        assert model.load().version == "v0001"


def test_a_current_pointer_outside_the_model_dir_is_refused_and_the_newest_good_version_loads(tmp_path):
    head, memory, classes = small_model()
    model = ModelDir(tmp_path / "m")
    model.commit(head, memory, classes, FEATURES)
    (tmp_path / "x").mkdir()
    (tmp_path / "m" / "CURRENT").write_text("../../x")
    with pytest.warns(UserWarning, match="CURRENT.*not a version.*last good version v0001"):
        assert model.load().version == "v0001"
    with pytest.raises(ModelDirError, match="not a version name"):
        model.load("../v0001")


def old_style_version(root, trained_by_gradient: bool) -> tuple[ModelDir, FusionHead]:
    """A version as avcil wrote it before the head config recorded the fusion part: an analytic readout of the
    pooled features beside the fusion part's weights, a training record, no `fusion` key. With the head it holds."""
    from avcil.model.readout import readout_spec

    head, memory, classes = small_model()
    head.set_readout(readout_spec("analytic", expansion=16, per_modality=False))  # as specs were then
    audio, visual = torch.randn(12, 5), torch.randn(12, 2, 3, 4)
    head.readout.accumulate(head.readout_inputs(audio, visual), torch.arange(12) % 3)
    head.readout.solve()
    terms = [{"type": "CrossEntropy"}] if trained_by_gradient else []
    model = ModelDir(root)
    model.commit(head, memory, classes, FEATURES, extra={"training": {"method": {
        "name": "analytic", "classifier": "analytic", "terms": terms}}})
    path = root / "versions" / "v0001" / "manifest.json"
    manifest = json.loads(path.read_text())
    del manifest["head"]["config"]["fusion"]
    manifest[SEAL] = seal_of(manifest)
    path.write_text(json.dumps(manifest))
    return model, head.eval()


def decisions(head: FusionHead, audio: torch.Tensor, visual: torch.Tensor) -> tuple:
    from avcil.runtime.decision import HeadScores

    with torch.no_grad():
        ranking, scores = HeadScores(head)(audio, visual)
        return head(audio, visual).logits, ranking, scores


def test_a_version_from_before_the_fusion_flag_loads_without_the_untrained_fusion_part_and_decides_the_same(tmp_path):
    from avcil.runtime.field import check_new_class, learn_class

    from avcil.modeldir.statistics import read_grams

    model, _ = old_style_version(tmp_path / "m", trained_by_gradient=False)
    # The head as the loader made it before: the recorded config, fusion part included, and the stored state (with
    # the Gram matrix, which this format keeps in statistics files).
    before = FusionHead(HeadConfig(**model.manifest("v0001")["head"]["config"]), num_classes=3)
    state = torch.load(tmp_path / "m" / "versions" / "v0001" / "head.pt", weights_only=True)
    before.load_state_dict({**state, **read_grams(model.files, model.manifest("v0001")["gram"], before)})
    loaded = model.load()
    assert before.has_fusion and not loaded.head.has_fusion
    assert all(name.startswith("readout.") for name in loaded.head.state_dict())
    audio, visual = torch.randn(6, 5), torch.randn(6, 2, 3, 4)
    (logits, ranking, scores), (old_logits, old_ranking, old_scores) = (decisions(h.eval(), audio, visual)
                                                                        for h in (loaded.head, before))
    assert torch.equal(logits, old_logits) and np.array_equal(ranking, old_ranking)
    assert scores.keys() == old_scores.keys() and all(np.array_equal(scores[k], old_scores[k]) for k in scores)
    with pytest.raises(ModelDirError, match="never trained by gradient"):
        check_new_class(loaded, "c3", "avcil", model.root)
    rng = np.random.default_rng(2)
    learn_class(model.root, "c3", rng.normal(size=(3, 5)).astype(np.float32),
                rng.normal(size=(3, 2, 3, 4)).astype(np.float32), progress=False, log=lambda line: None)
    assert model.manifest("v0002")["head"]["config"]["fusion"] is False  # committed as a new-style version
    state = torch.load(tmp_path / "m" / "versions" / "v0002" / "head.pt", weights_only=True)
    assert all(name.startswith("readout.") for name in state) and model.load().head.num_classes == 4


def test_a_version_from_before_the_fusion_flag_trained_by_gradient_keeps_its_fusion_part(tmp_path):
    model, before = old_style_version(tmp_path / "m", trained_by_gradient=True)
    loaded = model.load()
    assert loaded.head.has_fusion
    torch.testing.assert_close(loaded.head.state_dict(), before.state_dict(), rtol=0, atol=0)


def test_a_head_config_whose_fusion_flag_is_not_true_or_false_is_refused(tmp_path):
    head, memory, classes = small_model()
    model = ModelDir(tmp_path / "m")
    model.commit(head, memory, classes, FEATURES)
    path = tmp_path / "m" / "versions" / "v0001" / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["head"]["config"]["fusion"] = "no"
    manifest[SEAL] = seal_of(manifest)
    path.write_text(json.dumps(manifest))
    with pytest.raises(ModelDirError, match="'head.config.fusion' is neither true nor false; this version is corrupt"):
        model.manifest("v0001")
