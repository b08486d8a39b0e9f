"""Reading, checking and writing crystal structures of one binary hydride domain.

A *domain* is a set of binary M-H structures (M one metal). They come from a folder of
POSCAR / CONTCAR / ``*.vasp`` / ``*.cif`` files, read here with pymatgen; from one file of
structures that ASE reads (extended XYZ, ``.traj``, an ASE database, ...:
:mod:`crystalgan_jax.materials.ase_files`); or from the CrystalGAN authors' MATLAB
``.mat`` format (:mod:`crystalgan_jax.materials.mat_files`). :func:`read_domain` picks the
reader. This module also holds what those readers share: :class:`Domain`, the checks, and
:class:`StructureFileError`.

Every failure on bad input raises :class:`StructureFileError`, whose message names the
file (and the line, where one is to blame) and says what is wrong.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
import re
import warnings
from pathlib import Path
from typing import Callable, Sequence

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


def read_structure_files(folder: str | os.PathLike,
                         check: Callable[[Structure, str], None] = check_training_structure
                         ) -> tuple[list[Structure], tuple[str, ...]]:
    """Every structure file of ``folder`` (sorted by name), each passed to
    ``check(structure, path)`` as it is read; returns (structures, their paths).

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
        check(structure, str(path))
        structures.append(structure)
    return structures, tuple(str(p) for p in files)


def read_folder(folder: str | os.PathLike, metal: str) -> Domain:
    """Reads every structure file of ``folder`` (sorted by name) as domain ``metal``-H.

    Raises:
      StructureFileError: missing or empty folder, or any bad file in it.
    """
    def check(structure: Structure, source: str) -> None:
        check_binary(structure, metal, source)
        check_training_structure(structure, source)

    structures, sources = read_structure_files(folder, check)
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


def read_domain(source: str | os.PathLike, metal: str, mat_block: int | None = None) -> Domain:
    """Reads a domain from a folder of structure files (:func:`read_folder`), a ``.mat``
    file (:func:`crystalgan_jax.materials.mat_files.read_mat`), or any other file ASE
    reads (:func:`crystalgan_jax.materials.ase_files.read_ase`: extended XYZ, ``.traj``,
    an ASE database, ...).

    Args:
      source: folder, ``.mat`` file, or a file of structures.
      metal: element symbol of the domain's metal.
      mat_block: for ``.mat`` files, 2 if ``metal`` is the system's element A, 3 if B.
    """
    # imported here: both modules build on this one's checks and Domain
    from crystalgan_jax.materials import ase_files, mat_files

    source = Path(source)
    if source.suffix.lower() == ".mat":
        if mat_block is None:
            raise ValueError("mat_block (2 for element A, 3 for B) is needed for .mat files")
        return mat_files.read_mat(source, metal, mat_block)
    if source.is_file():
        return ase_files.read_ase(source, metal)
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


def write_symmetrized_cif(structure: Structure, path: str | os.PathLike,
                          symprec: float) -> bool:
    """Writes ``structure`` as a CIF in its space group at ``symprec`` (Angstrom): the
    symmetry-refined cell, the asymmetric unit and the symmetry operations
    (``CifWriter(symprec=)``), which pymatgen and ASE expand back to the full cell.

    Returns False, writing nothing, where the structure has no symmetry above P1 at that
    tolerance (its P1 CIF says all there is) or spglib finds none.
    """
    import warnings

    from pymatgen.io.cif import CifWriter
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            number = SpacegroupAnalyzer(structure, symprec=symprec).get_space_group_number()
            if number <= 1:
                return False
            text = str(CifWriter(right_handed(structure), symprec=symprec))
    except Exception:  # spglib rejects some cells
        return False
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(without_negative_zero(text))
    return True
