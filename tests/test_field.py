import multiprocessing
import os
import random
import signal
import time

import numpy as np
import pytest
import torch

from avcil.runtime.field import FieldSettings, encode_files, learn_class, task_ranges
from avcil.runtime.modeldir import ModelDir, ModelDirError
from conftest import avcil
from test_modeldir import FEATURES, small_model

QUICK = FieldSettings(epochs=40, batch_size=16, exemplar_batch_size=16)


def predict(model_dir, audio, visual) -> list[str]:
    loaded = ModelDir(model_dir).load(with_memory=False)
    with torch.no_grad():
        logits = loaded.head(torch.from_numpy(audio), torch.from_numpy(visual)).logits
    return [loaded.class_names[i] for i in logits.argmax(1)]


def test_learning_a_class_from_files_adds_it_and_keeps_the_old_ones(toy_model, tiny_profile, toy_clips):
    green = encode_files(tiny_profile, toy_clips["green"][:4], progress=False)
    summary = learn_class(toy_model, "green", *green, QUICK, progress=False)
    model = ModelDir(toy_model)
    assert summary["version"] == model.current() == "v0002" and summary["parent"] == "v0001"
    loaded = model.load()
    assert loaded.class_names == ["red", "blue", "green"]
    assert [c["step"] for c in loaded.manifest["classes"]] == [0, 0, 1]
    # Memory budget 12 over 3 classes: 4 each, the new class filled from its own clips.
    assert {c: len(e.ids) for c, e in loaded.memory.classes.items()} == {0: 4, 1: 4, 2: 4}
    assert all(i.startswith("field/green/") for i in loaded.memory.classes[2].ids)
    # Held-out clips of every class, the new one included, are recognised.
    for name in ("red", "blue", "green"):
        audio, visual = encode_files(tiny_profile, toy_clips[name][4:], progress=False)
        assert predict(toy_model, audio, visual) == [name, name]


def test_a_duplicate_class_name_is_refused_before_any_work(toy_model, toy_clips):
    result = avcil("learn", "--model", toy_model, "--label", "red", "--files", toy_clips["green"][0], check=False)
    assert result.returncode == 2
    assert "class 'red' is already in the model" in result.stderr
    assert ModelDir(toy_model).list_versions() == ["v0001"]


def test_learn_command_commits_a_version_that_model_list_shows(toy_model, toy_clips):
    result = avcil("learn", "--model", toy_model, "--label", "green", "--epochs", "5", "--files",
                   *toy_clips["green"][:3])
    assert "v0001 -> v0002" in result.stdout
    listing = avcil("model", "list", "--model", toy_model).stdout.splitlines()
    assert listing[0].startswith("  v0001") and listing[1].startswith("* v0002") and "learnt 'green'" in listing[1]
    assert "v0002 -> v0001" in avcil("model", "rollback", "--model", toy_model).stdout
    assert ModelDir(toy_model).load().class_names == ["red", "blue"]


def test_task_ranges_follow_the_steps_of_the_classes():
    classes = [{"name": n, "step": s} for n, s in zip("abcdef", [0, 0, 1, 1, 2, 3])]
    assert task_ranges(classes) == [(0, 2), (2, 4), (4, 5), (5, 6)]
    with pytest.raises(ModelDirError, match="not grouped by step"):
        task_ranges([{"name": "a", "step": 0}, {"name": "b", "step": 1}, {"name": "c", "step": 0}])


def learn_forever(root: str, shape: dict, ready) -> None:
    """A field learner adding class after class until it is killed (runs in a child process)."""
    torch.set_num_threads(1)
    rng = np.random.default_rng(os.getpid())
    ready.set()
    for n in range(1000):
        audio = rng.normal(size=(4, shape["audio_dim"])).astype(np.float32)
        visual = rng.normal(size=(4, shape["time"], shape["positions"], shape["visual_dim"])).astype(np.float32)
        learn_class(root, f"k{os.getpid()}-{n}", audio, visual, FieldSettings(epochs=2, batch_size=4,
                    exemplar_batch_size=4), progress=False)


def test_killing_learn_at_random_moments_leaves_a_loadable_model(tmp_path):
    head, memory, classes = small_model(budget=5000)
    model = ModelDir(tmp_path / "m")
    model.commit(head, memory, classes, FEATURES)
    shape = FEATURES["shape"]
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["avcil.runtime.field"])  # children start in milliseconds
    rng = random.Random(1)
    for attempt in range(15):
        before = model.load(with_memory=False)
        committed = len(model.list_versions())
        ready = context.Event()
        learner = context.Process(target=learn_forever, args=(str(model.root), shape, ready))
        learner.start()
        assert ready.wait(60)
        if attempt % 3 == 2:
            # On a loaded machine a learner may never reach a commit within the random delay: let every third
            # one commit first, so that kills also land during later writes, whatever the load.
            deadline = time.monotonic() + 120
            while len(model.list_versions()) == committed and time.monotonic() < deadline:
                time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 1.2))
        os.kill(learner.pid, signal.SIGKILL)
        learner.join()
        after = model.load()
        assert not after.refused and after.version >= before.version
        # The version loaded is whole: its classes match its head, and it extends the one before.
        assert after.head.num_classes == len(after.class_names)
        assert after.class_names[:len(before.class_names)] == before.class_names
    with model.writer():
        assert [p.name for p in model.root.rglob(".*") if p.name != ".lock"] == []
    assert len(model.list_versions()) > 1  # some kills came after a commit: the writes were reached
