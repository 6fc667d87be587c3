"""The model dir: the one artifact that moves from training to the device and that field learning updates.

Layout:
    MODEL/CURRENT              name of the version in use (replaced atomically)
    MODEL/versions/v0001/      manifest.json, head.pt, memory.npz — one committed version each
    MODEL/.lock                held by a writer while it commits

A commit writes the whole version into a hidden temporary folder, fsyncs every file, renames the folder into
place and only then points CURRENT at it, so a crash at any moment leaves the last good version loadable.
The manifest holds every file's sha256; a version whose files do not match is refused.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import avcil
from avcil.features import FeatureShape
from avcil.model.head import FusionHead, HeadConfig
from avcil.train.memory import ExemplarMemory

FORMAT = 1
HEAD_FILE, MEMORY_FILE, MANIFEST_FILE = "head.pt", "memory.npz", "manifest.json"


class ModelDirError(RuntimeError):
    pass


@dataclass
class LoadedModel:
    version: str
    manifest: dict
    head: FusionHead
    memory: ExemplarMemory | None

    @property
    def class_names(self) -> list[str]:
        return [c["name"] for c in self.manifest["classes"]]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes) -> None:
    """Write aside, fsync, rename: readers see the old file or the new one, never a part."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        _write_synced(Path(tmp), data)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class ModelDir:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.versions = self.root / "versions"

    # Reading -----------------------------------------------------------------------------------------------
    def current(self) -> str:
        pointer = self.root / "CURRENT"
        if not pointer.is_file():
            raise ModelDirError(f"{self.root} is not a model dir: no CURRENT file (train one with `avcil train`)")
        return pointer.read_text().strip()

    def list_versions(self) -> list[str]:
        if not self.versions.is_dir():
            return []
        return sorted(p.name for p in self.versions.iterdir() if p.is_dir() and not p.name.startswith("."))

    def manifest(self, version: str | None = None) -> dict:
        folder = self.versions / (version or self.current())
        path = folder / MANIFEST_FILE
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            raise ModelDirError(f"{path}: missing manifest; this version is incomplete") from None
        except json.JSONDecodeError as e:
            raise ModelDirError(f"{path}: not valid JSON ({e}); this version is corrupt") from None

    def verify(self, version: str) -> dict:
        """The version's manifest, after checking every file it lists against its sha256."""
        manifest = self.manifest(version)
        folder = self.versions / version
        for name, expected in manifest["files"].items():
            path = folder / name
            if not path.is_file():
                raise ModelDirError(f"{path}: listed in the manifest but missing")
            if _sha256(path) != expected:
                raise ModelDirError(f"{path}: checksum mismatch (truncated or modified); refusing this version")
        return manifest

    def load(self, version: str | None = None) -> LoadedModel:
        version = version or self.current()
        manifest = self.verify(version)
        folder = self.versions / version
        config = HeadConfig(**manifest["head"]["config"])
        head = FusionHead(config, num_classes=len(manifest["classes"]))
        head.load_state_dict(torch.load(folder / HEAD_FILE, map_location="cpu", weights_only=True))
        head.eval()
        memory = None
        if MEMORY_FILE in manifest["files"]:
            with np.load(folder / MEMORY_FILE, allow_pickle=False) as arrays:
                memory = ExemplarMemory.from_arrays(manifest["memory"], dict(arrays),
                                                    FeatureShape.from_dict(manifest["features"]["shape"]))
        return LoadedModel(version, manifest, head, memory)

    # Writing -----------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _writer_lock(self):
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "w") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise ModelDirError(f"{self.root} is being written by another process (locked); try again") from None
            yield

    def commit(self, head: FusionHead, memory: ExemplarMemory | None, classes: list[dict], features: dict,
               extra: dict | None = None) -> str:
        """Write a new version and make it current. `classes`: [{name, step}] in logit order; `features`:
        {shape, profile, ...} as the encoders produce them."""
        names = [c["name"] for c in classes]
        if len(set(names)) != len(names):
            raise ModelDirError(f"duplicate class names in {names}")
        if len(classes) != head.num_classes:
            raise ModelDirError(f"{len(classes)} class names for a head with {head.num_classes} outputs")
        with self._writer_lock():
            self.versions.mkdir(parents=True, exist_ok=True)
            existing = self.list_versions()
            version = f"v{int(existing[-1][1:]) + 1 if existing else 1:04d}"
            staging = Path(tempfile.mkdtemp(prefix=f".{version}-", dir=self.versions))
            try:
                files = {HEAD_FILE: _tensor_bytes(head.state_dict())}
                if memory is not None:
                    files[MEMORY_FILE] = _npz_bytes(memory.to_arrays())
                for name, data in files.items():
                    _write_synced(staging / name, data)
                manifest = {
                    "format": FORMAT,
                    "version": version,
                    "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "avcil_version": avcil.__version__,
                    "torch_version": torch.__version__,
                    "classes": classes,
                    "features": features,
                    "head": {"config": head.config.to_dict()},
                    "memory": memory.settings() if memory is not None else None,
                    "files": {name: hashlib.sha256(data).hexdigest() for name, data in files.items()},
                    **(extra or {}),
                }
                _write_synced(staging / MANIFEST_FILE, json.dumps(manifest, indent=2).encode())
                _fsync_dir(staging)
                os.rename(staging, self.versions / version)
                _fsync_dir(self.versions)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
            atomic_write(self.root / "CURRENT", f"{version}\n".encode())
        return version


def _tensor_bytes(state: dict) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()
