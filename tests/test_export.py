import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from torch import nn

from avcil.export import command
from avcil.export.onnx import ExportError, export_onnx, torch_outputs
from avcil.model.graphs import ENCODERS_DIR, REPORT_FILE, SPEC_FILE, read_spec
from avcil.model.encoders import load_profile
from avcil.model.graphs import HeadLogits
from avcil.fileio import sha256_file
from avcil.modeldir import ModelDir
from support.models import commit_model, run_export


@pytest.fixture(scope="module")
def tiny():
    return load_profile("tiny")


@pytest.fixture(scope="module")
def exported(tiny, tmp_path_factory):
    """A tiny model dir exported through the command line, as a user runs it."""
    root = tmp_path_factory.mktemp("tiny") / "model"
    commit_model(root, tiny)
    assert run_export(["--model", str(root), "--format", "onnx"]) == 0
    return root


def plain_session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_export_writes_validated_graphs_and_a_report(exported):
    folder = exported / ENCODERS_DIR
    report = json.loads((folder / REPORT_FILE).read_text())
    assert set(report["models"]) == {"audio", "visual"}  # the head runs in torch (GRAPH_NAMES)
    for name, model in report["models"].items():
        assert model["relative_error"] < 1e-4, name
        assert model["max_abs_error"] == max(c["max_abs_error"] for c in model["cases"])  # the worst case
        assert model["relative_error"] == max(c["relative_error"] for c in model["cases"])
        assert [c["input"] for c in model["cases"]] == ["random-batch1", "random-batch4", "real-batch1"]
    assert report["real_input"].startswith("spoken digits")
    assert report["opset"] >= 17


def test_spec_records_profile_io_and_checksums(exported, tiny):
    spec = read_spec(exported / ENCODERS_DIR)
    assert spec["profile"]["name"] == "tiny"
    assert spec["profile"]["settings"]["audio"] == json.loads(json.dumps(tiny.settings["audio"]))
    assert spec["opset"] >= 17 and set(spec["graphs"]) == {"audio", "visual"}
    visual = spec["graphs"]["visual"]
    assert visual["inputs"] == [{"name": "frames", "shape": ["batch", *tiny.visual_input_shape], "dtype": "float32"}]
    assert visual["outputs"] == [{"name": "visual_tokens", "shape": ["batch", *tiny.shape.visual], "dtype": "float32"}]
    for graph in spec["graphs"].values():
        assert sha256_file(exported / ENCODERS_DIR / graph["file"]) == graph["sha256"]
        assert onnx.load(str(exported / ENCODERS_DIR / graph["file"])).opset_import[0].version >= 17


@pytest.mark.parametrize("batch", [1, 4])
def test_each_file_runs_in_plain_onnxruntime(exported, tiny, batch):
    folder = exported / ENCODERS_DIR
    rng = np.random.default_rng(batch)
    audio = rng.standard_normal((batch, *tiny.audio_input_shape)).astype(np.float32)
    frames = rng.standard_normal((batch, *tiny.visual_input_shape)).astype(np.float32)
    (embedding,) = plain_session(folder / "audio.onnx").run(None, {"audio_input": audio})
    (tokens,) = plain_session(folder / "visual.onnx").run(None, {"frames": frames})
    head = HeadLogits(ModelDir(exported).load().head)
    logits = torch_outputs(head, [embedding, tokens])[0]  # as the recogniser runs it: the model's head in torch
    expected = torch_outputs(head, torch_outputs(tiny.audio, [audio]) + torch_outputs(tiny.visual, [frames]))[0]
    assert logits.shape == (batch, 3)
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-5)


class FrozenBatch(nn.Module):
    """An encoder bug the validation must catch: Python control flow on the batch size, which tracing freezes."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        out = self.inner(x)
        return out if x.shape[0] == 2 else out + 1.0


def test_a_mismatch_fails_and_keeps_the_previous_export(exported, tiny, tmp_path):
    folder = exported / ENCODERS_DIR
    before = {p.name: sha256_file(p) for p in folder.iterdir()}
    broken = load_profile("tiny")
    broken.audio = FrozenBatch(broken.audio)
    with pytest.raises(ExportError, match=r"relative tolerance 0.0001: audio: relative error"):
        export_onnx(exported, broken, progress=False)
    assert {p.name: sha256_file(p) for p in folder.iterdir()} == before
    assert not [p for p in exported.iterdir() if p.name.startswith(".encoders")]


def test_an_export_serves_later_head_versions_and_a_second_export_replaces_it_whole(tmp_path, tiny):
    from avcil.backends import model_backends

    root = tmp_path / "model"
    head = commit_model(root, tiny)
    first = export_onnx(root, tiny, progress=False)
    head.add_classes(2)  # as field learning does: a new version, no export toolchain needed
    ModelDir(root).commit(head, None, [{"name": f"c{i}", "step": 0} for i in range(5)],
                          ModelDir(root).manifest()["features"])
    assert command._onnx_is_current(root, tiny)  # `avcil export --format engine` reuses it
    assert set(model_backends(root, "onnxruntime")) == {"audio", "visual"}
    export_onnx(root, tiny, progress=False)
    assert not [p for p in root.iterdir() if p.name.startswith(f".{ENCODERS_DIR}")]  # no staged or old folder left
    assert set(read_spec(root / ENCODERS_DIR)["graphs"]) == set(first["models"])


def test_command_refuses_reduced_precision_onnx(exported):
    with pytest.raises(ValueError, match="ONNX files are exported in fp32"):
        run_export(["--model", str(exported), "--format", "onnx", "--precision", "fp16"])


def test_export_refuses_encoders_that_do_not_fit_the_head(tmp_path, tiny):
    commit_model(tmp_path / "m", tiny)
    other = load_profile("tiny")
    other.shape = type(other.shape)(audio_dim=99, time=2, positions=4, visual_dim=32)
    with pytest.raises(ValueError, match="the head takes features"):
        export_onnx(tmp_path / "m", other, progress=False)


def test_lite_export_matches_torch(tmp_path):
    lite = load_profile("lite")
    commit_model(tmp_path / "lite", lite)
    report = export_onnx(tmp_path / "lite", lite, progress=False)
    # The audio encoder's parts that a live stream runs on their own are exported and validated too; aiSFX's
    # columns also on the fewest frames they take (a window's tail).
    assert set(report["models"]) == {"audio", "visual", "audio_sfx", "audio_sfx_columns", "speech_window"}
    assert "random-batch1-frames64" in {case["input"] for case in report["models"]["audio_sfx_columns"]["cases"]}
    assert max(m["relative_error"] for m in report["models"].values()) < 1e-4
    frames = np.random.default_rng(0).standard_normal((4, *lite.visual_input_shape)).astype(np.float32)
    (tokens,) = plain_session(tmp_path / "lite" / ENCODERS_DIR / "visual.onnx").run(None, {"frames": frames})
    assert tokens.shape == (4, *lite.shape.visual)
    assert (tmp_path / "lite" / ENCODERS_DIR / SPEC_FILE).is_file()


def test_an_export_made_before_the_head_was_left_out_still_loads_without_it(tmp_path, tiny):
    from avcil.backends import model_backends

    root = tmp_path / "m"
    commit_model(root, tiny)
    export_onnx(root, tiny, progress=False)
    spec_path = root / ENCODERS_DIR / SPEC_FILE
    spec = json.loads(spec_path.read_text())
    spec["graphs"]["head"] = {"file": "head.onnx", "sha256": "0" * 64}  # listed by an old export, never loaded
    spec_path.write_text(json.dumps(spec))
    assert set(model_backends(root, "onnxruntime")) == {"audio", "visual"}


def test_export_once_exports_for_the_first_model_dir_and_copies_the_checked_export_to_the_next(tmp_path, tiny,
                                                                                                monkeypatch):
    from avcil.backends import model_backends
    from avcil.export import cached

    cache = tmp_path / "cache"
    commit_model(tmp_path / "first", tiny)
    report = cached.export_once(tmp_path / "first", tiny, cache)
    first = read_spec(tmp_path / "first" / ENCODERS_DIR)["graphs"]

    def no_export(*args, **kwargs):
        raise AssertionError("exported again")

    monkeypatch.setattr(cached, "export_onnx", no_export)
    commit_model(tmp_path / "second", tiny)
    assert cached.export_once(tmp_path / "second", tiny, cache) == report
    second = tmp_path / "second" / ENCODERS_DIR
    assert read_spec(second)["graphs"] == first
    assert all(sha256_file(second / g["file"]) == g["sha256"] for g in first.values())
    assert set(model_backends(tmp_path / "second", "onnxruntime")) == {"audio", "visual"}
    assert not [p for p in (tmp_path / "second").iterdir() if p.name.startswith(".")]  # no staging folder left

    # A kept graph that no longer matches its checksum is not copied: the export is made again.
    kept = next(p for p in (cache / "onnx").iterdir() if p.name.endswith("-export"))
    graph = kept / first["visual"]["file"]
    graph.write_bytes(graph.read_bytes()[:1000])
    monkeypatch.undo()
    commit_model(tmp_path / "third", tiny)
    cached.export_once(tmp_path / "third", tiny, cache)
    assert sha256_file(graph) == first["visual"]["sha256"]  # and kept whole again
    assert set(model_backends(tmp_path / "third", "onnxruntime")) == {"audio", "visual"}

    # A kept export made when fewer graphs were exported (before a stream graph was added) is made again, whole.
    spec = json.loads((kept / SPEC_FILE).read_text())
    spec["graphs"].pop("visual")
    (kept / SPEC_FILE).write_text(json.dumps(spec))
    commit_model(tmp_path / "older", tiny)
    cached.export_once(tmp_path / "older", tiny, cache)
    assert set(read_spec(kept)["graphs"]) == set(first)

    # Encoders that do not fit a model dir's head are refused, kept export or not.
    other = load_profile("tiny")
    other.shape = type(other.shape)(audio_dim=99, time=2, positions=4, visual_dim=32)
    commit_model(tmp_path / "fourth", tiny)
    with pytest.raises(ValueError, match="the head takes features"):
        cached.export_once(tmp_path / "fourth", other, cache)
