"""The analytic readout's Gram matrix in shared statistics files (avcil/modeldir/statistics.py): a field class
stores the rows it added, every version loads the matrix it was committed with, bit for bit, older formats still
load, and a damaged statistics file refuses its version in one line."""

import io
import json

import numpy as np
import pytest
import torch

from avcil.fileio import sha256_file
from avcil.model.readout import readout_spec
from avcil.modeldir import ModelDir, ModelDirError
from avcil.modeldir import statistics
from avcil.modeldir.confined import Confined
from avcil.modeldir.schema import SEAL, seal_of
from avcil.runtime.background import learn_background
from avcil.runtime.field import learn_class
from support.models import FEATURES, small_model

WIDTH = 64  # the expansion of these tests' readouts: small, so that the chain's bounds are reached in a few classes


def features(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(count, 5)).astype(np.float32), rng.normal(size=(count, 2, 3, 4)).astype(np.float32)


def analytic_model(root, width: int = WIDTH, per_modality: bool = False) -> ModelDir:
    """v0001: three classes learnt by an analytic readout of `width` (as `avcil train --method analytic` leaves one;
    by default without its per-modality readouts, so that one chain is all a version lists)."""
    head, memory, classes = small_model(budget=40)  # room for a dozen more classes
    head.set_readout(readout_spec("analytic", expansion=width, per_modality=per_modality))
    audio, visual = (torch.from_numpy(part) for part in features(12, seed=0))
    head.readout.accumulate(head.readout_inputs(audio, visual), torch.arange(12) % 3)
    head.readout.solve()
    model = ModelDir(root)
    model.commit(head, memory, classes, FEATURES)
    return model


def learn(model: ModelDir, label: str, clips: int = 4, seed: int = 1) -> str:
    """A class learnt in the field, as `avcil learn` learns it once its clips are encoded."""
    return learn_class(model.root, label, *features(clips, seed), progress=False, log=lambda line: None)["version"]


@pytest.fixture
def committed_grams(monkeypatch) -> dict:
    """{version: the Gram matrix the committed head held in memory}, filled as versions are committed."""
    grams = {}
    commit = ModelDir.commit

    def commit_and_keep(self, head, *args, **kwargs):
        version = commit(self, head, *args, **kwargs)
        grams[version] = head.readout.gram.clone()
        grams[version, "parts"] = {name: part.gram.clone() for name, part in head.readout.parts.items()}
        return version

    monkeypatch.setattr(ModelDir, "commit", commit_and_keep)
    return grams


def gram_of(model: ModelDir, version: str) -> torch.Tensor:
    return model.load(version, with_memory=False).head.readout.gram


def stored_files(model: ModelDir) -> set[str]:
    return {path.name for path in model.statistics.iterdir()}


def test_a_field_class_stores_its_rows_and_every_version_loads_its_gram_bit_for_bit(tmp_path, committed_grams):
    model = analytic_model(tmp_path / "m")
    base = model.manifest("v0001")["gram"]["base"]
    assert stored_files(model) == {base}
    for n, label in enumerate(["f1", "f2", "f3"]):
        learn(model, label, clips=2 + n, seed=n + 1)
    learn_background(model.root, *features(5, seed=9), force=True)
    chains = [model.manifest(version)["gram"] for version in model.list_versions()]
    assert [chain["base"] for chain in chains] == [base] * 5
    assert [[row["count"] for row in chain["rows"]] for chain in chains] == [[], [2], [2, 3], [2, 3, 4], [2, 3, 4, 5]]
    assert len(stored_files(model)) == 5  # the base and one row file per version: no version wrote the matrix again
    for version in model.list_versions():
        head_file = model.root / "versions" / version / "head.pt"
        assert not any(key.endswith(".gram") for key in torch.load(head_file, weights_only=True))
        # Rebuilt as learning added the rows (float64 products rounded into the float32 matrix, in the same order),
        # on the machine and BLAS that learnt them: equal, not merely close.
        assert torch.equal(gram_of(model, version), committed_grams[version]), version
    assert torch.equal(model.load().head.readout.weight, ModelDir(model.root).load().head.readout.weight)


def test_each_per_modality_readout_keeps_a_chain_of_its_own_and_loads_its_gram_bit_for_bit(tmp_path,
                                                                                            committed_grams):
    model = analytic_model(tmp_path / "m", per_modality=True)
    learn(model, "f1", clips=2, seed=1)
    learn_background(model.root, *features(3, seed=9), force=True)
    for version in model.list_versions():
        entry = model.manifest(version)["gram"]
        assert sorted(entry["parts"]) == ["audio", "video"]
        assert [[row["count"] for row in one["rows"]] for one in [entry, *entry["parts"].values()]] == \
            [{"v0001": [], "v0002": [2], "v0003": [2, 3]}[version]] * 3
        loaded = model.load(version, with_memory=False).head.readout
        assert torch.equal(loaded.gram, committed_grams[version])
        for name, gram in committed_grams[version, "parts"].items():
            assert torch.equal(loaded.parts[name].gram, gram), (version, name)
    assert len(stored_files(model)) == 3 * 3  # a base and two row files for each of the three readouts
    head_file = model.root / "versions" / "v0003" / "head.pt"
    assert not any(key.endswith(".gram") for key in torch.load(head_file, weights_only=True))


def test_rollback_after_several_field_classes_serves_each_versions_own_gram(tmp_path, committed_grams):
    model = analytic_model(tmp_path / "m")
    for n, label in enumerate(["f1", "f2", "f3"]):
        learn(model, label, seed=n + 1)
    assert model.rollback("v0002") == "v0002"
    loaded = model.load()
    assert loaded.version == "v0002" and loaded.class_names == ["c0", "c1", "c2", "f1"]
    assert torch.equal(loaded.head.readout.gram, committed_grams["v0002"])
    assert not torch.equal(committed_grams["v0002"], committed_grams["v0004"])
    assert learn(model, "g", seed=7) == "v0005"  # learning goes on from v0002's chain, not v0004's
    assert [row["file"] for row in model.manifest("v0005")["gram"]["rows"]][:1] == \
        [row["file"] for row in model.manifest("v0002")["gram"]["rows"]]
    assert len(model.manifest("v0005")["gram"]["rows"]) == 2
    for version in model.list_versions():
        assert torch.equal(gram_of(model, version), committed_grams[version]), version


def test_the_chain_starts_a_new_base_past_its_row_share_or_its_length(tmp_path, monkeypatch):
    model = analytic_model(tmp_path / "m")  # rows since a base: at most a quarter of 64, 16
    for n in range(5):
        learn(model, f"f{n}", clips=5, seed=n + 1)
    counts = [[row["count"] for row in model.manifest(v)["gram"]["rows"]] for v in model.list_versions()]
    assert counts == [[], [5], [5, 5], [5, 5, 5], [], [5]]
    bases = [model.manifest(v)["gram"]["base"] for v in model.list_versions()]
    assert bases[3] == bases[0] != bases[4] == bases[5]
    monkeypatch.setattr(statistics, "CHAIN_FILES", 2)
    learn(model, "g1", clips=1, seed=8)
    learn(model, "g2", clips=1, seed=9)
    assert [row["count"] for row in model.manifest("v0007")["gram"]["rows"]] == [5, 1]
    assert model.manifest("v0008")["gram"]["rows"] == []  # a third row file would pass CHAIN_FILES


def test_sums_from_elsewhere_and_a_new_readout_store_a_new_base(tmp_path):
    model = analytic_model(tmp_path / "m")
    loaded = model.load()
    readout = loaded.head.readout
    assert readout.gram_rows == [] and readout.gram_stored == model.manifest("v0001")["gram"]
    audio, visual = (torch.from_numpy(part) for part in features(3, seed=4))
    # Under torchrun the increments are summed over the processes before they are added: no rows of its own.
    readout.add(readout.increments(loaded.head.readout_inputs(audio, visual), torch.zeros(3)))
    assert readout.gram_rows is None
    model.commit(loaded.head, loaded.memory, loaded.manifest["classes"], FEATURES)
    assert model.manifest("v0002")["gram"]["rows"] == [] and len(stored_files(model)) == 2
    torch.testing.assert_close(gram_of(model, "v0002"), readout.gram, rtol=0, atol=0)
    loaded.head.set_readout(readout_spec("analytic", expansion=WIDTH))  # a readout built afresh
    assert loaded.head.readout.gram_stored is None and loaded.head.readout.gram_rows is None


def test_a_head_without_an_analytic_readout_lists_no_statistics(tmp_path):
    head, memory, classes = small_model()
    model = ModelDir(tmp_path / "m")
    model.commit(head, memory, classes, FEATURES)
    head.set_readout(readout_spec("mean"))
    model.commit(head, memory, classes, FEATURES)
    assert [model.manifest(v)["gram"] for v in ("v0001", "v0002")] == [None, None]
    assert model.manifest("v0002")["format"] == 3 and not model.statistics.exists()


def as_format_2(model: ModelDir, version: str) -> None:
    """Rewrite a version as avcil wrote format 2: the whole head state, Gram matrix included, in head.pt."""
    folder = model.root / "versions" / version
    buffer = io.BytesIO()
    torch.save(model.load(version, with_memory=False).head.state_dict(), buffer)
    (folder / "head.pt").write_bytes(buffer.getvalue())
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["format"] = 2
    del manifest["gram"]
    manifest["files"]["head.pt"] = sha256_file(folder / "head.pt")
    manifest[SEAL] = seal_of(manifest)
    (folder / "manifest.json").write_text(json.dumps(manifest))


def test_a_format_2_version_with_the_gram_in_its_head_file_still_loads_and_learns_on(tmp_path, committed_grams):
    model = analytic_model(tmp_path / "m")
    as_format_2(model, "v0001")
    for path in model.statistics.iterdir():
        path.unlink()  # nothing but head.pt holds the matrix now
    loaded = model.load()
    assert loaded.manifest["format"] == 2 and torch.equal(loaded.head.readout.gram, committed_grams["v0001"])
    assert loaded.head.readout.gram_stored is None  # not stored as statistics: the next version writes a base
    learn(model, "f1")
    assert model.manifest("v0002")["gram"]["rows"] == [] and len(stored_files(model)) == 1
    assert torch.equal(gram_of(model, "v0002"), committed_grams["v0002"])
    assert learn(model, "f2", seed=2) == "v0003" and len(model.manifest("v0003")["gram"]["rows"]) == 1


def test_a_damaged_statistics_file_refuses_its_version_in_one_line_and_the_older_one_serves(tmp_path):
    model = analytic_model(tmp_path / "m")
    learn(model, "f1")
    learn(model, "f2", seed=2)
    row_file = model.manifest("v0003")["gram"]["rows"][-1]["file"]  # v0003's own rows
    path = model.statistics / row_file
    path.write_bytes(path.read_bytes()[:100])
    with pytest.warns(UserWarning, match=f"v0003.*{row_file}: checksum mismatch.*last good version v0002"):
        assert model.load().version == "v0002"
    with pytest.raises(ModelDirError, match=f"statistics/{row_file}: checksum mismatch"):
        model.load("v0003")
    rows = {row["version"]: row for row in model.describe_versions()}
    assert not rows["v0003"]["ok"] and row_file in rows["v0003"]["note"] and rows["v0002"]["serving"]
    base = model.statistics / model.manifest("v0001")["gram"]["base"]
    base.unlink()  # shared by every version: none loads
    with pytest.raises(ModelDirError, match="no loadable version.*listed in the manifest of v0001 but missing"):
        model.load()


def test_a_statistics_file_that_matches_its_name_but_not_its_entry_is_refused(tmp_path):
    # A hostile model dir: a well-formed .npy of the wrong shape, named by its own sha256 and listed by a manifest
    # sealed again; refused from its header, before its data is read.
    model = analytic_model(tmp_path / "m")
    learn(model, "f1")
    buffer = io.BytesIO()
    np.save(buffer, np.zeros((3, 5), np.float64))
    name = f"{__import__('hashlib').sha256(buffer.getvalue()).hexdigest()}.npy"
    (model.statistics / name).write_bytes(buffer.getvalue())
    manifest_path = model.root / "versions" / "v0002" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["gram"]["rows"][0]["file"] = name
    manifest[SEAL] = seal_of(manifest)
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(ModelDirError, match=rf"{name}: does not hold the readout statistics its manifest lists "
                                            rf"\(holds float64 \[3, 5\], the manifest says float32 \[4, 64\]\); "
                                            rf"refusing v0002"):
        model.load("v0002")


@pytest.mark.parametrize("gram, reason", [
    ("x", "'gram' is not"), ({"base": "../../outside.npy", "rows": []}, "never produces"),
    ({"base": "a" * 64 + ".npz", "rows": []}, "never produces"),
    ({"base": "a" * 64 + ".npy", "rows": [{"file": "a" * 64 + ".npy", "count": 0}]}, "'gram.rows' entry"),
    (None, "'gram' is missing")])
def test_a_gram_entry_of_the_wrong_shape_refuses_the_version(tmp_path, gram, reason):
    model = analytic_model(tmp_path / "m")
    manifest_path = model.root / "versions" / "v0001" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["gram"] = gram
    manifest[SEAL] = seal_of(manifest)
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(ModelDirError, match=f"{reason}.*this version is corrupt"):
        model.load()


def test_statistics_a_killed_writer_left_are_removed_by_the_next_writer_and_listed_ones_kept(tmp_path, monkeypatch):
    model = analytic_model(tmp_path / "m")
    learn(model, "f1")
    listed = stored_files(model)
    planted = model.statistics / ("0" * 64 + ".npy")
    planted.write_bytes(b"put here by hand")
    real_rename = Confined.rename

    def crash_at_the_version_rename(self, source, target):
        if target.startswith("versions/"):
            raise OSError("simulated power loss")
        real_rename(self, source, target)

    monkeypatch.setattr(Confined, "rename", crash_at_the_version_rename)
    with pytest.raises(ModelDirError, match="'f2' not learnt.*power loss"):
        learn(model, "f2", seed=2)
    monkeypatch.undo()
    assert len(stored_files(model)) == len(listed) + 2  # its row file was left behind
    with model.writer():
        pass
    assert stored_files(model) == listed | {planted.name} and planted.read_bytes() == b"put here by hand"
    assert learn(model, "f2", seed=2) == "v0003" and model.load().class_names[-1] == "f2"


def test_a_symlinked_statistics_folder_is_refused_by_a_writer(tmp_path):
    model = analytic_model(tmp_path / "m")
    outside = tmp_path / "outside"
    model.statistics.rename(outside)
    model.statistics.symlink_to(outside)
    with pytest.raises(ModelDirError, match="statistics: a symbolic link inside the model dir"):
        learn(model, "f1")
    with pytest.raises(ModelDirError, match="no loadable version.*symbolic link"):
        model.load()  # a reader refuses it too: the head's matrix is not read through a link
