"""The project's feature store: per-clip encoder features on disk, written once by extraction, read lazily.

Layout:
    ROOT/store.json                 format, feature shape, encoder profile (name + preprocessing settings)
    ROOT/chunks/NNNNNN.audio.npy    float16 [n, audio_dim]
    ROOT/chunks/NNNNNN.visual.npy   float16 [n, time, positions, visual_dim]
    ROOT/chunks/NNNNNN.json         ids, labels and splits of those n clips

Every file is written aside, fsynced and renamed into place, and a chunk's JSON index is written after its
arrays: the index is the commit. A crash leaves only whole committed chunks visible; the writer removes the rest
when it reopens the store and extraction resumes with the clips that are not in it yet. Readers memory-map the
arrays, so opening a store reads only the indexes and `load` reads only the clips asked for.

Extraction spread over processes (`torchrun ... -m avcil extract`) writes one store per rank under
ROOT/shards/rank-R-of-W/, each resumable on its own; `merge_shards` then links their committed chunks into ROOT's
index: a linked chunk's JSON in ROOT/chunks names where its arrays lie ("arrays": "shards/.../chunks/NNNNNN"), so no
array is copied and the store reads exactly as if one process had written it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from avcil.errors import InvalidInput
from avcil.data.clips import Benchmark, BenchmarkDefaults, SPLITS, equal_steps
from avcil.features import Features, FeatureShape
from avcil.fileio import atomic_file, read_format_json

FORMAT = "avcil-feature-store/1"
MANIFEST = "store.json"
SHARDS = "shards"


def write_json(path: Path, obj: dict) -> None:
    with atomic_file(path) as f:
        f.write(json.dumps(obj, indent=1).encode())


def _json_roundtrip(profile: dict) -> dict:
    """The profile as it reads back from disk (tuples become lists), so that comparisons are like for like."""
    return json.loads(json.dumps(profile))


def profile_label(profile: dict) -> str:
    """'lite v2 (audio 704, visual 8x49x320)': how errors name an encoder profile record (`describe()`); a
    record from before profiles had versions is version 1."""
    shape = profile.get("shape", {})
    return (f"{profile.get('name')} v{profile.get('version', 1)} (audio {shape.get('audio_dim')}, visual "
            f"{'x'.join(str(shape.get(k)) for k in ('time', 'positions', 'visual_dim'))})")


def _mismatch(stored: dict, new: dict) -> str:
    """One line on how two encoder profiles differ: name, version and shape, or else which settings."""
    if profile_label(stored) != profile_label(new):
        return f"this store holds features of the {profile_label(stored)} encoders, these are {profile_label(new)}"
    differing = sorted(k for k in set(stored.get("settings", {})) | set(new.get("settings", {}))
                       if stored.get("settings", {}).get(k) != new.get("settings", {}).get(k))
    return (f"this store holds features of {profile_label(stored)} encoders with other {', '.join(differing)} "
            f"settings")


def _chunk_base(chunks: Path, number: int) -> Path:
    """A chunk's files without their suffixes."""
    return chunks / f"{number:06d}"


def _chunk_path(chunks: Path, number: int, suffix: str) -> Path:
    return chunks / f"{number:06d}.{suffix}"


def _committed(chunks: Path) -> list[int]:
    return sorted(int(p.stem) for p in chunks.glob("*.json") if p.stem.isdigit())


def _read_manifest(root: Path) -> dict:
    return read_format_json(root / MANIFEST, FORMAT, f"{root}: not a feature store (no {MANIFEST})")


class FeatureStoreWriter:
    """Adds clips to a store in chunks; reopening a store resumes it (see `done_ids`). One writer at a time."""

    def __init__(self, root: str | Path, shape: FeatureShape, profile: dict, chunk_size: int = 256):
        self.root, self.shape, self.profile = Path(root), shape, _json_roundtrip(profile)
        self.chunk_size = chunk_size
        self._chunks = self.root / "chunks"
        if (self.root / MANIFEST).exists():
            manifest = _read_manifest(self.root)
            if FeatureShape.from_dict(manifest["shape"]) != shape or manifest["profile"] != self.profile:
                raise InvalidInput(f"{self.root}: {_mismatch(manifest['profile'], self.profile)}; refusing to add "
                                 f"its features here: extract into a new folder, or delete this one to rebuild it")
        elif self.root.exists() and any(self.root.iterdir()):
            raise InvalidInput(f"{self.root}: exists, is not empty and is not a feature store (no {MANIFEST})")
        else:
            self._chunks.mkdir(parents=True, exist_ok=True)
            write_json(self.root / MANIFEST, {"format": FORMAT, "shape": shape.to_dict(), "profile": self.profile})
        self._chunks.mkdir(exist_ok=True)
        committed = _committed(self._chunks)
        keep = {_chunk_path(self._chunks, n, s).name for n in committed for s in ("json", "audio.npy", "visual.npy")}
        for leftover in self._chunks.iterdir():  # tmp files and arrays whose index was never written
            if leftover.name not in keep:
                leftover.unlink()
        self._done = stored_ids(self.root)
        self._next_chunk = committed[-1] + 1 if committed else 0
        self._buffer: list[tuple[str, str, str, np.ndarray, np.ndarray]] = []
        self._buffered_ids: set[str] = set()

    def done_ids(self) -> set[str]:
        return set(self._done)

    def add(self, clip_id: str, label: str, split: str, features: Features) -> None:
        if split not in SPLITS:
            raise InvalidInput(f"clip {clip_id!r}: split {split!r}, expected one of {SPLITS}")
        if clip_id in self._done or clip_id in self._buffered_ids:
            raise InvalidInput(f"{self.root}: clip id {clip_id!r} was already added")
        audio, visual = np.asarray(features.audio), np.asarray(features.visual)
        self.shape.check(audio, visual, where=f"clip {clip_id!r}")
        self._buffer.append((clip_id, label, split, audio.astype(np.float16), visual.astype(np.float16)))
        self._buffered_ids.add(clip_id)
        if len(self._buffer) >= self.chunk_size:
            self.flush()

    def flush(self) -> None:
        if not self._buffer:
            return
        ids, labels, splits, audio, visual = zip(*self._buffer)
        number = self._next_chunk
        for suffix, rows in (("audio.npy", audio), ("visual.npy", visual)):
            with atomic_file(_chunk_path(self._chunks, number, suffix)) as f:
                np.save(f, np.stack(rows))
        write_json(_chunk_path(self._chunks, number, "json"),
                   {"ids": list(ids), "labels": list(labels), "splits": list(splits)})
        self._done |= self._buffered_ids
        self._buffer, self._buffered_ids, self._next_chunk = [], set(), number + 1

    def close(self) -> None:
        self.flush()

    def __enter__(self) -> "FeatureStoreWriter":
        return self

    def __exit__(self, *exc) -> None:
        # Clips added before an error were checked one by one: keep them, so a rerun need not extract them again.
        self.close()


def _map(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing, but its chunk index {path.name.split('.')[0]}.json lists it")
    try:
        array = np.load(path, mmap_mode="r")
    except (ValueError, OSError, EOFError) as e:
        raise InvalidInput(f"{path}: unreadable chunk array (truncated?): {e}") from e
    if array.shape != shape:
        raise InvalidInput(f"{path}: array of shape {array.shape}, expected {shape}")
    return array


def shard_root(root: str | Path, rank: int, world: int) -> Path:
    """The store that rank `rank` of `world` extracts into: named by the world size too, so that a rerun with
    another number of processes starts new shards beside the old ones (which were merged) instead of mixing them."""
    return Path(root) / SHARDS / f"rank-{rank:03d}-of-{world:03d}"


def stored_ids(root: str | Path) -> set[str]:
    """The ids of the clips committed in a store, from its indexes alone."""
    chunks = Path(root) / "chunks"
    return {clip_id for n in _committed(chunks) for clip_id in json.loads(_chunk_path(chunks, n, "json").read_text())["ids"]}


def merge_shards(root: str | Path) -> int:
    """Link every committed chunk of ROOT/shards/* that ROOT's index does not hold yet into it; return how many clips
    that added. Idempotent, and crash-safe like a write (one chunk index at a time). Run it while no writer is open on
    ROOT or its shards (the extraction's rank 0 does, between barriers)."""
    root = Path(root)
    manifest = _read_manifest(root)
    chunks = root / "chunks"
    committed = _committed(chunks)
    linked, ids = set(), set()
    for number in committed:
        index = json.loads(_chunk_path(chunks, number, "json").read_text())
        linked.add(index.get("arrays"))
        ids.update(index["ids"])
    number, added = (committed[-1] + 1 if committed else 0), 0
    for shard in sorted(p for p in (root / SHARDS).glob("*") if (p / MANIFEST).is_file()):
        shard_manifest = _read_manifest(shard)
        if shard_manifest["shape"] != manifest["shape"] or shard_manifest["profile"] != manifest["profile"]:
            differs = (_mismatch(manifest["profile"], shard_manifest["profile"]) if shard_manifest["shape"] ==
                       manifest["shape"] else f"features of shape {shard_manifest['shape']}, not {manifest['shape']}")
            raise InvalidInput(f"{shard}: {differs}; this shard does not belong to {root}: remove it")
        for chunk in _committed(shard / "chunks"):
            base = _chunk_base(shard / "chunks", chunk).relative_to(root).as_posix()
            if base in linked:
                continue
            index = json.loads(_chunk_path(shard / "chunks", chunk, "json").read_text())
            twice = ids.intersection(index["ids"])
            if twice:
                raise InvalidInput(f"{shard}: chunk {chunk:06d} holds clip(s) {sorted(twice)[:3]} that {root} already "
                                   f"has; remove that shard and rerun to extract what is missing")
            write_json(_chunk_path(chunks, number, "json"), {**index, "arrays": base})
            ids.update(index["ids"])
            number, added = number + 1, added + len(index["ids"])
    return added


def open_store(root: str | Path) -> "FeatureStore":
    return FeatureStore(root)


class FeatureStore:
    """The committed clips of a store, their labels and splits; features stay on disk until loaded."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        manifest = _read_manifest(self.root)
        self.shape, self.profile = FeatureShape.from_dict(manifest["shape"]), manifest["profile"]
        self._chunks = self.root / "chunks"
        self._chunk_rows: dict[int, int] = {}
        self._array_base: dict[int, Path] = {}  # where a chunk's arrays lie, without the suffix
        self._arrays: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # memory maps, opened once per chunk
        ids: list[str] = []
        labels: list[str] = []
        splits: list[str] = []
        chunk_of: list[int] = []
        row_of: list[int] = []
        for number in _committed(self._chunks):
            index = json.loads(_chunk_path(self._chunks, number, "json").read_text())
            self._chunk_rows[number] = len(index["ids"])
            self._array_base[number] = (self.root / index["arrays"] if "arrays" in index
                                        else _chunk_base(self._chunks, number))
            self._chunk(number)  # a missing or truncated chunk file fails here, not in the middle of training
            ids += index["ids"]
            labels += index["labels"]
            splits += index["splits"]
            chunk_of += [number] * len(index["ids"])
            row_of += range(len(index["ids"]))
        if len(set(ids)) != len(ids):
            raise InvalidInput(f"{self.root}: a clip id appears in more than one chunk")
        self._ids, self._labels, self._splits = ids, np.asarray(labels, dtype=str), np.asarray(splits, dtype=str)
        self._chunk_of, self._row_of = np.asarray(chunk_of, dtype=np.int64), np.asarray(row_of, dtype=np.int64)

    def _chunk(self, number: int) -> tuple[np.ndarray, np.ndarray]:
        """Audio and visual arrays of one chunk, memory-mapped."""
        if number not in self._arrays:
            n, base = self._chunk_rows[number], self._array_base[number]
            self._arrays[number] = (_map(base.parent / f"{base.name}.audio.npy", (n, self.shape.audio_dim)),
                                    _map(base.parent / f"{base.name}.visual.npy", (n, *self.shape.visual)))
        return self._arrays[number]

    def __getstate__(self) -> dict:
        # A pickled store (DataLoader workers) carries its paths, not the mapped data: the copy maps the files again.
        return {**self.__dict__, "_arrays": {}}

    def class_names(self) -> list[str]:
        return sorted(set(self._labels.tolist()))

    def clip_set(self, split: str, class_order: list[str]) -> "StoreClipSet":
        if split not in SPLITS:
            raise InvalidInput(f"split {split!r}, expected one of {SPLITS}")
        where = np.flatnonzero(self._splits == split)
        index_of = {name: i for i, name in enumerate(class_order)}
        unknown = sorted(set(self._labels[where].tolist()) - set(index_of))
        if unknown:
            raise InvalidInput(f"{self.root}: {split} labels {unknown} are not in the class order {class_order}")
        return StoreClipSet(ids=[self._ids[i] for i in where],
                            labels=np.array([index_of[name] for name in self._labels[where]], dtype=np.int64),
                            shape=self.shape, store=self, chunk_of=self._chunk_of[where], row_of=self._row_of[where])

    def benchmark(self, num_steps: int, class_order: list[str] | None = None, name: str | None = None,
                  defaults: BenchmarkDefaults | None = None) -> Benchmark:
        order = list(class_order) if class_order is not None else self.class_names()
        return Benchmark(name=name or self.root.name, class_names=order, steps=equal_steps(len(order), num_steps),
                         splits={split: self.clip_set(split, order) for split in SPLITS}, shape=self.shape,
                         defaults=defaults or BenchmarkDefaults(), profile=self.profile)


@dataclass
class StoreClipSet:
    """One split of a store: `load` reads the asked clips from the memory-mapped chunks."""

    ids: list[str]
    labels: np.ndarray
    shape: FeatureShape
    store: FeatureStore
    chunk_of: np.ndarray
    row_of: np.ndarray

    def load(self, indices: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        idx = np.asarray(indices, dtype=np.int64)
        audio = np.empty((len(idx), self.shape.audio_dim), np.float32)
        visual = np.empty((len(idx), *self.shape.visual), np.float32)
        chunk_of, row_of = self.chunk_of[idx], self.row_of[idx]
        for number in np.unique(chunk_of):
            mine = np.flatnonzero(chunk_of == number)
            chunk_audio, chunk_visual = self.store._chunk(int(number))
            audio[mine] = chunk_audio[row_of[mine]]
            visual[mine] = chunk_visual[row_of[mine]]
        return audio, visual
