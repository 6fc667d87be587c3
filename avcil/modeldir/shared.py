"""Files that a model dir's versions share: exemplars/ (one class's exemplars) and statistics/ (the analytic
readout's statistics, avcil/modeldir/statistics.py). Each file is named by the sha256 of its content, so it is
written once and never overwritten with other content; a version's manifest lists the ones it uses, the name being
the checksum; a file no version lists is removed only as a killed writer's leftover (ModelDir._remove_leftovers).
"""

from __future__ import annotations

import hashlib

from avcil.errors import ModelDirError
from avcil.modeldir.confined import Confined
from avcil.modeldir.schema import SHARED_NAME, SHARED_SUFFIX
from avcil.modeldir.staged import stage


def write_shared(files: Confined, folder: str, data: bytes) -> str:
    """The name in `folder` of the file that holds `data`: one already there, else written aside (staged, so that a
    killed writer's file is removed by the next one) and renamed into place."""
    sha = hashlib.sha256(data).hexdigest()
    name = f"{sha}{SHARED_SUFFIX[folder]}"
    final = f"{folder}/{name}"
    if not holds(files, final, sha):
        files.makedirs(folder)
        stage(files, final)
        aside = stage(files, files.fresh_name(folder, f".{name}-", ".tmp"))
        files.write_new(aside, data)
        files.rename(aside, final)
    return name


def holds(files: Confined, relative: str, sha: str) -> bool:
    """Whether `relative` is a regular file with this sha256 (a damaged or planted one is written over)."""
    try:
        return files.kind(relative) == "file" and files.sha256(relative) == sha
    except (OSError, ModelDirError):
        return False


def all_present(files: Confined, folder: str, names: list[str]) -> bool:
    """Whether every one of these files of `folder` is there (a version may list them again without writing them)."""
    return all(files.kind(f"{folder}/{name}") == "file" for name in names)


def is_shared_file(relative: str) -> bool:
    """Whether `relative` names a shared file itself (not its aside-file): kept while a version may list it."""
    folder, _, name = relative.partition("/")
    return folder in SHARED_NAME and bool(SHARED_NAME[folder].fullmatch(name))
