"""The analytic readout's Gram matrix G = Σ φᵀφ (avcil/model/readout.py), stored as what changed and shared.

G is width² float32: 16 MB at lite's expansion of 2048, most of a version's head, while a class learnt in the field
changes it by the φᵀφ of its few clips' rows φ. So format 3 keeps G out of head.pt: a version's manifest lists
under "gram" a base file, G whole as some version held it, and the row files added since, in order, each the φ rows
(float32 [count, width]) of one `AnalyticReadout.add`:

    {"base": "SHA.npy", "rows": [{"file": "SHA.npy", "count": 40}, ...]}      files in MODEL/statistics/

A readout with per-modality readouts (AnalyticReadout.parts) adds each part's entry, of the same form, under
"parts": {"audio": {...}, "video": {...}}.

Loading adds each row file's φᵀφ to the base as learning added it (φ in float64, the product in float64, rounded
into the float32 matrix), so the rebuilt G is the one learning held, bit for bit on the machine that learnt it on
the CPU (another BLAS may round the product differently in its last bits). Whatever changed G otherwise (training,
whose sums may come from several processes, a readout built afresh, a state loaded from elsewhere) leaves the
readout without rows (`gram_rows` None), and the version stores a new base.
"""

from __future__ import annotations

import io

import numpy as np
import torch

from avcil.errors import ModelDirError
from avcil.modeldir.confined import Confined
from avcil.modeldir.schema import STATISTICS_DIR
from avcil.modeldir.shared import all_present, write_shared

READOUT_STATE = "readout"  # the head's state prefix of the readout whose G the statistics files hold
# The chain from a base stays bounded, so that loading stays about as fast as reading one base: at most
# CHAIN_FILES row files (each one more file to open and hash on every load; 16 field classes between bases), whose
# rows number at most CHAIN_ROWS_SHARE of the width, i.e. a quarter of the base's bytes (rebuilding then costs
# width / 4 rows of products, about 4 GFLOP at lite's width, and a chain at most 1.25 times a base on disk). A
# commit past either bound writes a new base.
CHAIN_FILES = 16
CHAIN_ROWS_SHARE = 0.25
NPY_VERSION = (1, 0)  # what np.save writes for these arrays; any other header is not one of ours


def has_gram(head) -> bool:
    return getattr(head.readout, "gram", None) is not None


def entries(entry: dict | None, prefix: str = READOUT_STATE) -> list[tuple[str, dict]]:
    """(state prefix of the readout, its entry) for a manifest's gram entry and its parts' (none for no entry)."""
    if entry is None:
        return []
    return [(prefix, entry)] + [pair for name, part in entry.get("parts", {}).items()
                                for pair in entries(part, f"{prefix}.parts.{name}")]


def gram_files(entry: dict | None) -> list[str]:
    """The names in statistics/ of the files a manifest's gram entry lists (none for no entry), bases first."""
    return [name for _, one in entries(entry) for name in [one["base"]] + [row["file"] for row in one["rows"]]]


def head_state(head, entry: dict | None) -> dict:
    """The head's state as head.pt holds it: without the G of each readout whose statistics files hold it."""
    state = head.state_dict()
    for prefix, _ in entries(entry):
        del state[f"{prefix}.gram"]
    return state


# Writing ------------------------------------------------------------------------------------------------------------
def write_gram(files: Confined, readout) -> dict:
    """The gram entry of a version of this readout: the chain it was stored as plus a row file per `add` since, or a
    new base when there is no such chain or it would grow past its bounds; its parts' under "parts". The readout
    then counts as stored so."""
    chain, added = readout.gram_stored, readout.gram_rows
    if added is not None:
        added = [rows for rows in added if len(rows)]  # an add of no rows left G as it was
    if _extends(files, chain, added, len(readout.gram)):
        entry = {"base": chain["base"], "rows": chain["rows"] + [
            {"file": write_shared(files, STATISTICS_DIR, _npy_bytes(rows)), "count": len(rows)} for rows in added]}
    else:
        entry = {"base": write_shared(files, STATISTICS_DIR, _npy_bytes(readout.gram)), "rows": []}
    readout.gram_stored, readout.gram_rows = entry, []
    if readout.parts:
        return {**entry, "parts": {name: write_gram(files, part) for name, part in readout.parts.items()}}
    return entry


def _extends(files: Confined, chain: dict | None, added: list | None, width: int) -> bool:
    """Whether `added` may follow `chain`: both known, the chain's files still here, and within the bounds."""
    if chain is None or added is None:
        return False
    rows = sum(row["count"] for row in chain["rows"]) + sum(len(block) for block in added)
    return (len(chain["rows"]) + len(added) <= CHAIN_FILES and rows <= CHAIN_ROWS_SHARE * width
            and all_present(files, STATISTICS_DIR, gram_files(chain)))


def _npy_bytes(array: torch.Tensor) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, array.detach().cpu().float().contiguous().numpy(), version=NPY_VERSION,
                              allow_pickle=False)
    return buffer.getvalue()


# Reading ------------------------------------------------------------------------------------------------------------
def read_gram(files: Confined, entry: dict, width: int) -> torch.Tensor:
    """G rebuilt from a manifest's gram entry: the base plus each row file's φᵀφ, in order, as learning added them
    (`AnalyticReadout.add`). The files were checked against their names' sha256 (ModelDir.verify); one that still
    does not hold what the entry says is refused, naming it."""
    gram = torch.from_numpy(_read_float32(files, entry["base"], (width, width)))
    for row in entry["rows"]:
        phi = torch.from_numpy(_read_float32(files, row["file"], (row["count"], width))).double()
        gram.add_((phi.T @ phi).to(gram.dtype))
    return gram


def read_grams(files: Confined, entry: dict, head) -> dict[str, torch.Tensor]:
    """{state key: G} of the head's readout and its parts, from a manifest's gram entry (see `read_gram`)."""
    return {f"{prefix}.gram": read_gram(files, one, len(head.get_submodule(prefix).gram))
            for prefix, one in entries(entry)}


def restore_stored(head, entry: dict) -> None:
    """Record that the G of the head's readout and of its parts, just loaded, are what `entry`'s files hold (the
    next version extends them)."""
    for prefix, one in entries(entry):
        head.get_submodule(prefix).gram_stored = {"base": one["base"], "rows": list(one["rows"])}
        head.get_submodule(prefix).gram_rows = []


def _read_float32(files: Confined, name: str, shape: tuple[int, int]) -> np.ndarray:
    """A float32 array of `shape` from statistics/NAME, its header checked before its data is read (a hostile
    header could claim any size)."""
    relative = f"{STATISTICS_DIR}/{name}"
    with files.open_read(relative) as file:
        try:
            if np.lib.format.read_magic(file) != NPY_VERSION:
                raise ValueError("not an .npy file of version 1.0")
            found, fortran, dtype = np.lib.format.read_array_header_1_0(file)
        except (ValueError, EOFError, SyntaxError, TypeError) as error:
            raise _not_statistics(files, relative, f"header: {error}") from None
        if (found, fortran, dtype) != (shape, False, np.dtype("<f4")):
            raise _not_statistics(files, relative, f"holds {dtype} {list(found)}, the manifest says float32 "
                                                   f"{list(shape)}")
        size = shape[0] * shape[1] * 4
        data = file.read(size + 1)
    if len(data) != size:
        raise _not_statistics(files, relative, f"{len(data)} bytes of data for {size}")
    return np.frombuffer(data, dtype="<f4").reshape(shape).copy()


def _not_statistics(files: Confined, relative: str, why: str) -> ModelDirError:
    return ModelDirError(f"{files.root / relative}: does not hold the readout statistics its manifest lists ({why})")
