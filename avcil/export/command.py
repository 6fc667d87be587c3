"""`avcil export --model DIR --format onnx|engine [--precision fp32|fp16|int8]`.

onnx: the profile's encoders -> MODEL/encoders/*.onnx, validated in ONNX Runtime. The head is not exported: it
runs in torch from the model dir's current version (docs/architecture.md#exported-encoders).
engine: TensorRT engines built from those ONNX files (exported first when missing or made with another encoder
profile), validated against PyTorch the same way. Both write MODEL/encoders/export_report.json.
"""

from __future__ import annotations

import argparse
import glob
import json
import sys
from pathlib import Path

import numpy as np

from avcil.errors import InvalidInput
from avcil.export import onnx as onnx_export
from avcil.modeldir.schema import ManifestKey

from avcil.model import graphs
from avcil.export import tensorrt as engines

# Real inputs for validation when no --sample is given: a recorded voice (Debian asterisk-core-sounds) and photos
# (scikit-image's bundled data), as one slideshow clip.
SPOKEN_DIGITS = "/usr/share/asterisk/sounds/*/digits/[0-9].wav"
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")
ENGINE_TOLERANCE = {"fp32": 1e-3, "fp16": 2e-2, "int8": 1e-1}  # TF32 / half / int8 arithmetic against fp32 torch
TIMING_CACHE = "timing.cache"


def builtin_real_clip(profile) -> tuple[tuple[np.ndarray, np.ndarray] | None, str]:
    """A real clip from files installed here (speech recordings, photos), preprocessed for `profile`; or None
    and the reason when they are not installed."""
    import soundfile

    recordings = sorted(glob.glob(SPOKEN_DIGITS))
    try:
        from skimage import data as photos
    except ImportError:
        photos = None
    if not recordings or photos is None:
        return None, ("no --sample given and no built-in real clip (needs asterisk-core-sounds-en-wav and "
                      "scikit-image); validated on random inputs only")
    pieces, rate = [], None
    for path in recordings[:10]:
        waveform, rate = soundfile.read(path, dtype="float32", always_2d=True)
        pieces.append(waveform.mean(axis=1))
    images = [getattr(photos, name)() for name in PHOTOS]
    count = profile.frame_prep.count
    frames = [images[i * len(images) // count] for i in range(count)]
    real = profile.clip_inputs(np.concatenate(pieces), rate, frames)
    return real, f"spoken digits {Path(recordings[0]).parent} + photos {', '.join(PHOTOS)}"


def sample_clip(profile, path: str) -> tuple[tuple[np.ndarray, np.ndarray], str]:
    return profile.file_inputs(path)[:2], path


def calibration_batches(profile, modules: dict, files: list[str], batch_size: int) -> dict[str, list[dict]]:
    """int8 calibration batches per graph (`graph_modules`) from real clips: preprocessed inputs for the
    encoders and the audio encoder's stream parts. Clips that do not fill a last batch are left out (TensorRT
    calibrates at one shape, the profile's opt batch)."""
    if len(files) < batch_size:
        raise InvalidInput(f"int8 calibration needs at least {batch_size} clips (the opt batch), got {len(files)}")
    batches: dict[str, list[dict]] = {name: [] for name in modules}
    usable = len(files) - len(files) % batch_size
    for start in range(0, usable, batch_size):
        inputs = [profile.file_inputs(f)[:2] for f in files[start:start + batch_size]]
        audio, frames = (np.stack(part) for part in zip(*inputs))
        inputs = onnx_export.graph_inputs(profile, audio, frames)
        for name, (_, spec, _) in modules.items():
            batches[name].append(dict(zip(spec.inputs, inputs[name])))
    return batches


def export_engines(model_dir: Path, profile, precision: str, batch: engines.BatchRange, workspace_mib: int,
                   tolerance: float, real: tuple[np.ndarray, np.ndarray] | None,
                   calibration_files: list[str], progress: bool = True) -> dict:
    """Build, validate and install one engine per exported ONNX graph; returns the engine part of the report."""
    import torch
    from tqdm import tqdm

    from avcil.backends import TensorRTBackend
    from avcil.fileio import sha256_file

    folder = Path(model_dir) / graphs.ENCODERS_DIR
    modules = graphs.graph_modules(profile)
    # Without clips an int8 build reuses the calibration caches of an earlier build (build_engine checks).
    calibration = (calibration_batches(profile, modules, calibration_files, batch.opt)
                   if precision == "int8" and calibration_files else {})
    rng = np.random.default_rng(0)
    real_inputs = onnx_export.graph_inputs(profile, real[0][None], real[1][None]) if real else {}
    spec = graphs.read_spec(folder)
    staged, report = {}, {}
    try:
        for name, (module, graph, shapes) in tqdm(modules.items(), desc=f"build {precision} engines", unit="engine",
                                                  disable=not progress):
            staged[name] = folder / f".{name}-staged.engine"
            header = engines.build_engine(folder / graph.file, staged[name], precision, batch, workspace_mib,
                                          folder / TIMING_CACHE, calibration.get(name),
                                          folder / f"{name}.calib" if precision == "int8" else None, shapes)
            cases = {f"random-batch{b}": onnx_export.random_inputs(shapes, b, rng)
                     for b in sorted({batch.min, batch.max})}
            if real_inputs:
                cases["real-batch1"] = real_inputs[name]
            backend = TensorRTBackend(staged[name])
            report[name] = {"file": f"{name}.engine", "precision": precision, "header": header,
                            **onnx_export.validate(module, backend, cases)}
            del backend
            torch.cuda.empty_cache()
        onnx_export.check_tolerance(report, tolerance, f"the {precision} TensorRT engines")
        for name, path in staged.items():
            path.rename(folder / f"{name}.engine")
    finally:
        for path in staged.values():
            path.unlink(missing_ok=True)
    spec["engines"] = {name: {"file": r["file"], "precision": precision, "tensorrt": r["header"]["tensorrt"],
                              "gpu": r["header"]["gpu"], "profile": r["header"]["profile"],
                              "sha256": sha256_file(folder / r["file"])} for name, r in report.items()}
    onnx_export.write_json(folder / graphs.SPEC_FILE, spec)
    full_report = json.loads((folder / graphs.REPORT_FILE).read_text())
    full_report["engines"] = {"tolerance": {"relative": tolerance}, "models": report}
    onnx_export.write_json(folder / graphs.REPORT_FILE, full_report)
    return full_report["engines"]


def _onnx_is_current(model_dir: Path, profile) -> bool:
    """An ONNX export holds for every version of the model (the head is not in it) while the profile is the same."""
    try:
        spec = graphs.read_spec(Path(model_dir) / graphs.ENCODERS_DIR)
    except FileNotFoundError:
        return False
    return json.loads(json.dumps(spec["profile"])) == json.loads(json.dumps(profile.describe()))


def run(args: argparse.Namespace) -> int:
    from avcil.model.encoders import profile_from_record
    from avcil.modeldir import ModelDir

    model_dir = Path(args.model)
    precision = args.precision or ("fp32" if args.format == "onnx" else "fp16")
    if args.format == "onnx" and precision != "fp32":
        raise InvalidInput("ONNX files are exported in fp32; reduced precision is chosen when building an engine "
                         "(--format engine --precision fp16|int8) or by the runtime (onnxruntime TensorRT EP)")
    if args.format == "engine":
        engines.environment()  # fail before the long ONNX export when TensorRT or the GPU is missing
    manifest = ModelDir(model_dir).manifest()
    weights = {k: v for k, v in (("audiomae", args.audiomae), ("videomae", args.videomae)) if v}
    profile = profile_from_record(manifest[ManifestKey.FEATURES].get("profile"), str(model_dir), **weights)
    real, source = sample_clip(profile, args.sample) if args.sample else builtin_real_clip(profile)
    if real is None:
        print(f"avcil export: {source}", file=sys.stderr)
    if args.format == "onnx" or not _onnx_is_current(model_dir, profile):
        report = onnx_export.export_onnx(model_dir, profile, real, source, args.opset, args.tolerance or
                                         onnx_export.TOLERANCE)
        _print_errors("onnx (onnxruntime vs torch)", report["models"])
    if args.format == "engine":
        engine_report = export_engines(model_dir, profile, precision, engines.BatchRange.parse(args.batch),
                                       args.workspace_mib, args.tolerance or ENGINE_TOLERANCE[precision], real,
                                       args.calibration or [])
        _print_errors(f"{precision} engines (tensorrt vs torch)", engine_report["models"])
    print(f"wrote {model_dir / graphs.ENCODERS_DIR} ({graphs.REPORT_FILE})")
    return 0


def _print_errors(title: str, models: dict) -> None:
    print(title)
    for name, m in models.items():
        print(f"  {name:7s} max abs error {m['max_abs_error']:.3g}  relative error {m['relative_error']:.3g}")


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "export", help="export the encoders to ONNX or TensorRT, validated against PyTorch",
        description="Export the model's encoder profile (not its head) into MODEL/encoders/ (ONNX, or TensorRT "
                    "engines built from it) and write export_report.json with each graph's max abs and relative "
                    "error against PyTorch. A graph beyond tolerance fails the export and leaves the old one.")
    parser.add_argument("--model", required=True, metavar="DIR", help="model dir (from `avcil train`)")
    parser.add_argument("--format", choices=("onnx", "engine"), default="onnx")
    parser.add_argument("--precision", choices=engines.PRECISIONS, default=None,
                        help="onnx: fp32 only; engine: fp16 (default), fp32 or int8 (needs --calibration)")
    parser.add_argument("--sample", metavar="VIDEO",
                        help="a real clip (video with audio) to validate on; default: built-in speech and photos")
    parser.add_argument("--calibration", nargs="+", metavar="VIDEO", help="int8: real clips to calibrate on")
    parser.add_argument("--audiomae", help="paper profile: the AudioMAE checkpoint the model was trained with")
    parser.add_argument("--videomae", help="paper profile: the VideoMAE model folder the model was trained with")
    parser.add_argument("--opset", type=int, default=onnx_export.OPSET, help="ONNX opset (>= 17)")
    parser.add_argument("--tolerance", type=float, default=None,
                        help=f"largest relative error against PyTorch (default {onnx_export.TOLERANCE:g} for ONNX; "
                             f"engines: {', '.join(f'{k} {v:g}' for k, v in ENGINE_TOLERANCE.items())})")
    parser.add_argument("--batch", default="1,1,8", metavar="MIN,OPT,MAX",
                        help="engine: optimization profile of batch sizes (default 1,1,8)")
    parser.add_argument("--workspace-mib", type=int, default=engines.DEFAULT_WORKSPACE_MIB,
                        help=f"engine: TensorRT workspace limit (default {engines.DEFAULT_WORKSPACE_MIB}, fits a "
                             f"Jetson)")
    parser.set_defaults(func=run)
    return parser
