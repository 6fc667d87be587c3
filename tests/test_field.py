import json
import multiprocessing
import os
import shutil
import random
import signal
import time

import numpy as np
import pytest
import torch

from avcil.runtime.field import FieldSettings, learn_class, task_ranges
from avcil.modeldir import ModelDir, ModelDirError
from support.commands import avcil
from support.models import FEATURES, joint_solution, small_model, train_toy_model
from support.waiting import wait_until

QUICK = FieldSettings(epochs=40, batch_size=16, exemplar_batch_size=16)


def predict(model_dir, audio, visual) -> list[str]:
    loaded = ModelDir(model_dir).load(with_memory=False)
    with torch.no_grad():
        logits = loaded.head(torch.from_numpy(audio), torch.from_numpy(visual)).logits
    return [loaded.class_names[i] for i in logits.argmax(1)]


@pytest.mark.parametrize("method", ["analytic", "avcil"])
def test_learning_a_class_from_files_adds_it_and_keeps_the_old_ones(toy_model, tiny_profile, toy_clips, method):
    # The toy model was trained by gradient (no readout): the analytic update builds its readout from the exemplars.
    green = tiny_profile.encode_files(toy_clips["green"][:4], progress=False)
    summary = learn_class(toy_model, "green", *green, QUICK, progress=False, method=method)
    assert summary["method"] == method
    assert summary.get("readout_built_from_exemplars") == (12 if method == "analytic" else None)  # 6 + 6
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
        audio, visual = tiny_profile.encode_files(toy_clips[name][4:], progress=False)
        assert predict(toy_model, audio, visual) == [name, name]


@pytest.fixture(scope="session")
def analytic_toy_model_template(tmp_path_factory, tiny_profile, toy_clips):

    return train_toy_model(tmp_path_factory.mktemp("analytic-toy") / "model", tiny_profile, toy_clips,
                           ["red", "blue"], method="analytic")


def test_an_analytic_field_update_equals_training_on_all_classes_at_once(tmp_path, analytic_toy_model_template,
                                                                          tiny_profile, toy_clips):

    model = shutil.copytree(analytic_toy_model_template, tmp_path / "model")
    learn_class(model, "green", *tiny_profile.encode_files(toy_clips["green"], progress=False), progress=False)
    head = ModelDir(model).load(with_memory=False).head
    names = ["red", "blue", "green"]
    audio, visual = (torch.from_numpy(x) for x in
                     tiny_profile.encode_files([p for n in names for p in toy_clips[n]], progress=False))
    labels = np.repeat(np.arange(3), 6)
    with torch.no_grad():
        inputs = head.readout_inputs(audio, visual, head(audio, visual).fused)
    # Exemplar-free and exact: the same ridge solution as one fit on every clip of the three classes.
    np.testing.assert_allclose(head.readout.weight.numpy(), joint_solution(head.readout, inputs, labels),
                               rtol=1e-3, atol=1e-5)
    assert head.readout.count.tolist() == [6, 6, 6]


def test_a_class_from_one_clip_is_learnt_with_a_warning(toy_model, tiny_profile, toy_clips):
    lines = []
    one = tiny_profile.encode_files(toy_clips["green"][:1], progress=False)
    summary = learn_class(toy_model, "green", *one, progress=False, log=lines.append)
    assert summary["clips"] == 1 and "single clip" in lines[0]
    assert torch.isfinite(ModelDir(toy_model).load().head.readout.weight).all()


def test_features_with_nan_are_refused_naming_the_clip(toy_model, tiny_profile, toy_clips):
    audio, visual = tiny_profile.encode_files(toy_clips["green"][:3], progress=False)
    audio[1, 0] = np.nan
    with pytest.raises(ValueError, match="field/green/1 hold NaN or Inf"):
        learn_class(toy_model, "green", audio, visual, progress=False)
    assert ModelDir(toy_model).list_versions() == ["v0001"]


def test_learn_json_and_refine_commit_the_analytic_version_then_the_refined_one(toy_model, toy_clips):
    result = avcil("learn", "--model", toy_model, "--label", "green", "--json", "--refine", "--epochs", "3",
                   "--files", *toy_clips["green"][:3])
    first, second = (json.loads(line) for line in result.stdout.splitlines())
    assert {k: first[k] for k in ("version", "label", "clips", "method")} == {
        "version": "v0002", "label": "green", "clips": 3, "method": "analytic"}  # whole clips, as training
    assert first["learn_seconds"] >= 0 and first["encode_seconds"] > 0
    assert second["version"] == "v0003" and second["method"] == "avcil" and second["parent"] == "v0001"
    versions = ModelDir(toy_model)
    assert versions.load("v0002").head.readout is not None and versions.load("v0003").head.readout is None
    assert versions.load().class_names == ["red", "blue", "green"]


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
            wait_until(lambda: len(model.list_versions()) > committed, 120, "the learner's first commit")
        time.sleep(rng.uniform(0.0, 1.2))
        os.kill(learner.pid, signal.SIGKILL)
        learner.join()
        after = model.load()
        assert not after.refused and after.version >= before.version
        # The version loaded is whole: its classes match its head, and it extends the one before.
        assert after.head.num_classes == len(after.class_names)
        assert after.class_names[:len(before.class_names)] == before.class_names
    with model.writer():
        assert [p.name for p in model.root.rglob(".*") ] == []
    assert len(model.list_versions()) > 1  # some kills came after a commit: the writes were reached


def test_a_gradient_update_of_a_never_trained_head_is_refused_before_any_work(tmp_path, analytic_toy_model_template,
                                                                             toy_clips):
    model = shutil.copytree(analytic_toy_model_template, tmp_path / "model")
    result = avcil("learn", "--model", model, "--label", "green", "--refine", "--files", toy_clips["green"][0],
                   check=False)
    assert result.returncode == 2 and "never trained by gradient" in result.stderr
    assert "Traceback" not in result.stderr and ModelDir(model).list_versions() == ["v0001"]


def test_a_damaged_clip_given_to_learn_is_one_clear_line(toy_model, toy_clips, tmp_path):
    damaged = tmp_path / "damaged.mp4"
    damaged.write_bytes(toy_clips["green"][0].read_bytes()[:600])
    result = avcil("learn", "--model", toy_model, "--label", "green", "--files", damaged, check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "damaged.mp4" in result.stderr.strip().splitlines()[-1]
    assert ModelDir(toy_model).list_versions() == ["v0001"]
