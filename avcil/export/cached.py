"""The encoders of a profile run in ONNX Runtime wherever a CPU encodes clips in bulk: extraction, `avcil learn
--files`, the page's learning, the demo.

    use_onnxruntime(profile, cache)     # True: profile.encode_batch now runs the exported graphs

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

from avcil.export.onnx import OPSET, TOLERANCE, ExportError, check_tolerance, export_graph, random_inputs, validate
from avcil.model.graphs import GRAPH_NAMES, dynamic_axes, graph_modules

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


def use_onnxruntime(profile, cache: Path, device: str = "cpu", when: str = "auto", threads: int | None = None) -> bool:
    """Point `profile.encode_batch` at ONNX Runtime sessions of its encoders, exported into the cache on first use;
    return whether it does. `when`: 'auto' (on a CPU, for the profiles of ON_CPU_BY_DEFAULT, where onnxruntime and
    onnx are installed), 'onnxruntime' (always; raises when it cannot) or 'torch' (never). A failed export or check
    under 'auto' leaves torch in place with a warning: it is slower, never wrong. `threads`: each call's intra-op
    threads (default: torch's count); extraction takes 1 and calls from one thread per core, which ran the lite
    encoders 11 % faster here than calls one after another on two threads each (14.7 against 13.2 clips/s)."""
    if when == "torch" or (when == "auto" and (device != "cpu" or profile.name not in ON_CPU_BY_DEFAULT)):
        return False
    try:
        sessions = _sessions(profile, cache_folder(profile, cache), threads)
    except (ImportError, ExportError, OSError, RuntimeError) as error:
        if when == "onnxruntime":
            raise
        log.warning("encoding in torch: the %s encoders could not run in ONNX Runtime (%s)", profile.name, error)
        return False
    profile.runtime = sessions
    return True


def _sessions(profile, folder: Path, threads: int | None) -> dict:
    """The encoders' ONNX Runtime backends from `folder`, exported and checked there first if it lacks them."""
    from avcil.backends import load_backend

    def load() -> dict:
        return {name: load_backend(folder / f"{name}.onnx", "onnxruntime", threads=threads) for name in GRAPH_NAMES}

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
