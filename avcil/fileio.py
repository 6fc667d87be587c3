"""Durable file writes shared by every stage that writes artifacts (feature store, model dir, exports).

A file written here appears whole or not at all, even if the process dies: write aside, fsync, rename, fsync
the directory (the rename itself is durable only once the directory is synced).
"""

from __future__ import annotations

import hashlib
import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Iterator

TMP_SUFFIX = ".tmp"


def default_cache() -> Path:
    """Where built data, features and exported encoders are kept between runs: $AVCIL_CACHE or ~/.cache/avcil."""
    return Path(os.environ.get("AVCIL_CACHE", Path.home() / ".cache" / "avcil"))


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fsync_dir(path: str | Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_synced(path: str | Path, data: bytes) -> None:
    """Write and fsync; for files inside a staging folder that is renamed into place afterwards."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


@contextmanager
def atomic_file(path: str | Path) -> Iterator[BinaryIO]:
    """A file opened for writing that appears at `path` whole, or not at all."""
    path = Path(path)
    tmp = path.with_name(path.name + TMP_SUFFIX)
    try:
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)
    fsync_dir(path.parent)


def atomic_write(path: str | Path, data: bytes) -> None:
    with atomic_file(path) as f:
        f.write(data)


def read_format_json(path: Path, expected_format, missing: str) -> dict:
    """A JSON record with a "format" field that this avcil reads; FileNotFoundError(`missing`) when absent."""
    from avcil.errors import InvalidInput

    if not path.is_file():
        raise FileNotFoundError(missing)
    record = json.loads(path.read_text())
    if record.get("format") != expected_format:
        raise InvalidInput(f"{path}: format {record.get('format')!r}, this avcil reads {expected_format!r}")
    return record
