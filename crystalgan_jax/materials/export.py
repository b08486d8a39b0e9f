"""A run's final structures in the formats materials tools read: extended XYZ and an ASE database.

:func:`write_exports` writes, beside the per-structure POSCAR/CIF files of a run,

* ``structures.extxyz``: every final structure, one frame each, and
* ``run.db``: an ASE database (SQLite), one row per structure,

both carrying, per structure, the same key-value pairs: where it came from
(``direction``, ``sample``, ``file``, ``seed``, ``method``, ``system``), its pymatgen
``reduced_formula`` (ASE adds its own ``formula`` column), ``spacegroup`` and
``spacegroup_number``, the verdicts ``ternary``, ``good_paper``, ``good_strict`` (bools),
why each failed (``reason_ternary``, ``reason_good_paper``, ``reason_good_strict``; absent
where the verdict holds) and ``unique_group`` (the StructureMatcher group of a strictly
good structure). So::

    ase db runs/pdni/run.db good_strict=True
    ase db runs/pdni/run.db good_paper=True,direction=AHB -c +spacegroup,reduced_formula

select the candidates without any code. The verdicts come from the run's report (see
:mod:`crystalgan_jax.materials.report`); a run without a report exports the structures and their
provenance only.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

EXTXYZ = "structures.extxyz"
DATABASE = "run.db"
# report.json structure entry -> (key in the exports, converter).
_REPORT_KEYS = {
    "spacegroup_symbol": ("spacegroup", str),
    "spacegroup_number": ("spacegroup_number", int),
    "ternary": ("ternary", bool),
    "good_paper": ("good_paper", bool),
    "good_strict": ("good_strict", bool),
    "unique_group": ("unique_group", int),
}


def structure_keys(entry: Mapping[str, Any] | None) -> dict[str, Any]:
    """Key-value pairs of one structure from its report.json entry (None: no report).

    Values that are ``None`` (e.g. the reason of a verdict that holds) are left out: an
    ASE database stores no null.
    """
    if entry is None:
        return {}
    out: dict[str, Any] = {}
    for name, (key, convert) in _REPORT_KEYS.items():
        if entry.get(name) is not None:
            out[key] = convert(entry[name])
    for verdict, reason in (entry.get("reasons") or {}).items():
        if reason is not None:
            out[f"reason_{verdict}"] = str(reason)
    if entry.get("volume_per_atom_A3") is not None:
        out["volume_per_atom"] = float(entry["volume_per_atom_A3"])
    for pair, distance in (entry.get("min_distances_A") or {}).items():
        if distance is not None:  # e.g. min_H_Pd: a key ASE's database accepts
            out["min_" + pair.replace("-", "_")] = float(distance)
    return out


def write_exports(output_dir: str | os.PathLike,
                  files: Mapping[str, Sequence[str | os.PathLike]],
                  report: Mapping[str, Any] | None = None,
                  provenance: Mapping[str, Any] | None = None) -> tuple[Path, Path]:
    """Writes ``structures.extxyz`` and ``run.db`` into ``output_dir`` (replacing old ones).

    Args:
      output_dir: the run's folder.
      files: ``{direction: [structure file, ...]}``: the run's final POSCAR files.
      report: the run's report (:func:`crystalgan_jax.materials.report.write_run_report`), whose
        ``structures`` entries give each file's verdicts; None for none.
      provenance: key-value pairs shared by every row, e.g. ``{"seed": 0, "method":
        "crystalgan", "system": "Pd-Ni-H"}`` (str, int, float or bool values).
    Returns:
      The paths of the two files.
    """
    from pymatgen.io.ase import AseAtomsAdaptor

    from crystalgan_jax.materials import io

    output_dir = Path(output_dir)
    entries = {}
    for entry in (report or {}).get("structures", []):
        entries[os.path.normpath(output_dir / entry["file"])] = entry
    frames = []
    for direction, paths in files.items():
        for path in paths:
            path = Path(path)
            structure = io.read_structure(path)
            atoms = AseAtomsAdaptor.get_atoms(structure)
            keys = {**dict(provenance or {}), "direction": str(direction),
                    "sample": _sample_index(path), "file": _relative(path, output_dir),
                    "reduced_formula": structure.composition.reduced_formula}
            keys.update(structure_keys(entries.get(os.path.normpath(path))))
            frames.append((atoms, keys))

    return write_frames(output_dir, frames)


def write_frames(output_dir: str | os.PathLike, frames: Sequence[tuple[Any, Mapping[str, Any]]]
                 ) -> tuple[Path, Path]:
    """Writes ``structures.extxyz`` and ``run.db`` into ``output_dir`` (replacing old ones)
    from ``(ase.Atoms, key-value pairs)`` per structure, in order: frame k of the extended
    XYZ file is row k + 1 of the database. Returns the paths of the two files."""
    import ase.db
    import ase.io

    output_dir = Path(output_dir)
    extxyz, database = output_dir / EXTXYZ, output_dir / DATABASE
    written = []
    for atoms, keys in frames:
        atoms = atoms.copy()
        atoms.info.clear()
        atoms.info.update(keys)
        written.append(atoms)
    tmp = extxyz.with_name(extxyz.name + ".tmp")
    ase.io.write(str(tmp), written, format="extxyz")
    tmp.replace(extxyz)  # a crash leaves the old file or the new one, never half of one

    tmp_db = database.with_name(database.name + ".tmp")
    tmp_db.unlink(missing_ok=True)
    with ase.db.connect(str(tmp_db), type="db") as db:
        for atoms, keys in frames:
            db.write(atoms, key_value_pairs=keys)
    tmp_db.replace(database)
    return extxyz, database


def _sample_index(path: Path) -> int:
    """The generated sample's index, from the file name ``NNN.vasp``; -1 if it has none."""
    try:
        return int(path.stem)
    except ValueError:
        return -1


def _relative(path: Path, folder: Path) -> str:
    try:
        return os.path.relpath(path, folder)
    except ValueError:  # another drive on Windows
        return str(path)
