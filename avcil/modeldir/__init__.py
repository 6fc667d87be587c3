"""The model dir: the one artifact that moves from training to the device and that field learning updates.

Layout:
    MODEL/CURRENT              name of the version in use (replaced atomically)
    MODEL/versions/v0001/      manifest.json, head.pt — one committed version each
    MODEL/exemplars/SHA.npz    one class's exemplars (ids, audio, visual), named by the sha256 of the file
    MODEL/statistics/SHA.npy   the analytic readout's Gram matrix, or rows added to it (avcil/modeldir/statistics.py)
    MODEL/.staged              names a writer is creating (avcil/modeldir/staged.py), present while it commits

Exemplar files are shared between versions: a version's manifest lists, per class, a file and how many of its
first rows the class keeps (a class only ever loses its last exemplars when the memory makes room), so learning a
class writes that class's exemplars and not the whole memory again (340 MB a version for the lite AVE budget,
1.6 GB for the paper profile's). Format-1 versions, with the whole memory in their own memory.npz, still load.
The analytic readout's Gram matrix is shared the same way (format 3): a version lists a base file and the rows
learnt since, so a field class adds its clips' rows (8 KB a clip at lite's width) rather than the 16 MB matrix;
format-1 and -2 versions, with the matrix inside head.pt, still load.

A commit writes the whole version into a hidden temporary folder, fsyncs every file, renames the folder into
place and only then points CURRENT at it, so a crash at any moment leaves the last good version loadable.
The manifest holds every file's sha256 and its own; a version whose manifest (avcil/modeldir/schema.py), head or
statistics files do not check out is refused, and `load()` then falls back to the newest older version that does
(saying so), so that a damaged file never stops a device. A damaged exemplar file costs the exemplars it holds, not
the version: recognition goes on, learning is refused until `avcil model repair` commits a version without them.
Every file is reached without following a symbolic link (avcil/modeldir/confined.py): nothing the model dir reads,
writes or removes lies outside it. A writer (commit, rollback, repair, field learning) holds a flock on the model
dir's folder for its whole read-modify-commit (avcil/modeldir/lock.py), so that two writers cannot both build on
the same version; what a killed writer staged is removed by the next one, and nothing else.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import time
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

import avcil
from avcil.errors import AvcilError, ModelDirError
from avcil.features import FeatureShape
from avcil.model.head import FusionHead, load_head
from avcil.model.memory import ClassExemplars, ExemplarMemory
from avcil.modeldir.confined import Confined
from avcil.modeldir.lock import writer_lock
from avcil.modeldir.schema import (EXEMPLAR_NAME, EXEMPLARS_DIR, ManifestKey, HEAD_FILE, MANIFEST_FILE,
                                   MANIFEST_LIMIT, MEMORY_FILE, POINTER_LIMIT, SEAL, STATISTICS_DIR, VERSION_FILES,
                                   VERSION_NAME, check_manifest, check_pointer, parse_manifest, seal_of)
from avcil.modeldir.shared import is_shared_file, write_shared
from avcil.modeldir.staged import STAGED_FILE, clear_staged, stage, staged_names
from avcil.modeldir.statistics import (gram_files, has_gram, head_state, read_grams, restore_stored, write_gram)

__all__ = ["ModelDir", "ModelDirError", "LoadedModel", "check_manifest", "EXEMPLAR_NAME", "VERSION_NAME",
           "VERSION_FILES", "HEAD_FILE", "MEMORY_FILE", "MANIFEST_FILE"]

FORMAT = 3  # the formats it reads: avcil/modeldir/schema.py FORMATS
VERSIONS_DIR, POINTER = "versions", "CURRENT"
# The names of the model dir's own top level that a writer touches (CURRENT.tmp: earlier writers' aside-file).
OWN_NAMES = (POINTER, STAGED_FILE, "CURRENT.tmp", VERSIONS_DIR, EXEMPLARS_DIR, STATISTICS_DIR)
# What a hostile file with a matching checksum can raise from numpy's reader: a refusal of the file, not a bug.
UNREADABLE = (OSError, ValueError, KeyError, IndexError, TypeError, EOFError, zipfile.BadZipFile, AvcilError)


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
        return [c["name"] for c in self.manifest[ManifestKey.CLASSES]]


class ModelDir:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.versions = self.root / VERSIONS_DIR
        self.exemplars = self.root / EXEMPLARS_DIR
        self.statistics = self.root / STATISTICS_DIR
        self.files = Confined(self.root)

    def repair_hint(self) -> str:
        return f"`avcil model repair --model {self.root}`"

    # Reading -----------------------------------------------------------------------------------------------
    def current(self) -> str:
        if self.files.kind(POINTER) is None:
            raise ModelDirError(f"{self.root} is not a model dir: no CURRENT file (train one with `avcil train`)")
        return check_pointer(self.files.read_bytes(POINTER, POINTER_LIMIT), str(self.root / POINTER))

    def list_versions(self) -> list[str]:
        """The version names in versions/ (whatever they are: a link or a file there is refused when loaded)."""
        if self.files.kind(VERSIONS_DIR) is None:
            return []
        return [name for name in self.files.listdir(VERSIONS_DIR) if VERSION_NAME.fullmatch(name)]

    def manifest(self, version: str | None = None) -> dict:
        """The checked manifest of `version`; by default of the version that serves (see `load`)."""
        if version is None:
            return self.load(with_memory=False).manifest
        relative = f"{self._version_folder(version)}/{MANIFEST_FILE}"
        try:
            data = self.files.read_bytes(relative, MANIFEST_LIMIT)
        except FileNotFoundError:
            raise ModelDirError(f"{self.root / relative}: missing manifest; this version is incomplete") from None
        return parse_manifest(data, str(self.root / relative))

    def _version_folder(self, version: str) -> str:
        relative = f"{VERSIONS_DIR}/{_checked_version(version)}"
        kind = self.files.kind(relative)
        if kind == "link":
            raise self.files.link_refusal(relative)
        if kind != "dir":
            raise ModelDirError(f"{self.root / relative}: no such version (have {', '.join(self.list_versions())})")
        return relative

    def _check_file(self, relative: str, sha: str, version: str, verified: set) -> None:
        if (relative, sha) in verified:
            return
        try:
            matches = self.files.sha256(relative) == sha
        except FileNotFoundError:
            raise ModelDirError(f"{self.root / relative}: listed in the manifest of {version} but missing") from None
        if not matches:
            raise ModelDirError(f"{self.root / relative}: checksum mismatch (truncated or modified); refusing "
                                f"{version}")
        verified.add((relative, sha))

    def verify(self, version: str, verified: set | None = None) -> dict:
        """The version's manifest, after checking it, the head file and the statistics files against their sha256:
        what serving needs. The exemplar memory is checked apart (`damaged_exemplars`). `verified`: (path, sha256)
        pairs already checked, so that going through several versions hashes each file once (a shared file among
        them); filled as files pass."""
        manifest = self.manifest(version)
        verified = set() if verified is None else verified
        self._check_file(f"{self._version_folder(version)}/{HEAD_FILE}", manifest[ManifestKey.FILES][HEAD_FILE],
                         version, verified)
        for name in gram_files(manifest.get(ManifestKey.GRAM)):
            self._check_file(f"{STATISTICS_DIR}/{name}", Path(name).stem, version, verified)
        return manifest

    def damaged_exemplars(self, version: str, manifest: dict, verified: set | None = None) -> dict[int, str]:
        """{label: why} for each class whose exemplars do not match their checksum (all of them for a damaged
        format-1 memory.npz); {} when the memory is whole."""
        verified = set() if verified is None else verified
        damaged = {}
        for label, relative, sha in self._memory_files(version, manifest):
            try:
                self._check_file(relative, sha, version, verified)
            except (ModelDirError, OSError) as error:
                damaged[label] = str(error)
        return damaged

    def _memory_files(self, version: str, manifest: dict) -> list[tuple[int, str, str]]:
        """(label, path, sha256) of each file that holds exemplars of the version's classes."""
        if MEMORY_FILE in manifest[ManifestKey.FILES]:  # format 1: one file holds every class
            relative = f"{self._version_folder(version)}/{MEMORY_FILE}"
            return [(label, relative, manifest[ManifestKey.FILES][MEMORY_FILE])
                    for label in range(len(manifest[ManifestKey.CLASSES]))]
        return [(entry["label"], f"{EXEMPLARS_DIR}/{entry['file']}", Path(entry["file"]).stem)
                for entry in manifest.get(ManifestKey.EXEMPLARS, [])]

    def load(self, version: str | None = None, with_memory: bool = True) -> LoadedModel:
        """A verified version: `version` exactly, or (by default) the current one — falling back to the newest
        older version that verifies when the current one is corrupt or partial (the refusals are kept in
        `refused` and warned about). `with_memory=False` skips reading (and checksumming) the exemplar memory,
        which the recognizer does not need; with it, damaged exemplars are refused naming `avcil model repair`."""
        if version is not None:
            loaded = self._load(version)
        else:
            loaded = self._load_serving()
        if with_memory:
            memory, damaged = self._read_memory(loaded.version, loaded.manifest)
            self._refuse_damaged(loaded, damaged)
            loaded.memory = memory
        return loaded

    def check_exemplars(self, loaded: LoadedModel) -> None:
        """Refuse, naming `avcil model repair`, a version whose exemplar files fail their checksums: learning
        checks this before it records or encodes anything."""
        self._refuse_damaged(loaded, self.damaged_exemplars(loaded.version, loaded.manifest))

    def _refuse_damaged(self, loaded: LoadedModel, damaged: dict[int, str]) -> None:
        if damaged:
            names = ", ".join(repr(loaded.class_names[label]) for label in sorted(damaged))
            raise ModelDirError(f"the exemplars of {names} in {loaded.version} are damaged "
                                f"({next(iter(damaged.values()))}); learning needs them: run "
                                f"{self.repair_hint()} to drop them (recognition is not affected)")

    def _load_serving(self) -> LoadedModel:
        refused: dict[str, str] = {}
        try:
            current = self.current()
            candidates = [current] + [v for v in reversed(self.list_versions()) if v < current]
        except ModelDirError as error:
            if self.files.kind(POINTER) is None:
                raise
            refused[POINTER] = str(error)  # a damaged pointer: the newest version that verifies serves
            candidates = list(reversed(self.list_versions()))
        for candidate in candidates:
            try:
                loaded = self._load(candidate)
            except ModelDirError as error:
                refused[candidate] = str(error)
                continue
            if refused:
                warnings.warn(f"{self.root}: refused {', '.join(f'{v} ({why})' for v, why in refused.items())}; "
                              f"using the last good version {candidate}", stacklevel=3)
            loaded.refused = refused
            return loaded
        raise ModelDirError(f"{self.root}: no loadable version; "
                            + ("; ".join(f"{v}: {why}" for v, why in refused.items()) or "versions/ is empty"))

    def _load(self, version: str) -> LoadedModel:
        """The version's manifest and head, without its memory."""
        manifest = self.verify(version)
        relative = f"{self._version_folder(version)}/{HEAD_FILE}"
        gram = manifest.get(ManifestKey.GRAM)
        try:
            with self.files.open_read(relative) as file:
                state = torch.load(file, map_location="cpu", weights_only=True)
            head = load_head(manifest[ManifestKey.HEAD]["config"], state, len(manifest[ManifestKey.CLASSES]),
                             _trained_by_gradient(manifest),
                             # format 3: the Gram matrices are kept in shared statistics files
                             (lambda head: self._read_grams(gram, head, version)) if gram is not None else None)
            if gram is not None:
                restore_stored(head, gram)
        except ModelDirError:
            raise
        except Exception as error:  # noqa: BLE001 - a hostile file can fail anywhere in torch: refuse the version
            reason = str(error).strip().splitlines()[0][:120] if str(error).strip() else type(error).__name__
            raise ModelDirError(f"{self.root / relative}: does not load as the head its manifest describes "
                                f"({reason}); refusing {version}") from None
        head.eval()
        return LoadedModel(version, manifest, head, None)

    def _read_grams(self, entry: dict, head: FusionHead, version: str) -> dict[str, torch.Tensor]:
        try:
            return read_grams(self.files, entry, head)
        except (ModelDirError, OSError) as error:
            raise ModelDirError(f"{error}; refusing {version}") from None

    def _read_memory(self, version: str, manifest: dict) -> tuple[ExemplarMemory | None, dict[int, str]]:
        """The version's exemplar memory without the classes whose exemplars are damaged, and {label: why} of
        those. A file is damaged when it fails its checksum or does not read as the exemplars it should hold."""
        if manifest.get(ManifestKey.MEMORY) is None:
            return None, {}
        damaged = self.damaged_exemplars(version, manifest)
        shape = FeatureShape.from_dict(manifest[ManifestKey.FEATURES]["shape"])
        if MEMORY_FILE in manifest[ManifestKey.FILES]:  # format 1
            if damaged:
                return ExemplarMemory(**manifest[ManifestKey.MEMORY]), damaged
            relative = f"{self._version_folder(version)}/{MEMORY_FILE}"
            try:
                with self.files.open_read(relative) as file, np.load(file, allow_pickle=False) as arrays:
                    return ExemplarMemory.from_arrays(manifest[ManifestKey.MEMORY], dict(arrays), shape), {}
            except UNREADABLE as error:
                why = f"{self.root / relative}: does not read as an exemplar memory ({error})"
                return ExemplarMemory(**manifest[ManifestKey.MEMORY]), {
                    label: why for label in range(len(manifest[ManifestKey.CLASSES]))}
        memory = ExemplarMemory(**manifest[ManifestKey.MEMORY])
        for entry in manifest[ManifestKey.EXEMPLARS]:
            if entry["label"] in damaged:
                continue
            try:
                memory.classes[entry["label"]] = self._read_exemplars(entry["file"], entry["count"], shape)
            except UNREADABLE as error:
                damaged[entry["label"]] = f"{self.exemplars / entry['file']}: {error}"
        return memory, damaged

    def _read_exemplars(self, name: str, count: int, shape: FeatureShape) -> ClassExemplars:
        with self.files.open_read(f"{EXEMPLARS_DIR}/{name}") as file, np.load(file, allow_pickle=False) as arrays:
            ids, audio, visual = arrays["ids"], arrays["audio"], arrays["visual"]
            if not len(ids) >= count or len(audio) < count or len(visual) < count:
                raise ModelDirError(f"holds {len(ids)} exemplars, the manifest keeps {count}")
            exemplars = ClassExemplars([str(i) for i in ids], audio, visual, name)
        shape.check(exemplars.audio[0], exemplars.visual[0], f"exemplars {self.exemplars / name}")
        return exemplars.head(count)

    def describe_versions(self) -> list[dict]:
        """One row per version, oldest first: version, current, serving (the one `load()` picks), ok, classes,
        created, parent, note (the reason when it does not verify), exemplars_damaged ([{class, reason}]: learning
        is refused until `avcil model repair`)."""
        try:
            current = self.current()
        except ModelDirError:
            current = None
        rows, verified = [], set()
        for version in self.list_versions():
            row = {"version": version, "current": version == current, "serving": False, "ok": True,
                   "exemplars_damaged": []}
            try:
                manifest = self.verify(version, verified=verified)
                damaged = self.damaged_exemplars(version, manifest, verified=verified)
                row.update(classes=[c["name"] for c in manifest[ManifestKey.CLASSES]],
                           created=manifest.get(ManifestKey.CREATED), parent=manifest.get(ManifestKey.PARENT),
                           note=manifest.get(ManifestKey.NOTE) or "",
                           exemplars_damaged=[{"class": manifest[ManifestKey.CLASSES][label]["name"], "reason": why}
                                              for label, why in sorted(damaged.items())])
            except ModelDirError as error:
                row.update(ok=False, classes=None, created=None, parent=None, note=str(error))
            rows.append(row)
        good = [row for row in rows if row["ok"] and (current is None or row["version"] <= current)]
        if good:
            good[-1]["serving"] = True
        return rows

    # Writing -----------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def writer(self, wait_s: float = 0.0, on_wait=None):
        """Hold the writer lock for a read-modify-commit: a second writer waits up to `wait_s` seconds (`on_wait`
        is called as it starts waiting), then gets a clear error. Commits, rollbacks and repairs inside it do not
        take it again. Taking it refuses a model dir with a link among its own files and removes what a killed
        writer staged."""
        if not self.root.is_dir():
            raise ModelDirError(f"{self.root} is not a model dir: no such folder")
        with writer_lock(self.root, wait_s, on_wait) as fresh:
            if fresh:
                self._refuse_links()
                self._remove_leftovers()
            yield self

    def _refuse_links(self) -> None:
        """A writer creates files inside versions/, exemplars/ and statistics/ and replaces CURRENT: a link among
        them would take its writes (or, through a shared folder, another model dir's files) outside the model dir."""
        for name in OWN_NAMES:
            if self.files.kind(name) == "link":
                raise self.files.link_refusal(name)
        for version in self.files.listdir(VERSIONS_DIR) if self.files.kind(VERSIONS_DIR) == "dir" else []:
            folder = f"{VERSIONS_DIR}/{version}"
            kind = self.files.kind(folder)
            if kind == "link":
                raise self.files.link_refusal(folder)
            for name in self.files.listdir(folder) if kind == "dir" else []:
                if self.files.kind(f"{folder}/{name}") == "link":
                    raise self.files.link_refusal(f"{folder}/{name}")

    def _remove_leftovers(self) -> None:
        """What killed writers staged and no version lists (safe: we hold the lock, so no commit is under way).
        A shared file (exemplars, statistics) is kept while a manifest cannot be read, since that version may list
        it; its name stays staged for a later writer."""
        names = staged_names(self.files)
        if not names:
            clear_staged(self.files)
            return
        listed = self._listed_shared_files()
        kept = []
        for relative in names:
            if is_shared_file(relative):
                if listed is None:
                    kept.append(relative)
                    continue
                if relative in listed:  # the killed writer's version was committed after all
                    continue
            self.files.remove(relative)
        clear_staged(self.files)
        for relative in kept:
            stage(self.files, relative)

    def _listed_shared_files(self) -> set[str] | None:
        """Every shared file some version lists (its path in the model dir); None when a manifest cannot be read."""
        listed = set()
        for version in self.list_versions():
            try:
                manifest = self.manifest(version)
            except ModelDirError:
                return None
            listed.update(f"{EXEMPLARS_DIR}/{entry['file']}" for entry in manifest.get(ManifestKey.EXEMPLARS, []))
            listed.update(f"{STATISTICS_DIR}/{name}" for name in gram_files(manifest.get(ManifestKey.GRAM)))
        return listed

    def rollback(self, version: str | None = None) -> str:
        """Point CURRENT at `version` (default: the newest good version older than the one that serves), after
        loading its head. Nothing is deleted: a later `rollback VERSION` can go forward again."""
        with self.writer():
            if version is None:
                serving = self._load_serving().version
                for candidate in [v for v in reversed(self.list_versions()) if v < serving]:
                    try:
                        self._load(candidate)
                    except ModelDirError:
                        continue
                    version = candidate
                    break
                else:
                    raise ModelDirError(f"{self.root}: no good version older than {serving} to roll back to")
            self._load(version)
            self._point_current_at(version)
        return version

    def repair(self) -> dict:
        """Commit the serving version again without the exemplars that are damaged, so that learning can go on
        (the head is kept as it is); also when CURRENT or a newer version is refused, so that CURRENT points at a
        whole version again. {"version", "parent", "dropped": [class names], "refused": {version: why}}; "version"
        is None when nothing needed repair."""
        with self.writer():
            loaded = self._load_serving()
            memory, damaged = self._read_memory(loaded.version, loaded.manifest)
            dropped = [loaded.class_names[label] for label in sorted(damaged)]
            if not damaged and not loaded.refused:
                return {"version": None, "parent": loaded.version, "dropped": [], "refused": {}}
            note = (f"repaired {loaded.version}: dropped the damaged exemplars of {', '.join(map(repr, dropped))}"
                    if dropped else f"repaired: {loaded.version} again, after refused versions")
            version = self.commit_after(loaded, loaded.head, memory, note, {ManifestKey.REPAIR: {
                "dropped_exemplars_of": dropped, "refused": loaded.refused}})
        return {"version": version, "parent": loaded.version, "dropped": dropped, "refused": loaded.refused}

    def commit(self, head: FusionHead, memory: ExemplarMemory | None, classes: list[dict], features: dict,
               extra: dict | None = None) -> str:
        """Write a new version and make it current. `classes`: [{name, step}] in logit order; `features`:
        {shape, profile, ...} as the encoders produce them."""
        names = [c["name"] for c in classes]
        if len(set(names)) != len(names):
            raise ModelDirError(f"duplicate class names in {names}")
        if len(classes) != head.num_classes:
            raise ModelDirError(f"{len(classes)} class names for a head with {head.num_classes} outputs")
        self.root.mkdir(parents=True, exist_ok=True)
        with self.writer():
            self.files.makedirs(VERSIONS_DIR)
            existing = self.list_versions()
            version = f"v{int(existing[-1][1:]) + 1 if existing else 1:04d}"
            exemplars = self._write_exemplars(memory) if memory is not None else []
            gram = write_gram(self.files, head.readout) if has_gram(head) else None
            staging = stage(self.files, self.files.fresh_name(VERSIONS_DIR, f".{version}-"))
            self.files.mkdir(staging)
            try:
                files = {HEAD_FILE: _tensor_bytes(head_state(head, gram))}
                for name, data in files.items():
                    self.files.write_new(f"{staging}/{name}", data)
                key = ManifestKey
                manifest = {
                    key.FORMAT: FORMAT,
                    key.VERSION: version,
                    key.CREATED: time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    key.AVCIL_VERSION: avcil.__version__,
                    key.TORCH_VERSION: torch.__version__,
                    key.CLASSES: classes,
                    key.FEATURES: features,
                    key.HEAD: {"config": head.config.to_dict()},
                    key.MEMORY: memory.settings() if memory is not None else None,
                    key.EXEMPLARS: exemplars,
                    key.GRAM: gram,
                    key.FILES: {name: hashlib.sha256(data).hexdigest() for name, data in files.items()},
                    **(extra or {}),
                }
                manifest[SEAL] = seal_of(manifest)
                self.files.write_new(f"{staging}/{MANIFEST_FILE}", json.dumps(manifest, indent=2).encode())
                self.files.fsync(staging)
                self.files.rename(staging, f"{VERSIONS_DIR}/{version}")
            except BaseException:
                self.files.remove(staging)
                raise
            self._point_current_at(version)
            clear_staged(self.files)  # everything staged is now listed by the version
        return version

    def commit_after(self, loaded: LoadedModel, head: FusionHead, memory: ExemplarMemory | None, note: str,
                     made: dict, classes: list[dict] | None = None) -> str:
        """Commit a version made from `loaded` (`commit`): its classes unless `classes` are given, its features,
        `loaded` as its parent, its training record carried over, `note`, and `made`, the record of how it was made
        ({ManifestKey.FIELD_LEARNING: ...} or {ManifestKey.REPAIR: ...})."""
        manifest = loaded.manifest
        return self.commit(head, memory, manifest[ManifestKey.CLASSES] if classes is None else classes,
                           manifest[ManifestKey.FEATURES],
                           extra={ManifestKey.PARENT: loaded.version, ManifestKey.NOTE: note,
                                  ManifestKey.TRAINING: manifest.get(ManifestKey.TRAINING), **made})

    def _point_current_at(self, version: str) -> None:
        """Replace CURRENT atomically: write an aside-file (a fresh name, never an existing file or link), rename."""
        aside = stage(self.files, self.files.fresh_name("", ".CURRENT-", ".tmp"))
        self.files.write_new(aside, f"{version}\n".encode())
        self.files.rename(aside, POINTER)

    def _write_exemplars(self, memory: ExemplarMemory) -> list[dict]:
        """Per class, the exemplar file that holds its exemplars as first rows and how many it keeps: the file it
        was loaded from when that is still here, else a new one (avcil/modeldir/shared.py)."""
        self.files.makedirs(EXEMPLARS_DIR)
        entries = []
        for label, exemplars in sorted(memory.classes.items()):
            if exemplars.stored_as is None or self.files.kind(f"{EXEMPLARS_DIR}/{exemplars.stored_as}") != "file":
                exemplars.stored_as = write_shared(self.files, EXEMPLARS_DIR, _npz_bytes(
                    {"ids": np.asarray(exemplars.ids), "audio": exemplars.audio, "visual": exemplars.visual}))
            entries.append({"label": int(label), "file": exemplars.stored_as, "count": len(exemplars.ids)})
        return entries


def _trained_by_gradient(manifest: dict) -> bool:
    """Whether the training record says the model was trained by gradient (its method had loss terms): what a
    version from before the head config recorded its fusion part tells of it. Without a record it counts as trained,
    so that such a head is kept as it is."""
    method = (manifest.get(ManifestKey.TRAINING) or {}).get("method")
    return not (isinstance(method, dict) and method.get("terms") == [])


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
