"""MODEL/.staged: the names a writer is about to create, recorded (and fsynced) before it creates them.

A writer killed mid-commit leaves staging folders, aside-files and shared files that no version lists. The next
writer removes those, and only those: a name is removed because a writer listed it here, never because it merely
lies in the model dir unlisted (a folder shared with another model dir, or files put there by hand, are not ours).
"""

from __future__ import annotations

import re

from avcil.modeldir.confined import Confined
from avcil.modeldir.schema import SHARED_NAME

STAGED_FILE = ".staged"
# The only names a writer stages; a line of any other shape (torn by a kill, or written by someone else) is ignored:
# a staging folder, CURRENT's aside-file, and a shared file (exemplars/, statistics/) and its aside-file.
STAGED_NAME = re.compile("|".join([r"versions/\.v\d{4,}-[0-9a-f]+", r"\.CURRENT-[0-9a-f]+\.tmp"] + [
    rf"{folder}/{name.pattern}|{folder}/\.{name.pattern}-[0-9a-f]+\.tmp" for folder, name in SHARED_NAME.items()]))
STAGED_LIMIT = 1 << 20  # bytes: thousands of names; a larger file is not one a writer wrote


def stage(files: Confined, relative: str) -> str:
    """Record `relative` as about to be created; returns it."""
    if not STAGED_NAME.fullmatch(relative):
        raise ValueError(f"{relative!r} is not a name a writer stages")  # a bug in the writer, not bad input
    files.append_synced(STAGED_FILE, f"{relative}\n".encode())
    return relative


def staged_names(files: Confined) -> list[str]:
    """The names recorded by earlier writers (none when there is no list)."""
    if files.kind(STAGED_FILE) != "file":
        return []
    text = files.read_bytes(STAGED_FILE, STAGED_LIMIT).decode("ascii", errors="replace")
    return [line for line in dict.fromkeys(text.splitlines()) if STAGED_NAME.fullmatch(line)]


def clear_staged(files: Confined) -> None:
    files.remove(STAGED_FILE)
