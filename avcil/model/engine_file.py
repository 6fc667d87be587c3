"""The file an engine is kept in, and what ties it to a machine: a header (TensorRT version, GPU, the ONNX file it was
built from, the optimization profile) that every loader checks before deserialising.

    b"AVCILTRT"  uint32 little-endian header length  header (UTF-8 JSON)  serialized engine

Building engines is export's (`avcil.export.tensorrt`); reading them is the backends'. Only `import_tensorrt`,
`environment` and `current_gpu` need TensorRT or a GPU."""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path
from typing import Sequence

import avcil
from avcil.errors import AvcilError
from avcil.fileio import atomic_write, sha256_file

MAGIC = b"AVCILTRT"
HEADER_FORMAT = 1


class EngineError(AvcilError):
    """An engine that cannot be built or must not be loaded here; the message says why."""


def backend_input_shapes(profile: dict[str, dict[str, list[int]]], names: Sequence[str]) -> list[tuple]:
    """Each input's shape without the batch as a backend states it: None for an axis the profile lets vary."""
    return [tuple(None if low != high else opt for low, opt, high in
                  zip(profile[n]["min"][1:], profile[n]["opt"][1:], profile[n]["max"][1:])) for n in names]


def _cc(capability: Sequence[int]) -> str:
    return ".".join(str(c) for c in capability)


def make_header(*, environment: dict, precision: str, profile: dict, inputs: Sequence[str], outputs: Sequence[str],
                onnx_path: Path, workspace_mib: int) -> dict:
    return {"format": HEADER_FORMAT, **environment, "precision": precision, "profile": profile,
            "inputs": list(inputs), "outputs": list(outputs), "onnx_file": Path(onnx_path).name,
            "onnx_sha256": sha256_file(Path(onnx_path)), "workspace_mib": workspace_mib,
            "avcil": avcil.__version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def write_engine(path: Path, header: dict, engine: bytes) -> None:
    header_bytes = json.dumps(header, sort_keys=True).encode()
    atomic_write(Path(path), MAGIC + struct.pack("<I", len(header_bytes)) + header_bytes + bytes(engine))


def read_engine(path: Path) -> tuple[dict, bytes]:
    """The header and the serialized engine of an engine file written by `write_engine`."""
    path = Path(path)
    data = path.read_bytes()
    prefix = len(MAGIC) + 4
    if len(data) < prefix or not data.startswith(MAGIC):
        raise EngineError(f"{path}: not an avcil engine (no {MAGIC.decode()} header); build it with "
                          f"`avcil export --format engine`")
    (length,) = struct.unpack("<I", data[len(MAGIC):prefix])
    if len(data) < prefix + length:
        raise EngineError(f"{path}: truncated header ({len(data) - prefix} of {length} bytes)")
    try:
        header = json.loads(data[prefix:prefix + length])
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise EngineError(f"{path}: corrupt header ({e})") from None
    if header.get("format") != HEADER_FORMAT:
        raise EngineError(f"{path}: header format {header.get('format')!r}, this avcil reads {HEADER_FORMAT}")
    engine = data[prefix + length:]
    if not engine:
        raise EngineError(f"{path}: the header is there but the engine is missing (truncated file)")
    return header, engine


def check_header(header: dict, path: Path, environment: dict, onnx_path: Path | None = None) -> None:
    """Refuse an engine built under another TensorRT or GPU, or from another ONNX file than the one beside it."""
    problems = [f"built with {key} {header.get(key)!r}, this machine has {environment[key]!r}"
                for key in ("tensorrt", "gpu", "compute_capability") if header.get(key) != environment[key]]
    if onnx_path is not None and Path(onnx_path).is_file() and sha256_file(Path(onnx_path)) != header.get("onnx_sha256"):
        problems.append(f"built from another {Path(onnx_path).name} than the one beside it (sha256 differs)")
    if problems:
        raise EngineError(f"{path}: refusing this engine: " + "; ".join(problems)
                          + ". Rebuild it here with `avcil export --model DIR --format engine`.")


def import_tensorrt():
    try:
        import tensorrt
    except ImportError:
        raise EngineError("TensorRT is not installed (pip install tensorrt, or JetPack on a Jetson); "
                          "use the onnxruntime or torch backend instead") from None
    return tensorrt


def environment() -> dict:
    """What an engine is tied to: the TensorRT version and the GPU (name and compute capability)."""
    trt = import_tensorrt()
    name, capability = current_gpu()
    return {"tensorrt": trt.__version__, "gpu": name, "compute_capability": _cc(capability)}


def current_gpu() -> tuple[str, tuple[int, int]]:
    """Name and compute capability of CUDA device 0, through torch or, where torch has no CUDA, pycuda."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0), torch.cuda.get_device_capability(0)
    try:
        import pycuda.autoinit  # noqa: F401  (creates the context on device 0)
        import pycuda.driver as cuda
    except ImportError:
        raise EngineError("no CUDA GPU visible: torch has no CUDA and pycuda is not installed") from None
    device = cuda.Device(0)
    return device.name(), device.compute_capability()
