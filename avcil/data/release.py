"""The public AV-CIL feature release (docs/method.md#the-protocol-and-its-metrics) as a `Benchmark` whose visual
features stream from disk.

A release directory holds one benchmark (AVE, kinetics-sounds or VGGSound_100):
    category_encode_dict.npy, all_id_category_dict.npy, all_classId_vid_dict.npy     the splits (see SPLIT_FILES)
    audio_pretrained_feature/audio_pretrained_feature_dict.npy     {video id: (768,)}, small: loaded whole
    visual_pretrained_feature/visual_features.h5                   one (1568, 768) dataset per video id, or
    visual_pretrained_feature/visual_pretrained_feature_dict.npy   {video id: (1568, 768)}, one pickle (AVE)
The visual features are 20-300 GB. The h5 file is read per clip. The pickled dict cannot be read in part, so it is
converted once, streaming, into a raw float32 array + an index of rows (next to it, or under `cache_dir`).
A visual row of 1568 tokens is VideoMAE's 8 temporal groups x 196 (14 x 14) positions, in that order.
"""

from __future__ import annotations

import json
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Sequence

import numpy as np
from numpy.lib import format as npy_format
from tqdm import tqdm

from avcil.errors import InvalidInput
from avcil.data.clips import PAPER_AVE, Benchmark, BenchmarkDefaults, SPLITS, equal_steps
from avcil.data.store import write_json
from avcil.data.safe_pickle import check_global, load_npy
from avcil.fileio import atomic_file
from avcil.features import FeatureShape

SHAPE = FeatureShape(audio_dim=768, time=8, positions=196, visual_dim=768)
RELEASED_VISUAL = (SHAPE.time * SHAPE.positions, SHAPE.visual_dim)  # (1568, 768) per clip in the release files

SPLIT_FILES = {
    "category_encode_dict.npy": "{class name: class index}",
    "all_id_category_dict.npy": "{'train'|'val'|'test': {video id: class name}}",
    "all_classId_vid_dict.npy": "{'train'|'val'|'test': {class index: [video ids]}}",
}
AUDIO_FILE = "audio_pretrained_feature/audio_pretrained_feature_dict.npy"
VISUAL_H5 = "visual_pretrained_feature/visual_features.h5"
VISUAL_NPY = "visual_pretrained_feature/visual_pretrained_feature_dict.npy"
VISUAL_NPY_CACHE = "visual_pretrained_feature/avcil_cache"  # its conversion, unless load_release gets cache_dir

# The paper's protocol per benchmark (docs/method.md#the-protocol-and-its-metrics): classes, steps, settings that go
# with the benchmark.
PROTOCOLS = {
    "AVE": (28, 4, PAPER_AVE),
    "kinetics-sounds": (30, 5, BenchmarkDefaults(memory_budget=500, instance_weight=0.1)),
    "VGGSound_100": (100, 10, BenchmarkDefaults(memory_budget=1500, instance_weight=0.1)),
}


def load_release(root: str | Path, num_steps: int | None = None, name: str | None = None,
                 cache_dir: str | Path | None = None) -> Benchmark:
    """The release at `root` as a benchmark: class order of category_encode_dict, the paper's steps and settings
    (recognised by directory name or class count) unless `num_steps` is given. `cache_dir` receives the one-time
    conversion of a pickled visual dict (default: beside it)."""
    root = Path(root).resolve()
    class_names = _class_order(root)
    split_clips = _split_clips(root, class_names)
    wanted = [clip_id for ids, _ in split_clips.values() for clip_id in ids]
    audio = _load_audio(root, wanted)
    if (root / VISUAL_NPY).is_file():
        visual: VisualSource = convert_visual_dict(root / VISUAL_NPY, Path(cache_dir or root / VISUAL_NPY_CACHE))
    elif (root / VISUAL_H5).is_file():
        visual = H5Visual(root / VISUAL_H5)
    else:
        raise FileNotFoundError(f"{root}: no visual features: expected {VISUAL_H5} (one (1568, 768) dataset per "
                                f"video id) or {VISUAL_NPY} (a pickled dict {{video id: (1568, 768) array}})")
    visual.check(wanted)

    protocol = _recognise(root, len(class_names))
    if num_steps is None and protocol is None:
        raise InvalidInput(f"{root}: {len(class_names)} classes match none of {list(PROTOCOLS)}; give num_steps")
    _, protocol_steps, defaults = PROTOCOLS.get(protocol, (0, None, BenchmarkDefaults()))
    splits = {}
    for split, (ids, labels) in split_clips.items():
        split_audio = np.array([audio[i] for i in ids], np.float32).reshape(len(ids), SHAPE.audio_dim)
        splits[split] = ReleaseClipSet(ids, labels, split_audio, visual)
    return Benchmark(name=name or protocol or root.name, class_names=class_names,
                     steps=equal_steps(len(class_names), num_steps or protocol_steps), splits=splits, shape=SHAPE,
                     defaults=defaults)


def _recognise(root: Path, num_classes: int) -> str | None:
    """Which of the paper's benchmarks this is: by directory name, else by class count."""
    by_name = [key for key in PROTOCOLS if key.lower() == root.name.lower()]
    by_count = [key for key, (classes, _, _) in PROTOCOLS.items() if classes == num_classes]
    return (by_name + by_count + [None])[0]


def _load_dict(root: Path, relative: str, holds: str) -> dict:
    path = root / relative
    if not path.is_file():
        raise FileNotFoundError(f"{root}: missing {relative}, which should hold {holds}")
    array = load_npy(path)
    if array.shape != () or not isinstance(array.item(), dict):
        raise InvalidInput(f"{path}: expected a pickled dict {holds}")
    return array.item()


def _class_order(root: Path) -> list[str]:
    encode = _load_dict(root, "category_encode_dict.npy", SPLIT_FILES["category_encode_dict.npy"])
    if sorted(encode.values()) != list(range(len(encode))):
        raise InvalidInput(f"{root / 'category_encode_dict.npy'}: class indices {sorted(encode.values())} are not "
                         f"0..{len(encode) - 1}")
    return sorted(encode, key=encode.__getitem__)


def _split_clips(root: Path, class_names: list[str]) -> dict[str, tuple[list[str], np.ndarray]]:
    """Per split: video ids and their class indices. The two split files must agree."""
    by_id = _load_dict(root, "all_id_category_dict.npy", SPLIT_FILES["all_id_category_dict.npy"])
    by_class = _load_dict(root, "all_classId_vid_dict.npy", SPLIT_FILES["all_classId_vid_dict.npy"])
    index_of = {name: i for i, name in enumerate(class_names)}
    clips = {}
    for split in SPLITS:
        if split not in by_id or split not in by_class:
            raise InvalidInput(f"{root}: split {split!r} missing from all_id_category_dict.npy or "
                             f"all_classId_vid_dict.npy")
        unknown = sorted(set(by_id[split].values()) - set(index_of))
        if unknown:
            raise InvalidInput(f"{root / 'all_id_category_dict.npy'}: {split} class names {unknown[:5]} are not in "
                             f"category_encode_dict.npy")
        ids = list(by_id[split])
        labels = np.array([index_of[by_id[split][i]] for i in ids], dtype=np.int64)
        listed = {(str(i), int(c)) for c, vids in by_class[split].items() for i in vids}
        if listed != set(zip(ids, labels.tolist())):
            raise InvalidInput(f"{root}: the {split} split of all_classId_vid_dict.npy does not list the same "
                             f"(video id, class) pairs as all_id_category_dict.npy")
        clips[split] = (ids, labels)
    return clips


def _missing_error(path: Path, what: str, missing: list[str]) -> ValueError:
    return ValueError(f"{path}: no {what} features for {len(missing)} video id(s) of the splits, "
                      f"e.g. {missing[:5]}")


def _shape_error(path: Path, what: str, clip_id: str, shape: tuple, expected: tuple) -> ValueError:
    return ValueError(f"{path}: {what} features of video id {clip_id!r} have shape {shape}, expected {expected}")


def _load_audio(root: Path, wanted: list[str]) -> dict[str, np.ndarray]:
    audio = _load_dict(root, AUDIO_FILE, "{video id: (768,) audio feature}")
    missing = [i for i in wanted if i not in audio]
    if missing:
        raise _missing_error(root / AUDIO_FILE, "audio", missing)
    for clip_id in wanted:
        if np.shape(audio[clip_id]) != (SHAPE.audio_dim,):
            raise _shape_error(root / AUDIO_FILE, "audio", clip_id, np.shape(audio[clip_id]), (SHAPE.audio_dim,))
    return audio


class _PerProcessFile:
    """A file handle opened on first use in each process: an HDF5 handle must not cross a fork, and a pickled
    source (DataLoader workers) should carry the path, not the data."""

    def __init__(self, path: Path):
        self.path = path
        self._handle, self._pid = None, -1

    def _open(self):
        raise NotImplementedError

    def handle(self):
        if self._pid != os.getpid():
            self._handle, self._pid = self._open(), os.getpid()
        return self._handle

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_handle": None, "_pid": -1}


class H5Visual(_PerProcessFile):
    """visual_features.h5: one (1568, 768) dataset per video id, read only when asked for."""

    def _open(self):
        import h5py  # only h5 releases need it

        return h5py.File(self.path, "r")

    def check(self, wanted: list[str]) -> None:
        datasets = self.handle()
        missing = [i for i in wanted if i not in datasets]
        if missing:
            raise _missing_error(self.path, "visual", missing)
        for clip_id in tqdm(wanted, desc="checking visual features", unit="clip", leave=False):
            if datasets[clip_id].shape != RELEASED_VISUAL:
                raise _shape_error(self.path, "visual", clip_id, datasets[clip_id].shape, RELEASED_VISUAL)

    def read(self, ids: Sequence[str]) -> np.ndarray:
        datasets = self.handle()
        visual = np.empty((len(ids), *SHAPE.visual), np.float32)
        for row, clip_id in enumerate(ids):
            visual[row] = datasets[clip_id][()].reshape(SHAPE.visual)
        return visual


class RawVisual(_PerProcessFile):
    """A converted pickled dict (`source`): float32 (1568, 768) rows in one raw file, and which row is which id."""

    def __init__(self, path: Path, rows: dict[str, int], count: int, source: Path):
        super().__init__(path)
        self.rows, self.count, self.source = rows, count, source

    def _open(self) -> np.ndarray:
        return np.memmap(self.path, dtype=np.float32, mode="r", shape=(self.count, *SHAPE.visual))

    def check(self, wanted: list[str]) -> None:
        missing = [i for i in wanted if i not in self.rows]
        if missing:
            raise _missing_error(self.source, "visual", missing)

    def read(self, ids: Sequence[str]) -> np.ndarray:
        return np.array(self.handle()[[self.rows[i] for i in ids]], dtype=np.float32)


VisualSource = H5Visual | RawVisual


@dataclass
class ReleaseClipSet:
    """One split of a release: audio in memory, visual read per clip from its source."""

    ids: list[str]
    labels: np.ndarray
    audio: np.ndarray  # [n, 768] float32
    visual: VisualSource
    shape: FeatureShape = SHAPE

    def load(self, indices: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        idx = np.asarray(indices, dtype=np.int64)
        return self.audio[idx], self.visual.read([self.ids[i] for i in idx])


# ---- One-time streaming conversion of a pickled {video id: array} .npy ------------------------------------------

_PAYLOAD_BYTES = 1 << 16  # bytes objects at least this big are array payloads, never referred back to


class _Spool:
    """Writes each released visual array to the raw file as soon as the unpickler has read it."""

    def __init__(self, out: BinaryIO, progress: tqdm):
        self.out, self.progress, self.count = out, progress, 0

    def write(self, payload: bytes | str, dtype: np.dtype, shape: tuple, fortran: bool) -> int | None:
        """The row the array went to, or None when its shape is not that of a visual feature."""
        if tuple(shape) != RELEASED_VISUAL:
            return None
        if isinstance(payload, str):  # pickled by Python 2
            payload = payload.encode("latin1")
        array = np.frombuffer(payload, dtype).reshape(shape, order="F" if fortran else "C")
        np.asarray(array, dtype=np.float32).tofile(self.out)
        self.progress.update(len(payload))
        self.count += 1
        return self.count - 1


class _ArrayStub:
    """Stands in for one unpickled array: its payload went to the spool, only its row and shape stay.
    The 0-d object array that np.save wraps around the dict keeps its elements in `items`."""

    def __init__(self, spool: _Spool):
        self.spool, self.row, self.shape, self.items = spool, None, None, None

    def __setstate__(self, state: tuple) -> None:  # ndarray's pickled state: version, shape, dtype, fortran, payload
        _, shape, dtype, fortran, payload = state
        self.fill(payload, dtype, shape, fortran)

    def fill(self, payload, dtype: np.dtype, shape: tuple, fortran: bool) -> "_ArrayStub":
        self.shape = tuple(shape)
        if dtype.hasobject:
            self.items = list(payload)
        else:
            self.row = self.spool.write(payload, dtype, shape, fortran)
        return self


class _Forgotten:
    """What the memo keeps in place of an array payload."""


class _PayloadFreeMemo(dict):
    """The pickler memoizes every payload (the bytes, the state tuple holding them): a normal memo would keep
    the whole file in memory. Nothing refers back to a payload, so the memo forgets them."""

    def __setitem__(self, key, value) -> None:
        super().__setitem__(key, _Forgotten if _holds_payload(value) else value)

    def __getitem__(self, key):
        value = super().__getitem__(key)
        if value is _Forgotten:
            raise pickle.UnpicklingError("the pickle refers back to an array payload; it cannot be streamed")
        return value


def _holds_payload(value) -> bool:
    if isinstance(value, tuple):
        return any(_holds_payload(v) for v in value)
    return isinstance(value, (bytes, bytearray, str)) and len(value) >= _PAYLOAD_BYTES


class _StreamingUnpickler(pickle._Unpickler):
    """The pure-Python unpickler, whose memo can be replaced, with numpy's array constructors swapped for stubs.
    Array payloads of every numpy version and pickle protocol arrive here one at a time."""

    def __init__(self, file: BinaryIO, spool: _Spool, source: Path):
        super().__init__(file, encoding="latin1")
        self.memo = _PayloadFreeMemo()
        self.spool = spool
        self.source = source

    def find_class(self, module: str, name: str):
        if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name == "_reconstruct":
            return lambda *_: _ArrayStub(self.spool)  # protocols 2-4: the payload follows in __setstate__
        if module in ("numpy.core.numeric", "numpy._core.numeric") and name == "_frombuffer":
            return lambda payload, dtype, shape, order: _ArrayStub(self.spool).fill(payload, dtype, shape,
                                                                                    order == "F")  # protocol 5
        check_global(module, name, self.source)
        return super().find_class(module, name)


def convert_visual_dict(src: Path, cache: Path) -> RawVisual:
    """Converts the pickled {video id: (1568, 768)} dict at `src` into `cache` (visual.f32 + index.json), holding
    one array in memory at a time; reuses a complete conversion of the same file."""
    raw, index_path = cache / "visual.f32", cache / "index.json"
    stat = src.stat()
    stamp = {"source": str(src), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    item_bytes = 4 * int(np.prod(RELEASED_VISUAL))
    if index_path.is_file():
        index = json.loads(index_path.read_text())
        if index["stamp"] == stamp and raw.is_file() and raw.stat().st_size == index["count"] * item_bytes:
            return RawVisual(raw, index["rows"], index["count"], src)
    try:
        cache.mkdir(parents=True, exist_ok=True)
        index_path.unlink(missing_ok=True)  # the old conversion stops counting as complete before it is replaced
    except OSError as e:
        raise OSError(f"{cache}: cannot write the converted visual features here ({e}); pass cache_dir") from e

    with open(src, "rb") as f, atomic_file(raw) as out, tqdm(
            total=stat.st_size, unit="B", unit_scale=True, desc=f"converting {src.name}") as progress:
        read_header = {(1, 0): npy_format.read_array_header_1_0, (2, 0): npy_format.read_array_header_2_0}
        version = npy_format.read_magic(f)
        if version not in read_header:
            raise InvalidInput(f"{src}: .npy format version {version}, expected 1.0 or 2.0 (a pickled dict)")
        shape, _, dtype = read_header[version](f)
        if shape != () or dtype != np.dtype(object):
            raise InvalidInput(f"{src}: expected a pickled dict {{video id: (1568, 768) array}}, found an .npy of "
                             f"shape {shape} and dtype {dtype}")
        spool = _Spool(out, progress)
        wrapper = _StreamingUnpickler(f, spool, src).load()
        table = wrapper.items[0] if isinstance(wrapper, _ArrayStub) and wrapper.items else None
        if not isinstance(table, dict):
            raise InvalidInput(f"{src}: expected a pickled dict {{video id: (1568, 768) array}}")
        for clip_id, stub in table.items():
            if not isinstance(stub, _ArrayStub) or stub.row is None:
                raise _shape_error(src, "visual", clip_id, getattr(stub, "shape", type(stub).__name__),
                                   RELEASED_VISUAL)
    rows = {str(clip_id): stub.row for clip_id, stub in table.items()}
    write_json(index_path, {"stamp": stamp, "count": spool.count, "rows": rows})
    return RawVisual(raw, rows, spool.count, src)
