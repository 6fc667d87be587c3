"""Reading the pickles of the public AV-CIL feature release without running anything they name.

The release's `.npy` files are pickled numpy object arrays holding dicts of strings, numbers and arrays. A pickle
can name any importable callable, so a file from an untrusted source could run code on load; here only the globals
that such data needs are resolved (numpy's array and scalar reconstructors, dtypes, and the codec Python 3 uses for
bytes in protocol 2), and anything else is refused with the file and the global named.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import BinaryIO

import numpy as np
from numpy.lib import format as npy_format

from avcil.errors import InvalidInput

_NUMPY_CORE = ("numpy.core.multiarray", "numpy._core.multiarray", "numpy.core.numeric", "numpy._core.numeric")
ALLOWED_GLOBALS = {
    *((module, name) for module in _NUMPY_CORE for name in ("_reconstruct", "scalar", "_frombuffer")),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
    ("collections", "OrderedDict"),
}


class RefusedPickle(InvalidInput):
    pass


def check_global(module: str, name: str, source: Path | str) -> None:
    if (module, name) not in ALLOWED_GLOBALS:
        raise RefusedPickle(f"{source}: refused to unpickle the global {module}.{name}: a feature-release file holds "
                            f"only dicts, strings, numbers and numpy arrays (is the file what it claims to be?)")


class RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file: BinaryIO, source: Path | str):
        super().__init__(file, encoding="latin1")  # numpy arrays pickled by Python 2
        self.source = source

    def find_class(self, module: str, name: str):
        check_global(module, name, self.source)
        return super().find_class(module, name)


def load_npy(path: Path):
    """An .npy file's array; a pickled object array is unpickled with only the allowed globals."""
    with open(path, "rb") as f:
        version = npy_format.read_magic(f)
        read_header = {(1, 0): npy_format.read_array_header_1_0, (2, 0): npy_format.read_array_header_2_0,
                       (3, 0): npy_format.read_array_header_2_0}
        shape, _, dtype = read_header[version](f)
        if dtype != np.dtype(object):
            f.seek(0)
            return np.load(f, allow_pickle=False)
        array = RestrictedUnpickler(f, path).load()
    if not isinstance(array, np.ndarray) or array.shape != shape:
        raise InvalidInput(f"{path}: its pickle does not hold the {shape} object array its header announces")
    return array
