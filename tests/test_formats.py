"""Formats materials tools use: inputs ASE reads, and the extxyz / ASE database exports."""

import os
import subprocess
import sys
from pathlib import Path

import ase.db
import ase.io
import numpy as np
import pytest
from pymatgen.core import Lattice, Structure
from pymatgen.io.ase import AseAtomsAdaptor

from crystalgan_jax.materials import export, io, report
from crystalgan_jax.pipeline import provenance
from tests.conftest import small_domain

ASE_DB = [sys.executable, "-m", "ase", "db"]  # the `ase db` command line


def _same_domain(a: io.Domain, b: io.Domain) -> None:
    assert a.metal == b.metal and len(a) == len(b)
    for s, t in zip(a.structures, b.structures):
        assert [x.symbol for x in s.species] == [x.symbol for x in t.species]
        np.testing.assert_allclose(s.lattice.matrix, t.lattice.matrix, atol=1e-6)
        np.testing.assert_allclose(s.cart_coords, t.cart_coords, atol=1e-6)


@pytest.fixture(scope="module")
def poscar_domain(tmp_path_factory):
    return io.read_domain(small_domain(tmp_path_factory.mktemp("d"), "PdH", 6), "Pd")


@pytest.mark.parametrize("name", ["pdh.extxyz", "pdh.traj", "pdh.db"])
def test_ase_formats_give_the_poscar_folders_domain(tmp_path, poscar_domain, name):
    path = tmp_path / name
    atoms = [AseAtomsAdaptor.get_atoms(s) for s in poscar_domain.structures]
    if name.endswith(".db"):
        with ase.db.connect(str(path)) as db:
            for a in atoms:
                db.write(a, origin="test")
    else:
        ase.io.write(str(path), atoms)
    domain = io.read_domain(path, "Pd", mat_block=2)
    _same_domain(domain, poscar_domain)
    label = "[id=1]" if name.endswith(".db") else "[0]"
    assert domain.sources[0] == f"{path}{label}"
    assert provenance.source_file(domain.sources[-1]) == str(path)
    with pytest.raises(io.StructureFileError) as err:  # the other metal's domain
        io.read_domain(path, "Ni", mat_block=3)
    where = "row id=1" if name.endswith(".db") else "structure 1"
    line = ", line 1" if name.endswith(".extxyz") else ""
    assert str(err.value) == f"{path}{line}: {where}: holds Pd; this domain takes only Ni and H"


def test_extxyz_errors_name_the_file_and_line(tmp_path, poscar_domain):
    path = tmp_path / "bad.extxyz"
    ase.io.write(str(path), [AseAtomsAdaptor.get_atoms(s) for s in poscar_domain.structures[:3]])
    lines = path.read_text().splitlines()
    second = int(lines[0]) + 3  # first line of the second frame
    third = second + int(lines[second - 1]) + 2

    wrong = list(lines)
    last = third + int(lines[third - 1])  # 0-based: frame 3's last atom (a metal)
    wrong[last] = wrong[last].replace("Pd", "Cu", 1)
    path.write_text("\n".join(wrong) + "\n")
    with pytest.raises(io.StructureFileError) as err:
        io.read_domain(path, "Pd")
    assert str(err.value).startswith(f"{path}, line {third}: structure 3: holds Cu; "
                                      "this domain takes only Pd and H")

    broken = list(lines)
    broken[second - 1] = "two"
    path.write_text("\n".join(broken) + "\n")
    with pytest.raises(io.StructureFileError,
                       match=f", line {second}: expected the atom count of frame 2"):
        io.read_domain(path, "Pd")

    no_cell = tmp_path / "molecule.xyz"
    ase.io.write(str(no_cell), ase.Atoms("PdH", positions=[[0, 0, 0], [0, 0, 1.6]]))
    with pytest.raises(io.StructureFileError, match="line 1: structure 1: no periodic cell"):
        io.read_domain(no_cell, "Pd")
    unknown = tmp_path / "notes.txt"
    unknown.write_text("nothing here\n")
    with pytest.raises(io.StructureFileError, match="notes.txt: not a structure format"):
        io.read_domain(unknown, "Pd")


def _rocksalt(n_h: int = 4, a: float = 3.9) -> Structure:
    """fcc Pd2Ni2 with H on n_h octahedral sites (good, strict, for n_h = 4)."""
    metals = [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]]
    octahedral = [[0.5, 0.5, 0.5], [0.5, 0, 0], [0, 0.5, 0], [0, 0, 0.5]][:n_h]
    return Structure(Lattice.cubic(a), ["Pd", "Ni", "Pd", "Ni"] + ["H"] * n_h,
                     metals + octahedral)


def _ase_db(database: Path, *selection: str) -> list[str]:
    """`ase db DATABASE SELECTION -c file`: the file column of the selected rows."""
    proc = subprocess.run([*ASE_DB, str(database), *selection, "-c", "file", "-L", "0"],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert proc.returncode == 0, proc.stderr
    rows = [line.strip() for line in proc.stdout.splitlines()[1:]]
    return sorted(r for r in rows if r.startswith("structures/"))


def test_ase_db_selects_the_strictly_good_structures(tmp_path):
    files = {"AHB": [], "BHA": []}
    made = {"AHB": [_rocksalt(), _rocksalt(n_h=1), _rocksalt(a=2.4)], "BHA": [_rocksalt(4, 4.0)]}
    for direction, structures in made.items():
        for i, s in enumerate(structures):
            path = tmp_path / "structures" / "final" / direction / f"{i:03d}.vasp"
            io.write_poscar(s, path)
            files[direction].append(path)
    result = report.write_run_report(tmp_path, {"final": files}, [], "Pd", "Ni", d1=1.8, d2=3.0)
    extxyz, database = export.write_exports(tmp_path, files, result, {"seed": 7})
    strict = sorted(e["file"] for e in result["structures"] if e["good_strict"])
    assert strict == ["structures/final/AHB/000.vasp", "structures/final/BHA/000.vasp"]
    assert _ase_db(database, "good_strict=True") == strict
    assert len(_ase_db(database, "good_strict=False")) == 2
    assert _ase_db(database, "good_strict=True,direction=BHA,seed=7") == strict[1:]
    # extxyz: the same structures and keys, read back by ASE
    frames = ase.io.read(str(extxyz), index=":")
    assert [f.info["file"] for f in frames] == [e["file"] for e in result["structures"]]
    assert [bool(f.info["good_strict"]) for f in frames] == [
        e["good_strict"] for e in result["structures"]]
    with ase.db.connect(str(database)) as db:
        row = db.get(file="structures/final/AHB/001.vasp")
        assert row.good_paper is False and "no" in row.reason_good_paper
        assert row.spacegroup == result["structures"][1]["spacegroup_symbol"]
        assert row.reduced_formula == _rocksalt(n_h=1).composition.reduced_formula
        np.testing.assert_allclose(row.toatoms().get_volume(), 3.9 ** 3, rtol=1e-9)
