"""The CrystalGAN authors' MATLAB ``.mat`` format as a domain.

One object array of shape ``[n_structures, 4]`` holding lattice, H, A and B blocks in
Cartesian Angstrom; the block of the absent metal is an all-zero placeholder. The file is
read in a child process (scipy's reader can crash on damaged files). Every failure raises
:class:`crystalgan_jax.materials.io.StructureFileError`.
"""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
from pymatgen.core import Element, Lattice, Structure

from crystalgan_jax.materials.io import (HYDROGEN, MIN_CELL_VOLUME, Domain, StructureFileError,
                                         check_training_structure, warn_duplicates)

# A .mat file is read in a child process (scipy's reader can crash on damaged files); it
# gets this long (seconds) before it counts as hung.
MAT_READ_TIMEOUT = 120


# Run by ``python -I -c`` in a child: load the file, pickle what scipy returns to stdout.
_MAT_CHILD = """
import pickle, sys
from scipy.io import loadmat
try:
    contents = loadmat(sys.argv[1])
except Exception as err:
    sys.stderr.write(f"{type(err).__name__}: {err}"[:300])
    sys.exit(3)
pickle.dump({k: v for k, v in contents.items() if not k.startswith("__")}, sys.stdout.buffer)
"""


class _ArraysOnly(pickle.Unpickler):
    """Unpickles numpy arrays and plain Python values, nothing else."""

    def find_class(self, module, name):
        if module.split(".")[0] == "numpy" or (module == "builtins" and name in (
                "dict", "list", "tuple", "str", "bytes", "int", "float", "complex", "bool")):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"unexpected {module}.{name} in .mat contents")


def load_mat(path: str | os.PathLike) -> dict:
    """``scipy.io.loadmat`` of ``path`` (variables only), run in a child process.

    scipy's reader can die with SIGSEGV on a damaged file; in a child that cannot take
    the caller down and is reported as an unreadable file.

    Raises:
      StructureFileError: the reader failed, crashed or hung.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            header = f.read(128)
    except OSError as err:
        raise StructureFileError(path, f"cannot read file: {err}") from None
    # Cell arrays (the authors' layout) exist only in MAT-file version 5 (and 7), whose
    # 128-byte header starts with this text and ends with the endian mark 'IM' or 'MI'.
    if not header.startswith(b"MATLAB 5.0 MAT-file") or header[126:128] not in (b"IM", b"MI"):
        raise StructureFileError(
            path, "not a MATLAB 5 .mat file (no 'MATLAB 5.0 MAT-file' header); the authors' "
            "format is a version 5/7 cell array")
    try:
        proc = subprocess.run([sys.executable, "-I", "-c", _MAT_CHILD, str(path)],
                              capture_output=True, timeout=MAT_READ_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise StructureFileError(
            path, f"not a readable MATLAB .mat file: the reader hung (> {MAT_READ_TIMEOUT} s)"
        ) from None
    if proc.returncode < 0:
        try:
            name = signal.Signals(-proc.returncode).name
        except ValueError:
            name = f"signal {-proc.returncode}"
        raise StructureFileError(
            path, f"not a readable MATLAB .mat file: the reader crashed ({name}); the file "
            "is damaged")
    if proc.returncode != 0:
        detail = proc.stderr.decode(errors="replace").strip().splitlines()
        raise StructureFileError(
            path, f"not a readable MATLAB .mat file: {detail[-1] if detail else 'unknown error'}")
    try:
        import io as _stdio

        return _ArraysOnly(_stdio.BytesIO(proc.stdout)).load()
    except Exception as err:
        raise StructureFileError(path, f"not a readable MATLAB .mat file: {err}") from None


def _mat_array(path: Path):
    contents = load_mat(path)
    keys = list(contents)
    if len(keys) != 1:
        raise StructureFileError(path, f"expected one variable, found {keys}")
    array = contents[keys[0]]
    if not isinstance(array, np.ndarray) or array.dtype != object or array.ndim != 2 \
            or array.shape[1] != 4:
        raise StructureFileError(
            path, f"variable {keys[0]!r} must be a cell array [n, 4] (lattice, H, A, B), got "
            f"{getattr(array, 'dtype', type(array).__name__)} {getattr(array, 'shape', '')}")
    if array.shape[0] == 0:
        raise StructureFileError(path, f"variable {keys[0]!r} holds no structures (0 rows)")
    return array


_COLUMNS = ("lattice", "H block", "metal A block", "metal B block")


def _numeric_block(cell, source: str, column: int, rows: int | None = None) -> np.ndarray:
    """One cell of a .mat row as a float64 ``[n, 3]`` array (``[3, 3]`` for the lattice).

    Raises StructureFileError naming the row and column for strings, structs, nested
    cells, a wrong number of columns or a non-finite entry.
    """
    what = f"column {column + 1} ({_COLUMNS[column]})"
    array = np.asarray(cell)
    if array.dtype.kind not in "iufb":
        kind = {"U": "a string", "S": "a string", "V": "a MATLAB struct",
                "O": "a nested cell"}.get(array.dtype.kind, f"dtype {array.dtype}")
        raise StructureFileError(source, f"{what} holds {kind}, not numbers")
    array = array.astype(np.float64)
    if array.size == 0:
        array = array.reshape(0, 3)
    if array.ndim != 2 or array.shape[1] != 3 or (rows is not None and array.shape[0] != rows):
        want = f"{rows} x 3" if rows is not None else "n x 3 (one row per atom)"
        raise StructureFileError(source, f"{what} must be {want} numbers, got shape "
                                 f"{array.shape}")
    if not np.all(np.isfinite(array)):
        r = int(np.flatnonzero(~np.all(np.isfinite(array), axis=1))[0])
        raise StructureFileError(source, f"{what} row {r + 1} holds a non-finite number "
                                 f"{array[r].tolist()}")
    return array


def _is_placeholder(block) -> bool:
    """The authors' marker for an absent metal: an 18x3 block of zeros."""
    block = np.asarray(block)
    return block.shape == (18, 3) and not np.any(block)


def read_mat(path: str | os.PathLike, metal: str, block: int) -> Domain:
    """Reads the authors' ``.mat`` format (SOURCE.md) as domain ``metal``-H.

    Args:
      path: the ``.mat`` file.
      metal: element symbol of the metal of this file.
      block: column holding the metal's positions: 2 for element A, 3 for B (0 is the
        lattice, 1 the H positions). The other metal column must be the all-zero
        placeholder.

    Raises:
      StructureFileError: unreadable file (also a reader crash, see :func:`load_mat`),
        wrong layout, or a bad row; the message names ``path[row]`` and the column.
    """
    path = Path(path)
    if not path.is_file():
        raise StructureFileError(path, "no such file")
    if not Element.is_valid_symbol(metal):
        raise StructureFileError(path, f"{metal!r} is not an element symbol")
    array = _mat_array(path)
    other = 5 - block
    structures, sources = [], []
    for i, row in enumerate(array):
        source = f"{path}[{i}]"
        lattice = _numeric_block(row[0], source, 0, rows=3)
        placeholder = _numeric_block(row[other], source, other)
        if np.any(placeholder):
            raise StructureFileError(
                source, f"column {other + 1} should be the all-zero placeholder of the "
                f"other metal, but holds atoms: is this file's metal {metal}?")
        if not _is_placeholder(placeholder):
            raise StructureFileError(
                source, f"column {other + 1} (placeholder of the other metal) must be 18 x 3 "
                f"zeros, got shape {placeholder.shape}")
        if abs(np.linalg.det(lattice)) < MIN_CELL_VOLUME:
            raise StructureFileError(source, "cell volume is zero (degenerate lattice vectors)")
        h = _numeric_block(row[1], source, 1)
        m = _numeric_block(row[block], source, block)
        if len(h) == 0:
            raise StructureFileError(source, "holds no H atom")
        if len(m) == 0 or _is_placeholder(m):
            raise StructureFileError(source, f"holds no {metal} atom")
        species = [HYDROGEN] * len(h) + [metal] * len(m)
        structure = Structure(Lattice(lattice), species, np.concatenate([h, m]),
                              coords_are_cartesian=True)
        check_training_structure(structure, source)
        structures.append(structure)
        sources.append(source)
    warn_duplicates(structures, sources)
    return Domain(metal, tuple(structures), tuple(sources))
