"""The model dir: the one artifact that moves from training to the device and that field learning updates.

Layout:
    MODEL/CURRENT              name of the version in use (replaced atomically)
    MODEL/versions/v0001/      manifest.json, head.pt — one committed version each
    MODEL/exemplars/SHA.npz    one class's exemplars (ids, audio, visual), named by the sha256 of the file
    MODEL/.lock                held by a writer while it commits

Exemplar files are shared between versions: a version's manifest lists, per class, a file and how many of its
first rows the class keeps (a class only ever loses its last exemplars when the memory makes room), so learning a
class writes that class's exemplars and not the whole memory again (340 MB a version for the lite AVE budget,
1.6 GB for the paper profile's). Format-1 versions, with the whole memory in their own memory.npz, still load.

A commit writes the whole version into a hidden temporary folder, fsyncs every file, renames the folder into
place and only then points CURRENT at it, so a crash at any moment leaves the last good version loadable.
The manifest holds every file's sha256; a version whose files do not match is refused, and `load()` then falls
back to the newest older version that verifies (saying so), so that a damaged file never stops a device.
A writer (commit, rollback, field learning) holds MODEL/.lock for its whole read-modify-commit, so that two
writers cannot both build on the same version; leftovers of a writer that was killed are removed by the next one.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import os
import re
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

import avcil
from avcil.errors import AvcilError
from avcil.features import FeatureShape
from avcil.fileio import atomic_write, fsync_dir, sha256_file, write_synced
from avcil.model.head import FusionHead, HeadConfig
from avcil.model.memory import ClassExemplars, ExemplarMemory

FORMAT = 2  # 1: the whole memory in the version's memory.npz; 2: shared per-class exemplar files
HEAD_FILE, MEMORY_FILE, MANIFEST_FILE = "head.pt", "memory.npz", "manifest.json"
EXEMPLARS_DIR = "exemplars"
# The only names the writer produces. A model dir is copied onto devices from elsewhere: a version or file name of
# any other shape (`../x`, an absolute path) is refused as corrupt before it is joined to a path.
VERSION_NAME = re.compile(r"v\d{4,}")
EXEMPLAR_NAME = re.compile(r"[0-9a-f]{64}\.npz")
VERSION_FILES = (HEAD_FILE, MEMORY_FILE)


class ModelDirError(AvcilError, RuntimeError):
    pass


@dataclass
class LoadedModel:
    version: str
    manifest: dict
    head: FusionHead
    memory: ExemplarMemory | None
    # Newer versions that were refused on the way to this one: {version: reason}.
    refused: dict[str, str] = field(default_factory=dict)

    @property
    def class_names(self) -> list[str]:
        return [c["name"] for c in self.manifest["classes"]]


class ModelDir:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.versions = self.root / "versions"
        self.exemplars = self.root / EXEMPLARS_DIR
        self._lock_depth = 0

    # Reading -----------------------------------------------------------------------------------------------
    def current(self) -> str:
        pointer = self.root / "CURRENT"
        if not pointer.is_file():
            raise ModelDirError(f"{self.root} is not a model dir: no CURRENT file (train one with `avcil train`)")
        name = pointer.read_text().strip()
        if not VERSION_NAME.fullmatch(name):
            raise ModelDirError(f"{pointer}: names {name[:40]!r}, not a version (vNNNN); the file is corrupt")
        return name

    def list_versions(self) -> list[str]:
        if not self.versions.is_dir():
            return []
        return sorted(p.name for p in self.versions.iterdir() if p.is_dir() and VERSION_NAME.fullmatch(p.name))

    def manifest(self, version: str | None = None) -> dict:
        folder = self.versions / _checked_version(version or self.current())
        path = folder / MANIFEST_FILE
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            raise ModelDirError(f"{path}: missing manifest; this version is incomplete") from None
        except json.JSONDecodeError as e:
            raise ModelDirError(f"{path}: not valid JSON ({e}); this version is corrupt") from None

    def verify(self, version: str, skip: tuple[str, ...] = (), verified: set | None = None) -> dict:
        """The version's manifest, after checking every file it lists (but `skip`; MEMORY_FILE in `skip` also
        skips the shared exemplar files) against its sha256. `verified`: (path, sha256) pairs already checked, so
        that going through several versions hashes each shared file once; filled as files pass."""
        manifest = self.manifest(version)
        folder = self.versions / version
        if not isinstance(manifest.get("files"), dict) or HEAD_FILE not in manifest["files"]:
            raise ModelDirError(f"{folder / MANIFEST_FILE}: lists no {HEAD_FILE}; this version is incomplete")
        strange = [n for n in manifest["files"] if n not in VERSION_FILES]
        strange += [e.get("file") for e in manifest.get("exemplars", [])
                    if not EXEMPLAR_NAME.fullmatch(str(e.get("file")))]
        if strange:
            raise ModelDirError(f"{folder / MANIFEST_FILE}: names files {strange[:3]} that the writer never "
                                f"produces (outside the model dir?); refusing {version} as corrupt")
        expected = {folder / name: sha for name, sha in manifest["files"].items() if name not in skip}
        if MEMORY_FILE not in skip:
            expected.update({self.exemplars / entry["file"]: Path(entry["file"]).stem
                             for entry in manifest.get("exemplars", [])})
        verified = set() if verified is None else verified
        for path, sha in expected.items():
            if (path, sha) in verified:
                continue
            if not path.is_file():
                raise ModelDirError(f"{path}: listed in the manifest of {version} but missing")
            if sha256_file(path) != sha:
                raise ModelDirError(f"{path}: checksum mismatch (truncated or modified); refusing {version}")
            verified.add((path, sha))
        return manifest

    def load(self, version: str | None = None, with_memory: bool = True) -> LoadedModel:
        """A verified version: `version` exactly, or (by default) the current one — falling back to the newest
        older version that verifies when the current one is corrupt or partial (the refusals are kept in
        `refused` and warned about). `with_memory=False` skips reading (and checksumming) the exemplar memory,
        which the recognizer does not need."""
        if version is not None:
            return self._load(version, with_memory)
        refused: dict[str, str] = {}
        try:
            current = self.current()
            candidates = [current] + [v for v in reversed(self.list_versions()) if v < current]
        except ModelDirError as error:
            if not (self.root / "CURRENT").is_file():
                raise
            refused["CURRENT"] = str(error)  # a damaged pointer: the newest version that verifies serves
            candidates = list(reversed(self.list_versions()))
        for candidate in candidates:
            try:
                loaded = self._load(candidate, with_memory)
            except ModelDirError as error:
                refused[candidate] = str(error)
                continue
            if refused:
                warnings.warn(f"{self.root}: refused {', '.join(f'{v} ({why})' for v, why in refused.items())}; "
                              f"using the last good version {candidate}", stacklevel=2)
            loaded.refused = refused
            return loaded
        raise ModelDirError(f"{self.root}: no loadable version; "
                            + "; ".join(f"{v}: {why}" for v, why in refused.items()))

    def _load(self, version: str, with_memory: bool) -> LoadedModel:
        if not (self.versions / _checked_version(version)).is_dir():
            raise ModelDirError(f"{self.versions / version}: no such version (have {', '.join(self.list_versions())})")
        skip = () if with_memory else (MEMORY_FILE,)
        manifest = self.verify(version, skip)
        folder = self.versions / version
        config = HeadConfig(**manifest["head"]["config"])
        head = FusionHead(config, num_classes=len(manifest["classes"]))
        head.load_state_dict(torch.load(folder / HEAD_FILE, map_location="cpu", weights_only=True))
        head.eval()
        memory = None
        shape = FeatureShape.from_dict(manifest["features"]["shape"])
        if with_memory and MEMORY_FILE in manifest["files"]:  # format 1
            with np.load(folder / MEMORY_FILE, allow_pickle=False) as arrays:
                memory = ExemplarMemory.from_arrays(manifest["memory"], dict(arrays), shape)
        elif with_memory and manifest.get("memory") is not None:
            memory = ExemplarMemory(**manifest["memory"])
            for entry in manifest["exemplars"]:
                memory.classes[int(entry["label"])] = self._read_exemplars(entry["file"], entry["count"], shape)
        return LoadedModel(version, manifest, head, memory)

    def _read_exemplars(self, name: str, count: int, shape: FeatureShape) -> ClassExemplars:
        with np.load(self.exemplars / name, allow_pickle=False) as arrays:
            if len(arrays["ids"]) < count:
                raise ModelDirError(f"{self.exemplars / name}: holds {len(arrays['ids'])} exemplars, the manifest "
                                    f"keeps {count}")
            exemplars = ClassExemplars([str(i) for i in arrays["ids"]], arrays["audio"], arrays["visual"], name)
        shape.check(exemplars.audio[0], exemplars.visual[0], f"exemplars {self.exemplars / name}")
        return exemplars.head(count)

    def describe_versions(self) -> list[dict]:
        """One row per version, oldest first: version, current, ok, classes, created, parent, note (the reason
        when it does not verify)."""
        current = self.current() if (self.root / "CURRENT").is_file() else None
        rows, verified = [], set()
        for version in self.list_versions():
            row = {"version": version, "current": version == current, "ok": True}
            try:
                manifest = self.verify(version, verified=verified)
                row.update(classes=[c["name"] for c in manifest["classes"]], created=manifest.get("created"),
                           parent=manifest.get("parent"), note=manifest.get("note", ""))
            except ModelDirError as error:
                row.update(ok=False, classes=None, created=None, parent=None, note=str(error))
            rows.append(row)
        return rows

    # Writing -----------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def writer(self):
        """Hold the writer lock (non-blocking: a second writer gets a clear error) for a read-modify-commit.
        Commits and rollbacks inside it do not take it again. Leftovers of a killed writer are removed here."""
        if self._lock_depth:
            self._lock_depth += 1
            try:
                yield self
            finally:
                self._lock_depth -= 1
            return
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "w") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise ModelDirError(f"{self.root} is being written by another process (locked); try again") from None
            self._remove_leftovers()
            self._lock_depth = 1
            try:
                yield self
            finally:
                self._lock_depth = 0

    def _remove_leftovers(self) -> None:
        """Staging folders, aside-files and exemplar files no version lists, of a writer killed mid-commit (safe:
        we hold the lock, so no commit is under way)."""
        for path in [*self.root.glob(".CURRENT.*"), *(self.versions.glob(".v*") if self.versions.is_dir() else []),
                     *self._unlisted_exemplars()]:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)

    def _unlisted_exemplars(self) -> list[Path]:
        """Exemplar files (and their aside-files) that no version lists; none when a manifest cannot be read,
        since its files are then unknown."""
        if not self.exemplars.is_dir():
            return []
        listed = set()
        for version in self.list_versions():
            try:
                listed.update(entry["file"] for entry in self.manifest(version).get("exemplars", []))
            except ModelDirError:
                return []
        return [p for p in self.exemplars.iterdir() if p.name not in listed]

    def rollback(self, version: str | None = None) -> str:
        """Point CURRENT at `version` (default: the newest good version older than the current one), after
        verifying it. Nothing is deleted: a later `rollback VERSION` can go forward again."""
        with self.writer():
            current = self.current()
            if version is None:
                older = [v for v in reversed(self.list_versions()) if v < current]
                for candidate in older:
                    try:
                        self.verify(candidate)
                    except ModelDirError:
                        continue
                    version = candidate
                    break
                else:
                    raise ModelDirError(f"{self.root}: no good version older than {current} to roll back to")
            self.verify(version)
            atomic_write(self.root / "CURRENT", f"{version}\n".encode())
        return version

    def commit(self, head: FusionHead, memory: ExemplarMemory | None, classes: list[dict], features: dict,
               extra: dict | None = None) -> str:
        """Write a new version and make it current. `classes`: [{name, step}] in logit order; `features`:
        {shape, profile, ...} as the encoders produce them."""
        names = [c["name"] for c in classes]
        if len(set(names)) != len(names):
            raise ModelDirError(f"duplicate class names in {names}")
        if len(classes) != head.num_classes:
            raise ModelDirError(f"{len(classes)} class names for a head with {head.num_classes} outputs")
        with self.writer():
            self.versions.mkdir(parents=True, exist_ok=True)
            existing = self.list_versions()
            version = f"v{int(existing[-1][1:]) + 1 if existing else 1:04d}"
            exemplars = self._write_exemplars(memory) if memory is not None else []
            staging = Path(tempfile.mkdtemp(prefix=f".{version}-", dir=self.versions))
            try:
                files = {HEAD_FILE: _tensor_bytes(head.state_dict())}
                for name, data in files.items():
                    write_synced(staging / name, data)
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
                    "exemplars": exemplars,
                    "files": {name: hashlib.sha256(data).hexdigest() for name, data in files.items()},
                    **(extra or {}),
                }
                write_synced(staging / MANIFEST_FILE, json.dumps(manifest, indent=2).encode())
                fsync_dir(staging)
                os.rename(staging, self.versions / version)
                fsync_dir(self.versions)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
            atomic_write(self.root / "CURRENT", f"{version}\n".encode())
        return version


    def _write_exemplars(self, memory: ExemplarMemory) -> list[dict]:
        """Per class, the exemplar file that holds its exemplars as first rows and how many it keeps: the file it
        was loaded from when that is still here, else a new one (named by its sha256, written atomically)."""
        self.exemplars.mkdir(exist_ok=True)
        entries = []
        for label, exemplars in sorted(memory.classes.items()):
            if exemplars.stored_as is None or not (self.exemplars / exemplars.stored_as).is_file():
                data = _npz_bytes({"ids": np.asarray(exemplars.ids), "audio": exemplars.audio,
                                   "visual": exemplars.visual})
                exemplars.stored_as = f"{hashlib.sha256(data).hexdigest()}.npz"
                if not (self.exemplars / exemplars.stored_as).is_file():
                    atomic_write(self.exemplars / exemplars.stored_as, data)
            entries.append({"label": int(label), "file": exemplars.stored_as, "count": len(exemplars.ids)})
        return entries


def _checked_version(name: str) -> str:
    if not VERSION_NAME.fullmatch(str(name)):
        raise ModelDirError(f"{name!r} is not a version name (vNNNN)")
    return name


def _tensor_bytes(state: dict) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()
