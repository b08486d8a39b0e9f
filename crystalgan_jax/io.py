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
import os
import re
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


def _check_poscar_text(path: Path, text: str) -> None:
    """Line-numbered validation of the POSCAR header and coordinate lines.

    pymatgen's own errors rarely say where a POSCAR is broken; this catches the
    usual faults first so that the user is told the line.
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
        return values

    if not text.strip():
        raise StructureFileError(path, "file is empty")
    floats(2, 1, "scale factor")
    for i in range(3):
        floats(3 + i, 3, f"lattice vector {'abc'[i]}")
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
    mode_line = 8
    if mode_line <= len(lines) and lines[mode_line - 1].strip()[:1].lower() == "s":
        mode_line += 1  # 'Selective dynamics'
    if mode_line > len(lines):
        raise StructureFileError(path, "file ends before the coordinate mode line", mode_line)
    if lines[mode_line - 1].strip()[:1].lower() not in ("c", "k", "d"):
        raise StructureFileError(
            path, f"expected 'Direct' or 'Cartesian', got {lines[mode_line - 1]!r}", mode_line)
    for k in range(sum(counts)):
        floats(mode_line + 1 + k, 3, f"coordinates of atom {k + 1}")


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
    if not is_cif:
        _check_poscar_text(path, text)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if is_cif:
                structure = Structure.from_str(text, fmt="cif")
            else:
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
        structures.append(structure)
    return Domain(metal, tuple(structures), tuple(str(p) for p in files))


def _mat_array(path: Path):
    from scipy.io import loadmat  # scipy is a dependency of pymatgen

    try:
        contents = loadmat(str(path))
    except Exception as err:
        raise StructureFileError(path, f"not a readable MATLAB .mat file: {err}") from None
    keys = [k for k in contents if not k.startswith("__")]
    if len(keys) != 1:
        raise StructureFileError(path, f"expected one variable, found {keys}")
    array = contents[keys[0]]
    if array.dtype != object or array.ndim != 2 or array.shape[1] != 4:
        raise StructureFileError(
            path, f"variable {keys[0]!r} must be an object array [n, 4], got "
            f"{array.dtype} {array.shape}")
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
    """
    path = Path(path)
    if not path.is_file():
        raise StructureFileError(path, "no such file")
    array = _mat_array(path)
    other = 5 - block
    structures, sources = [], []
    for i, row in enumerate(array):
        source = f"{path}[{i}]"
        lattice = np.asarray(row[0], np.float64)
        h = np.asarray(row[1], np.float64).reshape(-1, 3)
        m = np.asarray(row[block], np.float64).reshape(-1, 3)
        if lattice.shape != (3, 3):
            raise StructureFileError(source, f"lattice must be 3x3, got {lattice.shape}")
        if not _is_placeholder(row[other]):
            raise StructureFileError(
                source, f"column {other + 1} should be the all-zero placeholder of the "
                f"other metal, but holds atoms: is this file's metal {metal}?")
        if abs(np.linalg.det(lattice)) < MIN_CELL_VOLUME:
            raise StructureFileError(source, "cell volume is zero (degenerate lattice vectors)")
        if len(h) == 0:
            raise StructureFileError(source, "holds no H atom")
        if len(m) == 0 or _is_placeholder(row[block]):
            raise StructureFileError(source, f"holds no {metal} atom")
        species = [HYDROGEN] * len(h) + [metal] * len(m)
        structures.append(
            Structure(Lattice(lattice), species, np.concatenate([h, m]), coords_are_cartesian=True))
        sources.append(source)
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
    from pymatgen.io.vasp import Poscar

    structure = right_handed(structure)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    poscar = Poscar(structure, comment=comment or structure.composition.reduced_formula,
                    sort_structure=False)
    Path(path).write_text(without_negative_zero(
        poscar.get_str(direct=False, significant_figures=10), padded=True))


def write_cif(structure: Structure, path: str | os.PathLike) -> None:
    """Writes a P1 CIF with real element symbols, right-handed cell."""
    from pymatgen.io.cif import CifWriter

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(without_negative_zero(str(CifWriter(right_handed(structure)))))
