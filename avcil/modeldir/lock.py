"""The writer lock of a model dir: an exclusive flock on the model dir's folder itself.

A lock file could be removed (or replaced) while a writer holds it, and the next writer would then lock a new file
and get in; the folder cannot be removed while it is in use by name, and flock follows the folder's identity, not
its path. The lock is re-entrant within a thread (field learning holds it from before encoding to the commit and
commits inside it); another thread or process waits for it or is refused.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from avcil.errors import ModelDirError

POLL_S = 0.2
WAITING_LINE = "waiting for the model dir lock held by another writer"

_held = threading.local()  # (st_dev, st_ino) of each model dir folder this thread holds -> nesting depth


@contextmanager
def writer_lock(root: Path, wait_s: float = 0.0, on_wait: Callable[[], None] | None = None) -> Iterator[bool]:
    """Hold the lock on the folder `root`; yields True when this call took it (False: the thread already held it).
    `wait_s`: how long to wait for another writer (0: refuse at once); `on_wait` is called once when waiting
    starts."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        key = (info.st_dev, info.st_ino)
        depths = _held.__dict__.setdefault("depths", {})
        if key in depths:
            depths[key] += 1
            try:
                yield False
            finally:
                depths[key] -= 1
            return
        _acquire(fd, root, wait_s, on_wait)
        depths[key] = 1
        try:
            yield True
        finally:
            del depths[key]
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _acquire(fd: int, root: Path, wait_s: float, on_wait: Callable[[], None] | None) -> None:
    deadline = time.monotonic() + wait_s
    waiting = False
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if wait_s <= 0:
                raise ModelDirError(f"{root} is being written by another process (locked); try again") from None
            if time.monotonic() >= deadline:
                raise ModelDirError(f"{root} is still being written by another process after {wait_s:g} s of "
                                    f"waiting (locked); try again, or wait longer with --lock-wait") from None
        if not waiting and on_wait is not None:
            on_wait()
        waiting = True
        time.sleep(POLL_S)
