"""Files from elsewhere run nothing when loaded: checkpoints with foreign objects are refused unless trusted."""

import argparse
from pathlib import Path

import pytest
import torch

from avcil.model.encoders.paper import audiomae_config, load_audiomae
from support.models import SMALL, HostilePickle, commit_model, run_export, save_checkpoint, timm_audiomae_state


def _checkpoint(path: Path, **extra) -> Path:
    state = timm_audiomae_state(**SMALL, finetuned=False)
    torch.save({"model": state, **extra}, path)
    return path


def test_a_checkpoint_with_a_foreign_global_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "marker"
    path = _checkpoint(tmp_path / "hostile.pth", extra=HostilePickle(marker))
    with pytest.raises(ValueError, match="hostile.pth: holds Python objects besides tensors.*--trust-checkpoint"):
        load_audiomae(path, audiomae_config(**SMALL))
    assert not marker.exists()


def test_published_checkpoint_arguments_load_without_trust(tmp_path):
    path = _checkpoint(tmp_path / "trained.pth", args=argparse.Namespace(lr=1e-3, model="vit_base_patch16"))
    assert load_audiomae(path, audiomae_config(**SMALL)) is not None


def test_trust_unpickles_in_full_with_a_warning(tmp_path):
    path = _checkpoint(tmp_path / "object.pth", extra={"epoch": 3, "note": object.__new__(argparse.ArgumentParser)})
    with pytest.warns(UserWarning, match="unpickling it in full"):
        assert load_audiomae(path, audiomae_config(**SMALL), trust=True) is not None


def test_saved_weights_only_checkpoint_still_loads(tmp_path):
    path = save_checkpoint(tmp_path / "plain.pth", timm_audiomae_state(**SMALL, finetuned=False))
    assert load_audiomae(path, audiomae_config(**SMALL)) is not None


def test_an_exported_graph_changed_after_export_is_not_loaded(tmp_path):
    from avcil.model.encoders import load_profile
    from avcil.backends import model_backends
    from avcil.modeldir import ModelDirError

    root = tmp_path / "model"
    commit_model(root, load_profile("tiny"))
    assert run_export(["--model", str(root), "--format", "onnx"]) == 0
    assert set(model_backends(root, "onnxruntime")) == {"audio", "visual"}
    visual = root / "encoders" / "visual.onnx"
    visual.write_bytes(visual.read_bytes() + b"\0")
    with pytest.raises(ModelDirError, match="visual.onnx: missing or not the file that was exported"):
        model_backends(root, "onnxruntime")
