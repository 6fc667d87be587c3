"""The model dir against hostile and damaged contents, each case of the red team's issue as a user meets it through
the command line: links that lead outside the model dir, records that do not parse or have the wrong shape, a lock
whose file is removed, a second learner at once."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from avcil.modeldir import ModelDir
from avcil.modeldir.lock import WAITING_LINE
from avcil.modeldir.schema import SEAL, seal_of
from support.commands import TREE, problems_of, run_command, tree_digest
from support.media import make_clip


@pytest.fixture
def model(tmp_path, tiny_model_dir_template) -> Path:
    return Path(shutil.copytree(tiny_model_dir_template, tmp_path / "model"))


def avcil_in_process(*argv) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of the real command line, after checking it exited 0 or 2 with one line."""
    code, stdout, stderr = run_command([str(a) for a in argv], in_process=True)
    assert not problems_of([str(a) for a in argv], code, stderr)
    return code, stdout, stderr


# Links out of the model dir -------------------------------------------------------------------------------------
def test_a_symlinked_exemplars_folder_is_refused_and_nothing_in_it_is_deleted(tmp_path, model):
    # The repro: another model dir's exemplars folder, with a file of the user's own, linked in.
    other = Path(shutil.copytree(model, tmp_path / "other"))
    (other / "exemplars" / "keep.txt").write_text("x\n")
    shutil.rmtree(model / "exemplars")
    (model / "exemplars").symlink_to(other / "exemplars")
    before = tree_digest(other)
    code, _, stderr = avcil_in_process("model", "rollback", "--model", model)
    assert code == 2 and f"{model / 'exemplars'}: a symbolic link inside the model dir" in stderr
    code, _, stderr = avcil_in_process("model", "repair", "--model", model)
    assert code == 2 and "symbolic link" in stderr
    assert tree_digest(other) == before and (other / "exemplars" / "keep.txt").read_text() == "x\n"
    assert ModelDir(other).load().version == "v0003"  # the other model dir lost nothing
    # Recognition goes on: the head never reads the exemplars.
    assert ModelDir(model).load(with_memory=False).version == "v0003"


def test_a_symlinked_statistics_folder_is_refused_by_writers_and_readers_alike(tmp_path, model):
    # The readout's statistics are part of the head: a reader refuses every version that lists them through a link.
    outside = Path(shutil.copytree(model / "statistics", tmp_path / "outside"))
    shutil.rmtree(model / "statistics")
    (model / "statistics").symlink_to(outside)
    before = tree_digest(outside)
    code, _, stderr = avcil_in_process("model", "rollback", "--model", model)
    assert code == 2 and f"{model / 'statistics'}: a symbolic link inside the model dir" in stderr
    code, stdout, _ = avcil_in_process("model", "list", "--model", model)
    assert code == 0 and "v0003  CORRUPT:" in stdout and "symbolic link" in stdout
    assert ModelDir(model).load(with_memory=False).version == "v0001"  # the one version without a readout
    assert tree_digest(outside) == before


@pytest.mark.parametrize("name", ["CURRENT.tmp", ".staged", "CURRENT"])
def test_a_link_among_the_writers_own_files_is_refused_not_written_through(tmp_path, model, name):
    victim = tmp_path / "victim.txt"
    victim.write_text("v0001\n")
    (model / name).unlink(missing_ok=True)
    (model / name).symlink_to(victim)
    code, _, stderr = avcil_in_process("model", "rollback", "--model", model)
    assert code == 2 and f"{model / name}: a symbolic link inside the model dir" in stderr
    assert victim.read_text() == "v0001\n" and (model / name).is_symlink()


def test_a_staged_name_that_became_a_link_loses_the_link_not_its_target(tmp_path, model):
    victim = tmp_path / "victim.npz"
    victim.write_bytes(b"someone else's")
    name = "f" * 64 + ".npz"
    (model / "exemplars" / name).symlink_to(victim)
    (model / ".staged").write_text(f"exemplars/{name}\n")  # as if a killed writer had been about to create it
    with ModelDir(model).writer():
        pass
    assert not (model / "exemplars" / name).is_symlink() and victim.read_bytes() == b"someone else's"


# One writer at a time ---------------------------------------------------------------------------------------------
def start_learner(model: Path, clip: Path, label: str, lock_wait: float) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "avcil", "learn", "--model", str(model), "--label", label,
                             "--files", str(clip), "--lock-wait", str(lock_wait), "--nice", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": TREE})


@pytest.fixture(scope="module")
def green_clip(tmp_path_factory) -> Path:

    return make_clip(tmp_path_factory.mktemp("green") / "green.mp4", "0x20b040", 2600)


def test_a_second_learner_waits_for_the_lock_before_encoding_then_learns(model, green_clip):
    holder = ModelDir(model)
    with holder.writer():
        (model / "CURRENT").unlink()  # removing files does not open the lock: it is the folder's
        (model / "CURRENT").write_text("v0003\n")
        learner = start_learner(model, green_clip, "green2", lock_wait=120)
        assert learner.stderr.readline().strip() == WAITING_LINE  # its first line: nothing recorded or encoded yet
        time.sleep(1.0)  # a second later it still waits: the wait is what is tested
        assert learner.poll() is None and holder.list_versions() == ["v0001", "v0002", "v0003"]
    stdout, stderr = learner.communicate(timeout=300)
    assert learner.returncode == 0, stderr
    assert "v0003 -> v0004" in stdout and ModelDir(model).load().class_names[-1] == "green2"


def test_a_learner_that_waits_too_long_gives_up_before_reading_its_clips(tmp_path, model):
    damaged = tmp_path / "damaged.mp4"
    damaged.write_bytes(b"not a video")
    with ModelDir(model).writer():
        learner = start_learner(model, damaged, "green2", lock_wait=0.5)
        _, stderr = learner.communicate(timeout=300)
    assert learner.returncode == 2 and "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1].startswith("avcil learn: error: ")
    assert "still being written by another process after 0.5 s" in stderr and "damaged.mp4" not in stderr


# Damaged records: a refusal of that version, the older one serves ---------------------------------------------------
def reseal(path: Path, change) -> None:
    """Rewrite a manifest through `change(manifest)` and seal it again, as a hostile writer would."""
    manifest = json.loads(path.read_text())
    change(manifest)
    manifest[SEAL] = seal_of(manifest)
    path.write_text(json.dumps(manifest))


DAMAGES = {
    "manifest not UTF-8": (lambda m: (m / "versions/v0003/manifest.json").write_bytes(b"\xff\xfe{\x80"),
                           "not UTF-8 text"),
    "manifest is []": (lambda m: (m / "versions/v0003/manifest.json").write_text("[]"), "holds a JSON list"),
    "manifest without classes": (lambda m: reseal(m / "versions/v0003/manifest.json",
                                                  lambda d: d.pop("classes")), "'classes' is missing"),
    "exemplar entry not an object": (lambda m: reseal(m / "versions/v0003/manifest.json",
                                                      lambda d: d["exemplars"].__setitem__(0, "x")),
                                     "an exemplar entry is not"),
    "extra key in the head config": (lambda m: reseal(m / "versions/v0003/manifest.json",
                                                      lambda d: d["head"]["config"].update(extra=1)),
                                     "'head.config' is not a head config"),
    "a byte changed in the manifest": (lambda m: (m / "versions/v0003/manifest.json").write_text(
        (m / "versions/v0003/manifest.json").read_text().replace('"white"', '"whitE"')),
        "do not match its own checksum"),
    "head truncated": (lambda m: (m / "versions/v0003/head.pt").write_bytes(b"PK"), "checksum mismatch"),
    "its statistics rows truncated": (lambda m: (m / "statistics" / own_statistics_rows(m)).write_bytes(b"\x93NUMPY"),
                                      "checksum mismatch"),
    "its statistics rows removed": (lambda m: (m / "statistics" / own_statistics_rows(m)).unlink(),
                                    "listed in the manifest of v0003 but missing"),
    "a gram entry naming a file outside": (lambda m: reseal(m / "versions/v0003/manifest.json",
                                                            lambda d: d["gram"].update(base="../../victim.npy")),
                                           "never produces"),
}


def own_statistics_rows(model: Path) -> str:
    """The statistics file that only v0003 lists: the rows of the class it learnt (v0002 wrote the base)."""
    rows = ModelDir(model).manifest("v0003")["gram"]["rows"]
    assert len(rows) == 1 and ModelDir(model).manifest("v0002")["gram"]["rows"] == []
    return rows[0]["file"]


@pytest.mark.parametrize("case", list(DAMAGES))
def test_a_damaged_version_is_refused_by_every_command_and_the_older_one_serves(model, green_clip, case):
    damage, reason = DAMAGES[case]
    damage(model)
    code, stdout, _ = avcil_in_process("model", "list", "--model", model)
    assert code == 0 and "v0003  CORRUPT:" in stdout and reason in stdout
    rows = json.loads(avcil_in_process("model", "list", "--model", model, "--json")[1])
    assert [(r["version"], r["ok"], r["serving"]) for r in rows] == [
        ("v0001", True, False), ("v0002", True, True), ("v0003", False, False)]
    code, _, stderr = avcil_in_process("run", "--model", model, "--camera", green_clip, "--mic", green_clip,
                                       "--duration", "0.2", "--quiet")
    assert code == 0 and "model v0002 (3 classes)" in stderr
    code, stdout, _ = avcil_in_process("learn", "--model", model, "--label", "green2", "--files", green_clip,
                                       "--nice", "0")
    assert code == 0 and "v0002 -> v0004" in stdout  # built on the version that serves
    assert ModelDir(model).load().class_names == ["red", "blue", "green", "green2"]
    code, stdout, _ = avcil_in_process("model", "rollback", "--model", model)
    assert code == 0 and "v0004 -> v0002" in stdout


def test_a_damaged_current_pointer_is_refused_and_the_newest_good_version_serves(model, green_clip):
    (model / "CURRENT").write_bytes(b"\xff\xfev0001")
    code, stdout, stderr = avcil_in_process("model", "list", "--model", model)
    assert code == 0 and "CURRENT refused" in stderr and "not text" in stderr
    assert "(serving in place of the current version)" in stdout.splitlines()[2]
    code, _, stderr = avcil_in_process("run", "--model", model, "--camera", green_clip, "--mic", green_clip,
                                       "--duration", "0.2", "--quiet")
    assert code == 0 and "model v0003 (4 classes)" in stderr
    code, stdout, _ = avcil_in_process("model", "rollback", "--model", model)
    assert code == 0 and "a refused CURRENT -> v0002" in stdout and ModelDir(model).current() == "v0002"


def test_a_truncated_shared_exemplar_file_costs_learning_until_repair_not_the_head(model, green_clip):
    shared = ModelDir(model).manifest("v0003")["exemplars"][0]["file"]
    path = model / "exemplars" / shared
    path.write_bytes(path.read_bytes()[:64])
    code, stdout, _ = avcil_in_process("model", "list", "--model", model)
    assert code == 0 and "CORRUPT" not in stdout and "exemplars of 'red' damaged" in stdout
    code, _, stderr = avcil_in_process("learn", "--model", model, "--label", "green2", "--files", green_clip,
                                       "--nice", "0")
    assert code == 2 and f"avcil model repair --model {model}" in stderr
    assert "encode clips" not in stderr  # refused before encoding its clips
    code, stdout, _ = avcil_in_process("model", "repair", "--model", model)
    assert code == 0 and "as v0004; exemplars dropped: 'red'" in stdout
    code, stdout, _ = avcil_in_process("learn", "--model", model, "--label", "green2", "--files", green_clip,
                                       "--nice", "0")
    assert code == 0 and "v0004 -> v0005" in stdout
    loaded = ModelDir(model).load()
    assert loaded.class_names == ["red", "blue", "green", "white", "green2"] and 0 not in loaded.memory.classes
