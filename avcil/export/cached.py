"""The encoders of a profile run in ONNX Runtime wherever a CPU encodes clips in bulk: extraction, `avcil learn
--files`, the page's learning, the demo.

    use_onnxruntime(profile, cache)     # True: profile.encode_batch now runs the exported graphs
    export_once(model_dir, profile, cache)   # a model dir's validated export, made once per profile

On this 2-core CPU ONNX Runtime runs the lite encoders 2.5 times as fast as torch does (78 against 195 ms a clip at
batch 2; benchmarks/results/profile-lite-cpu.md): it runs EfficientNet's depthwise convolutions and "same" padding
without torch's copies. The graphs are exported once per profile (its description, weights' checksums included, and
the torch and opset that traced them name the folder) into CACHE/onnx/, checked against torch on random inputs to
the export's tolerance, and reused by every later process. Features match torch's to that tolerance (relative 1e-4
of the output's range), as the exported encoders of `avcil export` do live.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from avcil.export.onnx import (OPSET, TOLERANCE, ExportError, check_fits, check_tolerance, export_graph, export_onnx,
                               random_inputs, replace_folder, validate)
from avcil.fileio import fsync_dir, sha256_file, write_synced
from avcil.model.graphs import ENCODERS_DIR, GRAPH_NAMES, REPORT_FILE, SPEC_FILE, dynamic_axes, graph_modules

log = logging.getLogger(__name__)

CACHE_DIR = "onnx"
# The profiles whose bulk encoding runs in ONNX Runtime on a CPU by default: those whose export takes seconds. The
# paper profile's two ViT-Bs would be exported (700 MB) on first use for a gain not measured.
ON_CPU_BY_DEFAULT = ("lite",)
BACKENDS = ("auto", "onnxruntime", "torch")


def cache_folder(profile, cache: Path) -> Path:
    """Where `profile`'s exported encoders are kept: one folder per description, torch version and opset."""
    identity = json.dumps({"profile": profile.describe(), "torch": torch.__version__, "opset": OPSET}, sort_keys=True)
    return Path(cache) / CACHE_DIR / f"{profile.name}-{hashlib.sha256(identity.encode()).hexdigest()[:16]}"


def use_onnxruntime(profile, cache: Path, device: str = "cpu", when: str = "auto") -> bool:
    """Point `profile.encode_batch` at ONNX Runtime sessions of its encoders, exported into the cache on first use;
    return whether it does. `when`: 'auto' (on a CPU, for the profiles of ON_CPU_BY_DEFAULT, where onnxruntime and
    onnx are installed), 'onnxruntime' (always; raises when it cannot) or 'torch' (never). A failed export or check
    under 'auto' leaves torch in place with a warning: it is slower, never wrong. Each session runs one intra-op
    thread, and bulk encoding keeps one call in flight per torch thread (`profile.concurrent_calls`; a learner
    capped at one thread: one call): on two cores this ran the lite encoders 11 % faster than calls one after
    another on two threads each (14.7 against 13.2 clips/s)."""
    if when == "torch" or (when == "auto" and (device != "cpu" or profile.name not in ON_CPU_BY_DEFAULT)):
        return False
    try:
        sessions = _sessions(profile, cache_folder(profile, cache))
    except (ImportError, ExportError, OSError, RuntimeError) as error:
        if when == "onnxruntime":
            raise
        log.warning("encoding in torch: the %s encoders could not run in ONNX Runtime (%s)", profile.name, error)
        return False
    profile.runtime = sessions
    profile.concurrent_calls = torch.get_num_threads()
    return True


def _sessions(profile, folder: Path) -> dict:
    """The encoders' ONNX Runtime backends from `folder`, exported and checked there first if it lacks them."""
    from avcil.backends import load_backend

    def load() -> dict:
        return {name: load_backend(folder / f"{name}.onnx", "onnxruntime", threads=1) for name in GRAPH_NAMES}

    if not all((folder / f"{name}.onnx").is_file() for name in GRAPH_NAMES):
        _export(profile, folder)
    try:
        return load()
    except Exception:  # noqa: BLE001 - a damaged cache file: export again, once
        shutil.rmtree(folder, ignore_errors=True)
        _export(profile, folder)
        return load()


def _export(profile, folder: Path) -> None:
    """Export and check the encoders in a staging folder beside `folder`, then rename it into place: a process that
    is killed, or another that exports at the same time, never leaves half a folder where a reader looks."""
    from avcil.backends import load_backend

    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        modules, rng, checked = graph_modules(profile), np.random.default_rng(0), {}
        for name in GRAPH_NAMES:
            module, spec, shapes = modules[name]
            path = staging / spec.file
            export_graph(module, [torch.from_numpy(x) for x in random_inputs(shapes, 2, rng)], path, spec,
                         dynamic=dynamic_axes(spec, profile.frames_independent))
            checked[name] = validate(module, load_backend(path, "onnxruntime"),
                                     {"random-batch3": random_inputs(shapes, 3, rng)})
        check_tolerance(checked, TOLERANCE, f"the {profile.name} encoders in ONNX Runtime")
        try:
            staging.rename(folder)
        except OSError:  # another process put its export there first; it is as good as this one
            shutil.rmtree(staging, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def export_once(model_dir: Path, profile, cache: Path) -> dict:
    """`export_onnx(model_dir, profile)` at its defaults, made once per profile: the validated export (graphs,
    spec and report) is kept in CACHE/onnx/ beside the bulk encoders' graphs and copied into the next model dir of
    the same profile, each graph's checksum checked against the spec. For the demo and the benchmarks, which make
    a new model dir per run (exporting and validating the lite graphs took 5-8 s of the demo's minute);
    `avcil export` always exports. Returns the export report."""
    model_dir = Path(model_dir)
    folder = cache_folder(profile, cache)
    kept = folder.with_name(folder.name + "-export")
    if not _whole(kept, set(graph_modules(profile))):
        report = export_onnx(model_dir, profile, progress=False)
        _copy_folder(model_dir / ENCODERS_DIR, kept)
        return report
    check_fits(model_dir, profile)
    _copy_folder(kept, model_dir / ENCODERS_DIR)
    return json.loads((kept / REPORT_FILE).read_text())


def _whole(folder: Path, names: set[str]) -> bool:
    """Whether a kept export has its spec, its report and the graphs `names` (an export made by an avcil that
    exported fewer graphs lacks some), each unchanged."""
    try:
        graphs = json.loads((folder / SPEC_FILE).read_text())["graphs"]
        return (folder / REPORT_FILE).is_file() and set(graphs) == names and all(
            sha256_file(folder / graph["file"]) == graph["sha256"] for graph in graphs.values())
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _copy_folder(source: Path, target: Path) -> None:
    """Copy a folder's files into a staging folder beside `target`, then put it in place whole
    (avcil.export.onnx.replace_folder): a reader never finds half of it."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        for path in source.iterdir():
            if path.is_file() and not path.is_symlink():
                write_synced(staging / path.name, path.read_bytes())
        fsync_dir(staging)
        replace_folder(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
