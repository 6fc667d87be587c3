"""ONNX export of a model dir's encoders (not its head), validated with ONNX Runtime against PyTorch.

Exported encoders are frozen and not versioned with the head; they live beside the versions:

    MODEL/encoders/audio.onnx     preprocessed audio [batch, ...] -> audio_embedding [batch, Da]
    MODEL/encoders/visual.onnx    preprocessed frames [batch, T, ...] -> visual_tokens [batch, T, S, Dv]; T is
                                  dynamic too when the profile encodes frames independently (lite)
    MODEL/encoders/audio_sfx.onnx, speech_window.onnx   lite only: the audio encoder's two parts, which a live
                                  stream runs on their own (the speech windows as their audio arrives)
    MODEL/encoders/encoders.json  profile and preprocessing settings, I/O names and shapes, opset, sha256 per file
    MODEL/encoders/export_report.json   max abs and relative error of each graph against PyTorch

The head is not exported: the recogniser runs it in torch from the model dir's current version (see GRAPH_NAMES in
avcil/model/graphs.py). The folder is staged in a hidden temporary folder, fsynced and renamed into place as a whole.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

import avcil
from avcil.errors import AvcilError, InvalidInput
from avcil.model.graphs import (
    ENCODERS_DIR, FRAME_AXIS, REPORT_FILE, SPEC_FILE, SPEC_FORMAT, Graph, dynamic_axes, free_axis_minimum,
    graph_modules)
from avcil.fileio import atomic_write, fsync_dir, sha256_file, write_synced
from avcil.modeldir.schema import ManifestKey

OPSET = 17  # LayerNormalization is an ONNX op from 17 on: TensorRT then keeps LayerNorm as one accurate layer
TOLERANCE = 1e-4  # largest relative error (see `errors`) an fp32 graph may have against PyTorch
VALIDATION_BATCHES = (1, 4)
EXAMPLE_BATCH = 2  # traced at 2 and checked at 1 and 4, so a batch size frozen into the graph shows
ERROR_DEFINITION = ("max_abs_error = max |runtime - torch| over all output elements; relative_error = "
                    "max_abs_error / max |torch| (relative to the output's range, not element-wise)")


class ExportError(AvcilError, RuntimeError):
    pass


def export_graph(module: nn.Module, example: Sequence[torch.Tensor], path: Path, spec: Graph,
                 opset: int = OPSET, dynamic: dict[str, dict[int, str]] | None = None) -> None:
    """Trace `module` into `path` with `dynamic` axes (default: the batch dimension of every input and output)."""
    import onnx

    if opset < 17:
        raise InvalidInput(f"opset {opset}: avcil exports at opset >= 17 (LayerNormalization, "
                           f"docs/architecture.md#exported-encoders)")
    dynamic = dynamic or dynamic_axes(spec)
    with warnings.catch_warnings():
        # The TorchScript exporter warns that it is deprecated and about Python values it traces as constants
        # (shapes of transformers' reshapes); a frozen batch size would fail the batch-1/4 validation instead.
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), tuple(example), str(path), input_names=list(spec.inputs),
                          output_names=list(spec.outputs), dynamic_axes=dynamic, opset_version=opset,
                          do_constant_folding=True, dynamo=False)
    model = onnx.load(str(path))
    names = ([i.name for i in model.graph.input], [o.name for o in model.graph.output])
    if names != (list(spec.inputs), list(spec.outputs)):
        raise ExportError(f"{path}: exported I/O {names[0]} -> {names[1]}, expected {list(spec.inputs)} -> "
                          f"{list(spec.outputs)} (an input the module does not use is dropped by the exporter)")
    # Reshapes with -1 leave the exporter unsure of the output sizes; state the fixed ones, so that runtimes and
    # the manifest see [batch, T, S, Dv] rather than placeholder names.
    for value, output in zip(model.graph.output, torch_outputs(module, [x.numpy() for x in example])):
        free = dynamic[value.name]
        for axis, (dim, size) in enumerate(zip(value.type.tensor_type.shape.dim, output.shape)):
            if axis in free:
                dim.dim_param = free[axis]
            else:
                dim.dim_value = size
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))


def io_record(path: Path) -> dict:
    """Names, shapes ('batch' for the dynamic dimension) and element types of an ONNX file's inputs/outputs."""
    import onnx

    exported = onnx.load(str(path), load_external_data=False).graph

    def describe(values) -> list[dict]:
        return [{"name": v.name,
                 "shape": [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim],
                 "dtype": onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type).name}
                for v in values]

    return {"inputs": describe(exported.input), "outputs": describe(exported.output)}


def errors(reference: Sequence[np.ndarray], candidate: Sequence[np.ndarray]) -> dict:
    """Max abs and relative error (ERROR_DEFINITION) of `candidate` outputs against `reference` outputs."""
    if len(reference) != len(candidate):
        raise ExportError(f"{len(candidate)} outputs, expected {len(reference)}")
    max_abs, scale = 0.0, 0.0
    for ref, got in zip(reference, candidate):
        if ref.shape != got.shape:
            raise ExportError(f"output of shape {got.shape}, expected {ref.shape}")
        max_abs = max(max_abs, float(np.max(np.abs(got.astype(np.float64) - ref))))
        scale = max(scale, float(np.max(np.abs(ref))))
    return {"max_abs_error": max_abs, "relative_error": max_abs / scale if scale > 0 else max_abs}


def random_inputs(shapes: Sequence[Sequence[int]], batch: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Standard normal inputs: the range of normalised frames, fbanks and encoder features."""
    return [rng.standard_normal((batch, *shape)).astype(np.float32) for shape in shapes]


@torch.inference_mode()
def torch_outputs(module: nn.Module, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
    result = module(*(torch.from_numpy(x) for x in inputs))
    return [r.float().numpy() for r in (result if isinstance(result, (tuple, list)) else [result])]


def graph_inputs(profile, audio: np.ndarray, frames: np.ndarray) -> dict[str, list[np.ndarray]]:
    """Per graph, its inputs for a batch of preprocessed clips: the encoders take audio and frames, the audio
    encoder's stream parts what the audio encoder would give them."""
    audio, frames = (np.ascontiguousarray(x, dtype=np.float32) for x in (audio, frames))
    inputs = {"audio": [audio], "visual": [frames]}
    if hasattr(profile.audio, "stream_inputs"):
        inputs.update({name: [x] for name, x in profile.audio.stream_inputs(audio).items()})
    return inputs


def validate(module: nn.Module, run: Callable[..., list[np.ndarray]], cases: dict[str, list[np.ndarray]]) -> dict:
    """Errors of a runtime (`run(*inputs)`) against the PyTorch module on each named input case; the model's
    errors are the largest over the cases."""
    rows = []
    for name, inputs in cases.items():
        rows.append({"input": name, "batch": int(inputs[0].shape[0]),
                     **errors(torch_outputs(module, inputs), run(*inputs))})
    return {"max_abs_error": max(r["max_abs_error"] for r in rows),
            "relative_error": max(r["relative_error"] for r in rows), "cases": rows}


def check_tolerance(models: dict[str, dict], tolerance: float, what: str) -> None:
    failed = {name: m for name, m in models.items() if not m["relative_error"] <= tolerance}
    if failed:
        details = "; ".join(f"{name}: relative error {m['relative_error']:.3g} (max abs {m['max_abs_error']:.3g})"
                            for name, m in failed.items())
        raise ExportError(f"{what} does not match PyTorch within the relative tolerance {tolerance:g}: {details}. "
                          f"Nothing was written; the previous export (if any) is unchanged.")


# The exported folder ---------------------------------------------------------------------------------------------
def write_json(path: Path, payload: dict) -> None:
    atomic_write(path, json.dumps(payload, indent=2).encode())


def replace_folder(staging: Path, target: Path) -> None:
    """Move a complete, fsynced staging folder to `target`. A folder cannot be renamed over a non-empty one, so
    the old export is renamed aside first and removed after: a crash between the two renames leaves it, whole,
    in a hidden `.{target}-old-*` folder."""
    old = None
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}-old-", dir=target.parent))
        target.rename(old / target.name)
    staging.rename(target)
    fsync_dir(target.parent)
    if old is not None:
        shutil.rmtree(old)


def export_onnx(model_dir: Path, profile, real: tuple[np.ndarray, np.ndarray] | None = None, real_source: str = "",
                opset: int = OPSET, tolerance: float = TOLERANCE, progress: bool = True, seed: int = 0) -> dict:
    """Export the profile's encoders for `model_dir` into MODEL/encoders/, validate each graph in ONNX Runtime (CPU)
    against PyTorch on random inputs at batch 1 and 4 and on the `real` clip (preprocessed audio and frames, no
    batch dimension) and return the report. Raises ExportError, leaving the previous export in place, when a graph
    is off by more than `tolerance`. The head is not exported (see GRAPH_NAMES), so an export holds for every
    version of the model."""
    from tqdm import tqdm

    from avcil.backends import load_backend

    model_dir = Path(model_dir)
    check_fits(model_dir, profile)
    modules = graph_modules(profile)
    rng = np.random.default_rng(seed)
    real_inputs = graph_inputs(profile, real[0][None], real[1][None]) if real else {}

    staging = Path(tempfile.mkdtemp(prefix=f".{ENCODERS_DIR}-", dir=model_dir))
    try:
        models, graphs = {}, {}
        bar = tqdm(modules.values(), desc="export onnx", unit="graph", disable=not progress)
        for module, spec, shapes in bar:
            path = staging / spec.file
            bar.set_postfix_str(f"{spec.name}: export")
            dynamic = dynamic_axes(spec, profile.frames_independent)
            export_graph(module, [torch.from_numpy(x) for x in random_inputs(shapes, EXAMPLE_BATCH, rng)], path,
                         spec, opset, dynamic)
            _fsync_file(path)
            bar.set_postfix_str(f"{spec.name}: validate")
            cases = {f"random-batch{b}": random_inputs(shapes, b, rng) for b in VALIDATION_BATCHES}
            if FRAME_AXIS in dynamic[spec.inputs[0]]:  # the fewest frames (one, as a live window encodes them)
                shortest = free_axis_minimum(spec.name)
                cases[f"random-batch1-frames{shortest}"] = random_inputs([(shortest, *shapes[0][1:])], 1, rng)
            if spec.name in real_inputs:
                cases["real-batch1"] = real_inputs[spec.name]
            models[spec.name] = {"file": spec.file, **validate(module, load_backend(path, "onnxruntime"), cases)}
            graphs[spec.name] = {"file": spec.file, "sha256": sha256_file(path), **io_record(path)}
        check_tolerance(models, tolerance, "the ONNX export")
        report = {"format": "onnx", "precision": "fp32", "opset": opset, "tolerance": {"relative": tolerance},
                  "error_definition": ERROR_DEFINITION, "runtime": _versions(),
                  "real_input": real_source if real is not None else None, "models": models, "engines": {}}
        spec_record = {"format": SPEC_FORMAT, "profile": profile.describe(), "opset": opset, "precision": "fp32",
                       "graphs": graphs,
                       "engines": {}, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **_versions()}
        write_synced(staging / SPEC_FILE, json.dumps(spec_record, indent=2).encode())
        write_synced(staging / REPORT_FILE, json.dumps(report, indent=2).encode())
        fsync_dir(staging)
        replace_folder(staging, model_dir / ENCODERS_DIR)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return report


def check_fits(model_dir: Path, profile) -> None:
    """Refuse encoders whose features are not those the model dir's head takes."""
    from avcil.modeldir import ModelDir

    recorded = ModelDir(model_dir).manifest()[ManifestKey.FEATURES]["shape"]
    if profile.shape.to_dict() != recorded:
        raise InvalidInput(f"{model_dir}: the head takes features {recorded}, the {profile.name} encoders make "
                           f"{profile.shape.to_dict()}")


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _versions() -> dict:
    import onnx
    import onnxruntime

    return {"avcil": avcil.__version__, "torch": torch.__version__, "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__}
