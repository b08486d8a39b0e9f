"""Reading and writing crystal structures of one binary hydride domain.

A *domain* is a set of binary M-H structures (M one metal). They come from a folder of
POSCAR / CONTCAR / ``*.vasp`` / ``*.cif`` files, read with pymatgen; from one file of
structures that ASE reads (extended XYZ, ``.traj``, an ASE database, ...); or from
the CrystalGAN authors' MATLAB ``.mat`` format (one object array of shape
``[n_structures, 4]`` holding lattice, H, A and B blocks in Cartesian Angstrom; the block
of the absent metal is an all-zero placeholder).

Every failure on bad input raises :class:`StructureFileError`, whose message names the
file (and the line, where one is to blame) and says what is wrong.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
import pickle
import re
import signal
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
from pymatgen.core import Element, Lattice, Structure

HYDROGEN = "H"
STRUCTURE_SUFFIXES = (".vasp", ".poscar", ".cif")
STRUCTURE_STEMS = ("POSCAR", "CONTCAR")
# Below this a cell is treated as degenerate (collinear or coplanar lattice vectors).
MIN_CELL_VOLUME = 1e-3  # Angstrom^3
# Two atoms closer than this (Angstrom, periodic images included) are one atom typed twice:
# the shortest bond of any hydride (H-H in H2) is 0.74 A.
MIN_SEPARATION = 0.5
# A .mat file is read in a child process (scipy's reader can crash on damaged files); it
# gets this long (seconds) before it counts as hung.
MAT_READ_TIMEOUT = 120


class DuplicateStructureWarning(UserWarning):
    """Two inputs of one domain hold the same structure (same cell, same atoms)."""


class StructureFileError(ValueError):
    """Bad input: names the file, the line (where known) and what is wrong."""

    def __init__(self, path: str | os.PathLike, message: str, line: int | None = None):
        self.path = str(path)
        self.line = line
        where = self.path if line is None else f"{self.path}, line {line}"
        super().__init__(f"{where}: {message}")


@dataclasses.dataclass(frozen=True)
class Domain:
    """Binary M-H structures of one metal, with where each came from.

    Attributes:
      metal: element symbol of the metal M.
      structures: the structures, Cartesian coordinates in Angstrom.
      sources: one label per structure naming its file (``path`` or ``path[i]``).
    """

    metal: str
    structures: tuple[Structure, ...]
    sources: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.structures)


def is_structure_file(path: Path) -> bool:
    """True for names this module reads: POSCAR*, CONTCAR*, *.vasp, *.poscar, *.cif."""
    name = path.name
    return path.is_file() and (
        path.suffix.lower() in STRUCTURE_SUFFIXES
        or any(name.startswith(stem) for stem in STRUCTURE_STEMS)
    )


def _check_poscar_text(path: Path, text: str) -> Structure | None:
    """Line-numbered validation of the POSCAR header and coordinate lines.

    pymatgen's own errors rarely say where a POSCAR is broken; this catches the
    usual faults first so that the user is told the line. Returns the structure too
    where the file is plain (one positive scale factor, no ``#`` comments): what
    pymatgen's reader would build, without importing ``pymatgen.io.vasp`` (about 1 s:
    it pulls in its VASP output parsers and scipy.signal); otherwise None.
    """
    lines = text.splitlines()

    def floats(lineno: int, count: int, what: str) -> list[float]:
        if lineno > len(lines):
            raise StructureFileError(path, f"file ends before the {what}", lineno)
        parts = lines[lineno - 1].split()
        try:
            values = [float(p) for p in parts[:count]]
        except ValueError:
            values = []
        if len(values) < count:
            raise StructureFileError(
                path, f"expected {count} numbers ({what}), got {lines[lineno - 1]!r}", lineno)
        if not all(math.isfinite(v) for v in values):
            raise StructureFileError(
                path, f"non-finite number in the {what}: {lines[lineno - 1]!r}", lineno)
        return values

    if not text.strip():
        raise StructureFileError(path, "file is empty")
    scale = floats(2, 1, "scale factor")[0]
    rows = [floats(3 + i, 3, f"lattice vector {'abc'[i]}") for i in range(3)]
    if len(lines) < 7:
        raise StructureFileError(path, "file ends before the species and counts lines", len(lines))
    species = lines[5].split()
    if not species or any(s[0].isdigit() for s in species):
        raise StructureFileError(
            path, "missing element symbols line (VASP 4 format is not supported)", 6)
    for s in species:
        symbol = s.split("/")[0].split("_")[0]
        if not Element.is_valid_symbol(symbol):
            raise StructureFileError(path, f"{s!r} is not an element symbol", 6)
    try:
        counts = [int(c) for c in lines[6].split()]
    except ValueError:
        raise StructureFileError(path, f"atom counts must be integers: {lines[6]!r}", 7) from None
    if len(counts) != len(species):
        raise StructureFileError(
            path, f"{len(species)} element symbols but {len(counts)} atom counts", 7)
    if any(c < 0 for c in counts) or sum(counts) == 0:
        raise StructureFileError(path, f"atom counts must be >= 0 with at least one atom: "
                                 f"{lines[6]!r}", 7)
    mode_line = 8
    if mode_line <= len(lines) and lines[mode_line - 1].strip()[:1].lower() == "s":
        mode_line += 1  # 'Selective dynamics'
    if mode_line > len(lines):
        raise StructureFileError(path, "file ends before the coordinate mode line", mode_line)
    if lines[mode_line - 1].strip()[:1].lower() not in ("c", "k", "d"):
        raise StructureFileError(
            path, f"expected 'Direct' or 'Cartesian', got {lines[mode_line - 1]!r}", mode_line)
    coords = [floats(mode_line + 1 + k, 3, f"coordinates of atom {k + 1}")
              for k in range(sum(counts))]
    # One more coordinate line right after the last counted atom means the counts line
    # undercounts (a blank line ends the positions; velocities may follow it).
    extra = mode_line + sum(counts) + 1
    if extra <= len(lines) and _is_coordinate_line(lines[extra - 1]):
        more = 0
        while extra + more <= len(lines) and _is_coordinate_line(lines[extra + more - 1]):
            more += 1
        raise StructureFileError(
            path, f"the counts line says {sum(counts)} atoms but {sum(counts) + more} "
            f"coordinate lines follow line {mode_line}", extra)
    if len(lines[1].split()) != 1 or scale <= 0 or "#" in text:
        return None  # a volume, per-axis scales or comments: pymatgen reads those
    cartesian = lines[mode_line - 1].strip()[:1].lower() in ("c", "k")
    symbols = [s.split("/")[0].split("_")[0] for s in species]
    return Structure(np.array(rows) * scale,
                     [e for e, n in zip(symbols, counts) for _ in range(n)],
                     np.array(coords) * (scale if cartesian else 1.0),
                     coords_are_cartesian=cartesian, to_unit_cell=False,
                     validate_proximity=False)


def _is_coordinate_line(line: str) -> bool:
    parts = line.split()
    if len(parts) < 3:
        return False
    try:
        [float(p) for p in parts[:3]]
    except ValueError:
        return False
    return True


def check_finite(structure: Structure, source: str) -> None:
    """Raises StructureFileError for NaN or inf in the cell or the positions."""
    if not np.all(np.isfinite(structure.lattice.matrix)):
        raise StructureFileError(source, "the lattice holds a non-finite number (NaN or inf)")
    bad = np.flatnonzero(~np.all(np.isfinite(structure.frac_coords), axis=1))
    if bad.size:
        raise StructureFileError(source, f"atom {bad[0] + 1} has a non-finite coordinate")


def check_training_structure(structure: Structure, source: str) -> None:
    """Checks that an input structure is physical: finite, no overlapping atoms.

    Only for inputs: generated structures may overlap, and the evaluation says so.

    Raises:
      StructureFileError: NaN/inf in the cell or the positions, or two atoms (or an atom
        and a periodic image of another, or of itself) closer than :data:`MIN_SEPARATION`.
    """
    check_finite(structure, source)
    if len(structure) > 1:
        distances = structure.distance_matrix
        np.fill_diagonal(distances, np.inf)
        i, j = np.unravel_index(np.argmin(distances), distances.shape)
        if distances[i, j] < MIN_SEPARATION:
            raise StructureFileError(
                source, f"atoms {min(i, j) + 1} ({structure[int(i)].specie}) and "
                f"{max(i, j) + 1} ({structure[int(j)].specie}) are {distances[i, j]:.3g} A "
                f"apart (closer than {MIN_SEPARATION} A: one atom given twice?)")
    matrix = structure.lattice.matrix
    spacing = structure.lattice.volume / np.max(
        np.linalg.norm(np.cross(matrix[[1, 2, 0]], matrix[[2, 0, 1]]), axis=1))
    if spacing < MIN_SEPARATION:
        raise StructureFileError(
            source, f"lattice planes {spacing:.3g} A apart: every atom overlaps its own "
            f"periodic image (closer than {MIN_SEPARATION} A)")


def read_structure(path: str | os.PathLike) -> Structure:
    """Reads one POSCAR/CONTCAR/.vasp or .cif file with pymatgen.

    Raises:
      StructureFileError: unreadable or malformed file, a zero-volume cell, or a
        disordered (partially occupied) site.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise StructureFileError(path, f"cannot read file: {err}") from None
    is_cif = path.suffix.lower() == ".cif"
    structure = None if is_cif else _check_poscar_text(path, text)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if is_cif:
                structure = Structure.from_str(text, fmt="cif")
            elif structure is None:
                structure = Structure.from_str(text, fmt="poscar")
    except Exception as err:  # pymatgen raises many types for malformed files
        raise StructureFileError(path, f"malformed {'CIF' if is_cif else 'POSCAR'}: {err}") from None
    if abs(structure.lattice.volume) < MIN_CELL_VOLUME:
        raise StructureFileError(path, "cell volume is zero (degenerate lattice vectors)")
    if not structure.is_ordered:
        site = next(i for i, x in enumerate(structure) if not x.is_ordered)
        raise StructureFileError(
            path, f"site {site + 1} has partial occupancy ({structure[site].species}); "
            "only ordered structures can be encoded")
    check_finite(structure, str(path))
    return structure


def check_binary(structure: Structure, metal: str, source: str) -> None:
    """Checks that ``structure`` holds the metal and H and nothing else.

    Raises:
      StructureFileError: another element, or no H, or no metal.
    """
    symbols = {site.specie.symbol for site in structure}
    others = sorted(symbols - {metal, HYDROGEN})
    if others:
        raise StructureFileError(
            source, f"holds {', '.join(others)}; this domain takes only {metal} and H")
    if HYDROGEN not in symbols:
        raise StructureFileError(source, "holds no H atom")
    if metal not in symbols:
        raise StructureFileError(source, f"holds no {metal} atom")


def read_folder(folder: str | os.PathLike, metal: str) -> Domain:
    """Reads every structure file of ``folder`` (sorted by name) as domain ``metal``-H.

    Raises:
      StructureFileError: missing or empty folder, or any bad file in it.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise StructureFileError(folder, "no such folder")
    files = sorted(p for p in folder.iterdir() if is_structure_file(p))
    if not files:
        raise StructureFileError(
            folder, "holds no structure files (POSCAR*, CONTCAR*, *.vasp, *.poscar, *.cif)")
    structures = []
    for path in files:
        structure = read_structure(path)
        check_binary(structure, metal, str(path))
        check_training_structure(structure, str(path))
        structures.append(structure)
    sources = tuple(str(p) for p in files)
    warn_duplicates(structures, sources)
    return Domain(metal, tuple(structures), sources)


def _fingerprint(structure: Structure, decimals: int = 4) -> tuple:
    """Cell and atoms rounded to ``decimals``, in a site order independent of the file's."""
    frac = np.round(np.mod(structure.frac_coords, 1.0), decimals) % 1.0
    sites = sorted(zip((site.specie.symbol for site in structure), map(tuple, frac)))
    return (tuple(np.round(structure.lattice.matrix, decimals).ravel()), tuple(sites))


def warn_duplicates(structures: Sequence[Structure], sources: Sequence[str]) -> list[tuple[str, str]]:
    """Warns (:class:`DuplicateStructureWarning`) about inputs that repeat another.

    Two inputs are duplicates when their cells and atoms agree to 1e-4 (same setting);
    a duplicate weighs its structure twice in training. Returns the (first, repeat) pairs.
    """
    seen: dict[tuple, str] = {}
    pairs = []
    for structure, source in zip(structures, sources):
        key = _fingerprint(structure)
        if key in seen:
            pairs.append((seen[key], source))
        else:
            seen[key] = source
    if pairs:
        listed = "; ".join(f"{b} repeats {a}" for a, b in pairs[:5])
        more = f" (and {len(pairs) - 5} more)" if len(pairs) > 5 else ""
        warnings.warn(f"{len(pairs)} duplicate input structure(s): {listed}{more}",
                      DuplicateStructureWarning, stacklevel=2)
    return pairs


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


def _xyz_frame_lines(path: Path, text: str) -> list[int]:
    """First line (1-based) of each frame of an (extended) XYZ file.

    A frame is an atom-count line, a comment line and that many atom lines; a count
    line that is no integer is reported with its line number.
    """
    lines = text.splitlines()
    starts, number = [], 1
    while number <= len(lines):
        if not lines[number - 1].strip():
            number += 1  # blank lines between or after frames
            continue
        try:
            count = int(lines[number - 1].split()[0])
        except ValueError:
            raise StructureFileError(
                path, f"expected the atom count of frame {len(starts) + 1}, got "
                f"{lines[number - 1]!r}", number) from None
        if count < 0 or number + 1 + count > len(lines):
            raise StructureFileError(
                path, f"frame {len(starts) + 1} announces {count} atoms but the file ends "
                "first", number)
        starts.append(number)
        number += count + 2
    return starts


def _ase_frames(path: Path) -> list[tuple[str, str, int | None, "object"]]:
    """(source label, name for messages, line or None, ase.Atoms) per structure of a file
    ASE reads."""
    import ase.db
    import ase.io
    from ase.io.formats import UnknownFileTypeError, filetype, ioformats

    try:
        fmt = filetype(str(path))  # from the contents, else the name
    except (UnknownFileTypeError, OSError) as err:
        fmt, reason = None, str(err)
    else:
        reason = f"ASE has no reader for {fmt!r}"
    if fmt not in ioformats or not ioformats[fmt].can_read:
        raise StructureFileError(
            path, f"not a structure format ASE reads ({reason}); give a folder of POSCAR/CIF "
            "files, a .mat file, or a file ase.io.read reads (extxyz, .traj, .db, ...)")
    if fmt == "db":
        try:
            with ase.db.connect(str(path)) as database:
                return [(f"{path}[id={row.id}]", f"row id={row.id}", None, row.toatoms())
                        for row in database.select()]
        except Exception as err:  # sqlite and ASE raise several types
            raise StructureFileError(path, f"unreadable ASE database: {err}") from None
    lines: list[int | None] = []
    if fmt in ("xyz", "extxyz"):
        try:
            lines = _xyz_frame_lines(path, path.read_text())
        except (OSError, UnicodeDecodeError) as err:
            raise StructureFileError(path, f"cannot read file: {err}") from None
    frames = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for atoms in ase.io.iread(str(path), index=":", format=fmt):
                frames.append(atoms)
    except Exception as err:  # ASE's readers raise many types for malformed files
        line = lines[len(frames)] if len(frames) < len(lines) else None
        raise StructureFileError(
            path, f"structure {len(frames) + 1}: malformed {fmt} ({err})", line) from None
    return [(f"{path}[{i}]", f"structure {i + 1}", lines[i] if i < len(lines) else None, atoms)
            for i, atoms in enumerate(frames)]


def read_ase(path: str | os.PathLike, metal: str) -> Domain:
    """Reads every structure of one file that ``ase.io.read`` reads, as domain ``metal``-H.

    Extended XYZ, ASE trajectories (``.traj``), ASE databases (``.db``, one row per
    structure) and the other formats ASE recognises from the file's contents or name.
    Sources are ``path[i]`` (i the 0-based frame) or ``path[id=N]`` for database rows.

    Raises:
      StructureFileError: unreadable file, unknown format, a structure without a
        periodic cell, a degenerate cell, or elements other than ``metal`` and H; for
        (extended) XYZ files the message names the line where the structure starts.
    """
    from pymatgen.io.ase import AseAtomsAdaptor

    path = Path(path)
    if not path.is_file():
        raise StructureFileError(path, "no such file")
    frames = _ase_frames(path)
    if not frames:
        raise StructureFileError(path, "holds no structures")
    structures, sources = [], []
    for source, name, line, atoms in frames:
        where = f"{name}: "
        if not all(atoms.pbc) or abs(atoms.cell.volume) < MIN_CELL_VOLUME:
            raise StructureFileError(
                path, where + "no periodic cell (needs a lattice with pbc in all three "
                "directions and nonzero volume)", line)
        structure = AseAtomsAdaptor.get_structure(atoms)
        try:
            check_binary(structure, metal, source)
        except StructureFileError as err:
            raise StructureFileError(path, where + str(err)[len(err.path) + 2:], line) from None
        structures.append(structure)
        sources.append(source)
    return Domain(metal, tuple(structures), tuple(sources))


def read_domain(source: str | os.PathLike, metal: str, mat_block: int | None = None) -> Domain:
    """Reads a domain from a folder of structure files, a ``.mat`` file, or any other file
    ASE reads (:func:`read_ase`: extended XYZ, ``.traj``, an ASE database, ...).

    Args:
      source: folder, ``.mat`` file, or a file of structures.
      metal: element symbol of the domain's metal.
      mat_block: for ``.mat`` files, 2 if ``metal`` is the system's element A, 3 if B.
    """
    source = Path(source)
    if source.suffix.lower() == ".mat":
        if mat_block is None:
            raise ValueError("mat_block (2 for element A, 3 for B) is needed for .mat files")
        return read_mat(source, metal, mat_block)
    if source.is_file():
        return read_ase(source, metal)
    return read_folder(source, metal)


def sorted_by_species(structure: Structure, order: Sequence[str]) -> Structure:
    """A copy whose sites are grouped by element in ``order`` (stable within a group)."""
    rank = {s: i for i, s in enumerate(order)}
    sites = sorted(structure, key=lambda site: rank.get(site.specie.symbol, len(rank)))
    return Structure.from_sites(sites)


def right_handed(structure: Structure) -> Structure:
    """The same crystal with a right-handed cell (positive triple product a.(b x c)).

    A generated lattice can come out left-handed, which VASP refuses. Negating all three
    vectors spans the same lattice and keeps every Cartesian position.
    """
    matrix = structure.lattice.matrix
    if np.linalg.det(matrix) >= 0:
        return structure
    return Structure(Lattice(-matrix), structure.species, structure.cart_coords,
                     coords_are_cartesian=True)


# A number printed as zero with a minus sign: "-0.0000000000", "-0.00".
_NEGATIVE_ZERO = re.compile(r"(?<![\w.])-(0\.0+)(?![\w.])")


def without_negative_zero(text: str, padded: bool = False) -> str:
    """``text`` with every number that prints as a negative zero written as a plain zero.

    A coordinate that is zero in exact arithmetic comes out as +0.0 or -0.0 (or +-1e-17)
    depending on the CPU and the library build, and the writers print it as
    ``0.0000000000`` or ``-0.0000000000``. Rounding before formatting cannot prevent this,
    because pymatgen recomputes Cartesian coordinates from fractional ones when it writes;
    so the written text is normalised instead, and the same structure gives the same
    file on every machine.

    Args:
      text: as a writer printed it.
      padded: the writer right-aligns numbers in fixed-width columns (POSCAR): the sign
        becomes a space, as a positive zero would have been printed. Otherwise (CIF, one
        number after another) the sign is dropped.
    """
    return _NEGATIVE_ZERO.sub(r" \1" if padded else r"\1", text)


def write_poscar(structure: Structure, path: str | os.PathLike, comment: str | None = None) -> None:
    """Writes a VASP 5 POSCAR (Cartesian, real element symbols) that pymatgen and ASE read.

    The cell is made right-handed first (:func:`right_handed`).
    """
    structure = right_handed(structure)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(without_negative_zero(
        poscar_text(structure, comment or structure.composition.reduced_formula), padded=True))


def poscar_text(structure: Structure, comment: str) -> str:
    """The POSCAR of ``structure`` as pymatgen's ``Poscar.get_str(direct=False,
    significant_figures=10)`` prints it (species in runs of equal neighbours, Cartesian
    Angstrom, 10 decimals), without importing ``pymatgen.io.vasp`` (about 1 s)."""
    number = "{:15.10f}".format
    symbols = [site.specie.symbol for site in structure]
    runs = [(symbol, len(list(group))) for symbol, group in itertools.groupby(symbols)]
    lines = [comment, "1.0"]
    lines += [" ".join(number(c) for c in row) for row in structure.lattice.matrix]
    lines += [" ".join(s for s, _ in runs), " ".join(str(n) for _, n in runs), "cartesian"]
    lines += [" ".join(number(c) for c in site.coords) + f" {site.species_string}"
              for site in structure]
    return "\n".join(lines) + "\n"


def write_cif(structure: Structure, path: str | os.PathLike) -> None:
    """Writes a P1 CIF with real element symbols, right-handed cell."""
    from pymatgen.io.cif import CifWriter

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(without_negative_zero(str(CifWriter(right_handed(structure)))))
