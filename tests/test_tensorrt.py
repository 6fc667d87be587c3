import importlib.util
import json

import numpy as np
import onnx
import pytest
import torch

from avcil.export import tensorrt as engines

from avcil.model import engine_file
from avcil.export.onnx import export_graph
from avcil.model.graphs import VISUAL_GRAPH
from avcil.model.graphs import free_axis_minimum
from avcil.export.tensorrt import BatchRange
from avcil.model.engine_file import EngineError
from avcil.model.encoders import load_profile

HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None and torch.cuda.is_available()
ENV = {"tensorrt": "10.3.0", "gpu": "Orin", "compute_capability": "8.7"}


@pytest.fixture
def onnx_file(tmp_path):
    path = tmp_path / "audio.onnx"
    path.write_bytes(b"pretend onnx")
    return path


def header_for(onnx_file, **changes):
    header = engines.make_header(environment=ENV, precision="fp16",
                                 profile=engines.optimization_profile({"frames": (4, 3, 32, 32)}, BatchRange(1, 2, 8)),
                                 inputs=["frames"], outputs=["visual_tokens"], onnx_path=onnx_file, workspace_mib=1024)
    return {**header, **changes}


def test_header_round_trip(tmp_path, onnx_file):
    header = header_for(onnx_file)
    engines.write_engine(tmp_path / "a.engine", header, b"\x00engine bytes\xff")
    read, engine = engine_file.read_engine(tmp_path / "a.engine")
    assert read == json.loads(json.dumps(header)) and engine == b"\x00engine bytes\xff"
    assert read["profile"]["frames"] == {"min": [1, 4, 3, 32, 32], "opt": [2, 4, 3, 32, 32], "max": [8, 4, 3, 32, 32]}


def test_files_that_are_not_avcil_engines_are_refused(tmp_path, onnx_file):
    plain = tmp_path / "plain.engine"
    plain.write_bytes(b"a bare TensorRT plan without header")
    with pytest.raises(EngineError, match="not an avcil engine"):
        engine_file.read_engine(plain)
    engines.write_engine(tmp_path / "a.engine", header_for(onnx_file), b"engine")
    data = (tmp_path / "a.engine").read_bytes()
    (tmp_path / "cut.engine").write_bytes(data[:30])
    with pytest.raises(EngineError, match="truncated header"):
        engine_file.read_engine(tmp_path / "cut.engine")
    (tmp_path / "empty.engine").write_bytes(data[:-len(b"engine")])
    with pytest.raises(EngineError, match="engine is missing"):
        engine_file.read_engine(tmp_path / "empty.engine")


def test_header_check_refuses_another_tensorrt_gpu_or_onnx(tmp_path, onnx_file):
    header = header_for(onnx_file)
    engine_file.check_header(header, tmp_path / "a.engine", ENV, onnx_file)  # same machine, same ONNX: accepted
    with pytest.raises(EngineError, match=r"built with tensorrt '10.3.0', this machine has '10.7.0'.*Rebuild"):
        engine_file.check_header(header, tmp_path / "a.engine", {**ENV, "tensorrt": "10.7.0"})
    with pytest.raises(EngineError, match="built with gpu 'Orin'.*compute_capability '8.7'"):
        engine_file.check_header(header, tmp_path / "a.engine", {**ENV, "gpu": "NVIDIA H100", "compute_capability": "9.0"})
    onnx_file.write_bytes(b"re-exported onnx")
    with pytest.raises(EngineError, match="built from another audio.onnx"):
        engine_file.check_header(header, tmp_path / "a.engine", ENV, onnx_file)


def test_optimization_profile_and_batch_ranges():
    profile = engines.optimization_profile({"audio_embedding": (24,), "visual_tokens": (2, 4, 32)},
                                           BatchRange.parse("1,4,16"))
    assert profile["visual_tokens"] == {"min": [1, 2, 4, 32], "opt": [4, 2, 4, 32], "max": [16, 2, 4, 32]}
    assert profile["audio_embedding"]["max"] == [16, 24]
    assert BatchRange.parse("4") == BatchRange(4, 4, 4)
    with pytest.raises(ValueError, match="min <= opt <= max"):
        BatchRange.parse("8,4,16")
    with pytest.raises(ValueError, match="MIN,OPT,MAX"):
        BatchRange.parse("1,x")
    with pytest.raises(ValueError, match="must be fixed"):
        engines.optimization_profile({"frames": (0, 3, 224, 224)}, BatchRange())


def test_an_engine_takes_one_frame_to_a_window_where_the_graph_leaves_the_frame_count_free():
    # The lite visual graph's frames axis is named (free): the engine's profile spans 1 frame to a whole window,
    # and its backend then says the axis varies, which is what the recognizer's frame-by-frame path looks for.
    shapes, free = engines.engine_input_shapes({"frames": ["frames", 3, 224, 224]}, [(8, 3, 224, 224)])
    assert shapes == {"frames": [8, 3, 224, 224]} and free == {"frames": {0}}
    profile = engines.optimization_profile(shapes, BatchRange(1, 1, 4), free)
    assert profile["frames"] == {"min": [1, 1, 3, 224, 224], "opt": [1, 8, 3, 224, 224], "max": [4, 8, 3, 224, 224]}
    assert engine_file.backend_input_shapes(profile, ["frames"]) == [(None, 3, 224, 224)]
    # aiSFX's columns take a window's tail at the least (avcil.model.graphs.free_axis_minimum), not one frame.
    shapes, free = engines.engine_input_shapes({"sfx_spectrogram": ["sfx_frames", 96]}, [(131, 96)])
    columns = engines.optimization_profile(shapes, BatchRange(1, 1, 1), free, free_axis_minimum("audio_sfx_columns"))
    assert columns["sfx_spectrogram"] == {"min": [1, 64, 96], "opt": [1, 131, 96], "max": [1, 131, 96]}
    fixed, none_free = engines.engine_input_shapes({"a": [24], "b": [2, 4, 32]}, None)
    assert fixed == {"a": [24], "b": [2, 4, 32]} and none_free == {"a": set(), "b": set()}
    assert engine_file.backend_input_shapes(engines.optimization_profile(fixed, BatchRange(1, 2, 8)), ["a", "b"]) == [
        (24,), (2, 4, 32)]
    unbounded, _ = engines.engine_input_shapes({"frames": ["frames", 3, 8, 8]}, None)
    with pytest.raises(ValueError, match="must be fixed"):  # free, and no window shape to bound it
        engines.optimization_profile(unbounded, BatchRange())


def test_precision_choice():
    assert engines.choose_precision("fp16", (8, 7), has_calibration=False) == "fp16"
    assert engines.choose_precision("fp32", (5, 0), has_calibration=False) == "fp32"
    assert engines.choose_precision("int8", (8, 7), has_calibration=True) == "int8"
    with pytest.raises(EngineError, match="fp16 needs .* >= 5.3; this one is 5.0"):
        engines.choose_precision("fp16", (5, 0), has_calibration=False)
    with pytest.raises(EngineError, match="int8 needs calibration data"):
        engines.choose_precision("int8", (8, 7), has_calibration=False)
    with pytest.raises(EngineError, match="int8 needs .* >= 6.1"):
        engines.choose_precision("int8", (6, 0), has_calibration=True)
    with pytest.raises(ValueError, match="precision 'bf16'"):
        engines.choose_precision("bf16", (9, 0), has_calibration=False)
    assert engines.builder_flags("fp32") == []
    assert engines.builder_flags("fp16") == ["FP16", "OBEY_PRECISION_CONSTRAINTS"]
    assert set(engines.builder_flags("int8")) == {"INT8", "FP16", "OBEY_PRECISION_CONSTRAINTS"}


def test_layernorm_and_softmax_reach_tensorrt_as_single_layers_that_stay_fp32(tmp_path):
    """At opset 17 every LayerNorm is one LayerNormalization node (TensorRT: one NORMALIZATION layer) and attention
    keeps its Softmax, so pinning layers by type keeps all of them in fp32."""
    tiny = load_profile("tiny")
    path = tmp_path / "visual.onnx"
    export_graph(tiny.visual, [torch.randn(2, *tiny.visual_input_shape)], path, VISUAL_GRAPH)
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    layer_norms = sum(isinstance(m, torch.nn.LayerNorm) for m in tiny.visual.modules())
    assert ops.count("LayerNormalization") == layer_norms > 0
    assert ops.count("Softmax") == tiny.visual.model.config.num_hidden_layers
    assert "ReduceMean" not in ops and "Pow" not in ops  # no decomposed LayerNorm left to miss
    # The ONNX parser maps LayerNormalization -> NORMALIZATION and Softmax -> SOFTMAX layers.
    layer_types = [{"LayerNormalization": "NORMALIZATION", "Softmax": "SOFTMAX"}.get(op, op.upper()) for op in ops]
    pinned = engines.accurate_layers(layer_types)
    assert [layer_types[i] for i in pinned].count("NORMALIZATION") == layer_norms
    assert all(layer_types[i] in ("NORMALIZATION", "SOFTMAX") for i in pinned)


def test_engine_loading_needs_tensorrt_or_says_so():
    if HAS_TENSORRT:
        pytest.skip("TensorRT is installed: covered by the engine build test")
    with pytest.raises(EngineError, match="TensorRT is not installed"):
        engines.environment()


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_TENSORRT, reason="TensorRT and a CUDA GPU are not available on this machine")
def test_engine_build_runs_and_matches_torch(tmp_path):
    from avcil.export.onnx import errors, random_inputs, torch_outputs
    from avcil.backends import load_backend

    tiny = load_profile("tiny")
    onnx_path = tmp_path / "visual.onnx"
    export_graph(tiny.visual, [torch.randn(2, *tiny.visual_input_shape)], onnx_path, VISUAL_GRAPH)
    header = engines.build_engine(onnx_path, tmp_path / "visual.engine", "fp16", BatchRange(1, 2, 4),
                                  timing_cache=tmp_path / "timing.cache")
    assert header["precision"] == "fp16" and (tmp_path / "timing.cache").is_file()
    backend = load_backend(tmp_path / "visual.engine")
    inputs = random_inputs([tiny.visual_input_shape], 6, np.random.default_rng(0))  # above max: run in chunks
    assert errors(torch_outputs(tiny.visual, inputs), backend(*inputs))["relative_error"] < 2e-2
