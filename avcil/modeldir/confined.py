"""File access confined to one folder: every path is a relative path of plain names below the root, and every step
is opened relative to the folder above it without following a symbolic link (O_NOFOLLOW on each component).

A model dir is copied onto devices from elsewhere and may hold anything: a symlinked `exemplars/` or `CURRENT.tmp`
must not let the model dir read, write or delete a file outside it. Checking a path first and opening it afterwards
would leave a gap between the two; opening each component through the descriptor of its parent leaves none.
The root itself is the folder the user named, and may be a link.
"""

from __future__ import annotations

import errno
import hashlib
import os
import secrets
import shutil
import stat
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Iterator

from avcil.errors import ModelDirError

DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: a FIFO planted under a file's name opens at once (and is then refused as not a file) instead of
# blocking the reader forever.
READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class LinkRefused(ModelDirError):
    """A symbolic link where the model dir expects its own file or folder."""


class Confined:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    # Reaching a path ---------------------------------------------------------------------------------------------
    def _parts(self, relative: str) -> list[str]:
        parts = relative.split("/")
        if any(part in ("", ".", "..") for part in parts):
            raise ModelDirError(f"{self.root / relative}: not a plain path inside the model dir")
        return parts

    def link_refusal(self, relative: str) -> LinkRefused:
        return LinkRefused(f"{self.root / relative}: a symbolic link inside the model dir; refused (the model dir "
                           f"reads and writes only its own files: to keep it on another disk, move the whole model "
                           f"dir there)")

    def _refusal(self, parts: list[str], error: OSError) -> OSError:
        """The error to raise for an OSError met while opening `parts` without following links."""
        path = self.root.joinpath(*parts)
        if error.errno in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK) and path.is_symlink():
            return self.link_refusal("/".join(parts))
        if error.errno == errno.ENOTDIR:
            return ModelDirError(f"{path}: not a folder (the model dir expects one here)")
        return error

    @contextmanager
    def parent(self, relative: str) -> Iterator[tuple[int, str]]:
        """(descriptor of the folder holding `relative`, its last name), reached without following links."""
        parts = self._parts(relative)
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for depth, part in enumerate(parts[:-1]):
                try:
                    inner = os.open(part, DIRECTORY, dir_fd=fd)
                except OSError as error:
                    raise self._refusal(parts[:depth + 1], error) from None
                os.close(fd)
                fd = inner
            yield fd, parts[-1]
        finally:
            os.close(fd)

    def kind(self, relative: str) -> str | None:
        """'file', 'dir', 'link', 'other', or None when it (or a folder above it) is absent or not a folder."""
        try:
            with self.parent(relative) as (fd, name):
                mode = os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode
        except (FileNotFoundError, NotADirectoryError, ModelDirError):
            return None
        if stat.S_ISLNK(mode):
            return "link"
        return "file" if stat.S_ISREG(mode) else "dir" if stat.S_ISDIR(mode) else "other"

    # Reading -----------------------------------------------------------------------------------------------------
    @contextmanager
    def open_read(self, relative: str) -> Iterator[BinaryIO]:
        """A regular file inside the root, opened for reading; FileNotFoundError when absent."""
        with self.parent(relative) as (fd, name):
            try:
                file_fd = os.open(name, READ, dir_fd=fd)
            except OSError as error:
                raise self._refusal(self._parts(relative), error) from None
        if not stat.S_ISREG(os.fstat(file_fd).st_mode):
            os.close(file_fd)
            raise ModelDirError(f"{self.root / relative}: not a regular file")
        os.set_blocking(file_fd, True)
        with os.fdopen(file_fd, "rb") as file:
            yield file

    def read_bytes(self, relative: str, limit: int) -> bytes:
        """The file's bytes, refused when larger than `limit` (a small record cannot be gigabytes)."""
        with self.open_read(relative) as file:
            data = file.read(limit + 1)
        if len(data) > limit:
            raise ModelDirError(f"{self.root / relative}: larger than the {limit} bytes such a file holds")
        return data

    def sha256(self, relative: str) -> str:
        """The file's sha256, read a block at a time (a file may be larger than memory allows at once)."""
        digest = hashlib.sha256()
        with self.open_read(relative) as file:
            for block in iter(lambda: file.read(1 << 20), b""):
                digest.update(block)
        return digest.hexdigest()

    def listdir(self, relative: str) -> list[str]:
        """The names in a folder inside the root; [] when it is absent."""
        try:
            with self.parent(relative) as (fd, name):
                try:
                    folder = os.open(name, DIRECTORY, dir_fd=fd)
                except OSError as error:
                    raise self._refusal(self._parts(relative), error) from None
        except FileNotFoundError:
            return []
        try:
            return sorted(os.listdir(folder))
        finally:
            os.close(folder)

    # Writing -----------------------------------------------------------------------------------------------------
    def makedirs(self, relative: str) -> None:
        """Create the folder and those above it that are missing; an existing link is refused, not followed."""
        parts = self._parts(relative)
        for depth in range(1, len(parts) + 1):
            here = "/".join(parts[:depth])
            with self.parent(here) as (fd, name):
                try:
                    os.mkdir(name, dir_fd=fd)
                except FileExistsError:
                    pass
            if self.kind(here) != "dir":
                raise self._refusal(parts[:depth], OSError(errno.ENOTDIR, "not a folder"))

    def fresh_name(self, folder: str, prefix: str, suffix: str = "") -> str:
        """A name in `folder` that nothing holds now (random, so that a planted name cannot be guessed ahead)."""
        while True:
            name = f"{prefix}{secrets.token_hex(6)}{suffix}"
            relative = f"{folder}/{name}" if folder else name
            if self.kind(relative) is None:
                return relative

    def mkdir(self, relative: str) -> None:
        with self.parent(relative) as (fd, name):
            os.mkdir(name, dir_fd=fd)

    def write_new(self, relative: str, data: bytes) -> None:
        """Create the file (never an existing one, never through a link), write it and fsync it."""
        self._write_synced(relative, data, CREATE)

    def append_synced(self, relative: str, data: bytes) -> None:
        """Append to the file (created when absent, never through a link) and fsync it."""
        self._write_synced(relative, data, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC)

    def _write_synced(self, relative: str, data: bytes, flags: int) -> None:
        with self.parent(relative) as (fd, name):
            try:
                file_fd = os.open(name, flags, 0o644, dir_fd=fd)
            except OSError as error:
                raise self._refusal(self._parts(relative), error) from None
        with os.fdopen(file_fd, "wb") as file:  # O_APPEND, when given, still appends
            file.write(data)
            file.flush()
            os.fsync(file.fileno())

    def rename(self, source: str, target: str) -> None:
        """Rename inside the root and fsync the target's folder. A link at `target` is replaced, not followed."""
        with self.parent(source) as (source_fd, source_name), self.parent(target) as (target_fd, target_name):
            os.rename(source_name, target_name, src_dir_fd=source_fd, dst_dir_fd=target_fd)
            os.fsync(target_fd)

    def fsync(self, relative: str) -> None:
        with self.parent(relative) as (fd, name):
            folder = os.open(name, DIRECTORY, dir_fd=fd)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)

    def remove(self, relative: str) -> None:
        """Remove a file, a link (never what it points to) or a folder tree (whose links are removed, not
        followed); nothing when absent."""
        with self.parent(relative) as (fd, name):
            try:
                mode = os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode
            except FileNotFoundError:
                return
            if stat.S_ISDIR(mode):
                shutil.rmtree(name, dir_fd=fd)
            else:
                os.unlink(name, dir_fd=fd)
