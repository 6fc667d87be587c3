import importlib.util

import numpy as np
import pytest
import torch

from avcil.export.onnx import export_onnx
from avcil.model.encoders import PROFILE_VERSIONS, ProfileMismatch, load_profile, profile_from_record
from avcil.model.head import FusionHead, HeadConfig
from avcil.backends import (OnnxRuntimeBackend, kind_for, load_backend, model_backends,
                                    onnxruntime_providers)
from avcil.modeldir import ModelDir


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A tiny model dir with its encoders exported to ONNX."""
    tiny = load_profile("tiny")
    root = tmp_path_factory.mktemp("backends") / "model"
    torch.manual_seed(0)
    head = FusionHead(HeadConfig.for_shape(tiny.shape), num_classes=4)
    ModelDir(root).commit(head, None, [{"name": f"c{i}", "step": 0} for i in range(4)],
                          {"shape": tiny.shape.to_dict(), "profile": tiny.describe()})
    export_onnx(root, tiny, progress=False)
    return root, tiny


def clip_inputs(tiny, batch, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((batch, *tiny.audio_input_shape)).astype(np.float32),
            rng.standard_normal((batch, *tiny.visual_input_shape)).astype(np.float32))


def recognise(graphs, audio, frames):
    (embedding,) = graphs["audio"](audio)
    (tokens,) = graphs["visual"](frames)
    return embedding, tokens


@pytest.mark.parametrize("batch", [1, 3])
def test_torch_and_onnxruntime_same_call_same_outputs(model, batch):
    root, tiny = model
    on_torch = model_backends(root, "torch")
    on_ort = model_backends(root, "onnxruntime")
    assert set(on_torch) == set(on_ort) == {"audio", "visual"}
    for name in ("audio", "visual"):
        assert on_torch[name].input_names == on_ort[name].input_names
        assert on_torch[name].output_names == on_ort[name].output_names
        assert on_torch[name].input_shapes == on_ort[name].input_shapes
    audio, frames = clip_inputs(tiny, batch)
    for a, b in zip(recognise(on_torch, audio, frames), recognise(on_ort, audio, frames)):
        assert a.dtype == b.dtype == np.float32
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    assert recognise(on_ort, audio, frames)[1].shape == (batch, *tiny.shape.visual)


def test_backends_take_torch_tensors_too(model):
    root, tiny = model
    audio, _ = clip_inputs(tiny, 2)
    backend = load_backend(root / "encoders" / "audio.onnx")
    np.testing.assert_array_equal(backend(torch.from_numpy(audio))[0], backend(audio)[0])


def test_wrong_inputs_are_named_in_the_error(model):
    root, tiny = model
    visual = load_backend(root / "encoders" / "visual.onnx")
    with pytest.raises(ValueError, match=r"'frames' has shape \(1, 3, 32, 32\), expected \(batch, 4, 3, 32, 32\)"):
        visual(np.zeros((1, 3, 32, 32), np.float32))
    with pytest.raises(ValueError, match=r"expected 1 inputs \['frames'\], got 2"):
        visual(np.zeros((1, *tiny.visual_input_shape), np.float32), np.zeros((1, *tiny.visual_input_shape), np.float32))


def test_kind_by_suffix_or_module(tmp_path):
    assert kind_for(tmp_path / "visual.onnx") == "onnxruntime"
    assert kind_for("m/encoders/visual.engine") == "tensorrt" and kind_for("x.plan") == "tensorrt"
    assert kind_for(torch.nn.Linear(2, 2)) == "torch"
    with pytest.raises(ValueError, match="cannot tell the backend from the suffix '.pt'"):
        kind_for("weights.pt")
    with pytest.raises(ValueError, match="unknown backend 'tflite'"):
        load_backend(tmp_path / "visual.onnx", kind="tflite")
    with pytest.raises(FileNotFoundError, match="no such ONNX file"):
        load_backend(tmp_path / "missing.onnx")
    with pytest.raises(FileNotFoundError, match="no exported encoders here"):
        model_backends(tmp_path, "onnxruntime")


def test_onnxruntime_provider_choice():
    assert onnxruntime_providers("cpu", ["CUDAExecutionProvider", "CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    chosen = onnxruntime_providers("cuda:1", ["CPUExecutionProvider", "CUDAExecutionProvider",
                                              "TensorrtExecutionProvider"], fp16=True)
    assert [p if isinstance(p, str) else p[0] for p in chosen] == ["TensorrtExecutionProvider",
                                                                   "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert chosen[0][1]["device_id"] == 1 and chosen[0][1]["trt_fp16_enable"] is True
    only_cuda = onnxruntime_providers("cuda", ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert [p if isinstance(p, str) else p[0] for p in only_cuda] == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    with pytest.raises(RuntimeError, match="no GPU provider"):
        onnxruntime_providers("cuda", ["CPUExecutionProvider"])


def test_onnxruntime_session_uses_the_cpu_settings(model):
    root, _ = model
    backend = OnnxRuntimeBackend(root / "encoders" / "audio.onnx", threads=2)
    assert backend.providers == ["CPUExecutionProvider"]
    options = backend.session.get_session_options()
    assert options.intra_op_num_threads == 2 and options.enable_mem_pattern


def test_only_the_graphs_named_spinning_keep_their_threads_spinning(model):
    root, _ = model

    def spins(backend) -> bool:
        value = backend.session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning")
        return value == "1"

    backends = model_backends(root, "onnxruntime", spinning=("audio",), threads=2)
    assert spins(backends["audio"]) and not spins(backends["visual"])
    assert not any(spins(b) for b in model_backends(root, "onnxruntime").values())
    assert model_backends(root, "torch", spinning=("audio",)).keys() == backends.keys()  # no such option in torch


def test_torch_backend_refuses_gpu_only_options_on_cpu():
    with pytest.raises(ValueError, match="need a CUDA device"):
        load_backend(torch.nn.Linear(3, 2), input_names=["x"], output_names=["y"], input_shapes=[(3,)], fp16=True)


def test_profile_record_must_match_the_rebuilt_encoders(model):
    root, tiny = model
    record = ModelDir(root).manifest()["features"]["profile"]
    assert profile_from_record(record).describe()["settings"]["audio"] == record["settings"]["audio"]
    changed = {**record, "settings": {**record["settings"], "audio": {**record["settings"]["audio"],
                                                                      "num_mel_bins": 64}}}
    with pytest.raises(ProfileMismatch, match="differ from the ones the model was made with.*recorded tiny v1"):
        profile_from_record(changed)
    with pytest.raises(ValueError, match="records no encoder profile"):
        profile_from_record(None)


def test_a_model_of_an_older_lite_profile_is_refused_with_how_to_rebuild():
    old_lite = {"name": "lite", "shape": {"audio_dim": 512, "time": 8, "positions": 49, "visual_dim": 1280},
                "settings": {"audio": {"kind": "sfx_mel"}, "visual": {"kind": "frames"}, "weights": {}}}
    with pytest.raises(ProfileMismatch) as refused:
        profile_from_record(old_lite, "runs/a/model")
    message = str(refused.value)
    assert "\n" not in message and "runs/a/model" in message and "lite v1 (audio 512, visual 8x49x1280)" in message
    assert f"lite v{PROFILE_VERSIONS['lite']}" in message and "avcil train --data av-digits" in message


def test_exported_encoders_of_another_profile_are_refused_naming_both(model, tmp_path):
    import json
    import shutil

    root, _ = model
    copy = tmp_path / "model"
    shutil.copytree(root, copy)
    spec_path = copy / "encoders" / "encoders.json"
    spec = json.loads(spec_path.read_text())
    spec["profile"]["version"] = 7
    spec_path.write_text(json.dumps(spec))
    with pytest.raises(ProfileMismatch, match=r"trained with the tiny v1 .* are tiny v7 .*avcil export --model"):
        model_backends(copy, "onnxruntime")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")
def test_torch_cuda_graph_and_fp16_match_eager(model):
    root, tiny = model
    audio, frames = clip_inputs(tiny, 2)
    eager = model_backends(root, "torch")["visual"](frames)[0]
    graphed = model_backends(root, "torch", device="cuda", graph_batch=2)["visual"]
    np.testing.assert_allclose(graphed(frames)[0], eager, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(graphed(frames[:1])[0], eager[:1], rtol=1e-3, atol=1e-3)  # other batch: eager
    half = model_backends(root, "torch", device="cuda", fp16=True)["visual"]
    np.testing.assert_allclose(half(frames)[0], eager, rtol=2e-2, atol=2e-2)


@pytest.mark.cuda
@pytest.mark.skipif("CUDAExecutionProvider" not in __import__("onnxruntime").get_available_providers(),
                    reason="onnxruntime has no CUDA provider here (CPU build)")
def test_onnxruntime_cuda_iobinding_matches_cpu(model):
    root, tiny = model
    _, frames = clip_inputs(tiny, 2)
    on_cpu = load_backend(root / "encoders" / "visual.onnx")(frames)[0]
    on_gpu = load_backend(root / "encoders" / "visual.onnx", device="cuda")
    np.testing.assert_allclose(on_gpu(torch.from_numpy(frames).cuda())[0], on_cpu, rtol=1e-3, atol=1e-4)


@pytest.mark.cuda
@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is None or not torch.cuda.is_available(),
                    reason="TensorRT and a CUDA GPU are not available on this machine")
def test_tensorrt_backend_same_call(model):
    from avcil.export.tensorrt import BatchRange, build_engine

    root, tiny = model
    _, frames = clip_inputs(tiny, 2)
    build_engine(root / "encoders" / "visual.onnx", root / "encoders" / "visual.engine", "fp32", BatchRange(1, 1, 4))
    engine = load_backend(root / "encoders" / "visual.engine")
    assert engine.input_names == ["frames"] and engine.output_names == ["visual_tokens"]
    expected = load_backend(root / "encoders" / "visual.onnx")(frames)[0]
    np.testing.assert_allclose(engine(frames)[0], expected, rtol=1e-2, atol=1e-3)

