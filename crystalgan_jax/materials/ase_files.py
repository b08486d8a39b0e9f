"""One file of structures that ASE reads (extended XYZ, ``.traj``, an ASE database, ...)
as a domain. Every failure raises :class:`crystalgan_jax.materials.io.StructureFileError`,
naming the line where an (extended) XYZ structure starts.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from crystalgan_jax.materials.io import (MIN_CELL_VOLUME, Domain, StructureFileError,
                                         check_binary)


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
