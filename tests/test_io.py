from pathlib import Path

import numpy as np
import pytest
from ase.io import read as ase_read
from pymatgen.core import Lattice, Structure

from crystalgan_jax.materials import io

GOOD = """PdH
1.0
4.0 0.0 0.0
0.0 4.0 0.0
0.0 0.0 4.0
H Pd
1 1
Direct
0.5 0.5 0.5
0.0 0.0 0.0
"""


def _write(folder, name, text):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(text)
    return folder / name


def test_reads_folder_sorted_by_name(tmp_path):
    _write(tmp_path, "b.vasp", GOOD)
    _write(tmp_path, "POSCAR_a", GOOD.replace("0.5 0.5 0.5", "0.5 0.5 0.0"))
    s = Structure(Lattice.cubic(3.0), ["Pd", "H"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    io.write_cif(s, tmp_path / "c.cif")
    (tmp_path / "notes.txt").write_text("ignored")
    domain = io.read_folder(tmp_path, "Pd")
    assert [p.split("/")[-1] for p in domain.sources] == ["POSCAR_a", "b.vasp", "c.cif"]
    assert all(x.composition.formula == "H1 Pd1" for x in domain.structures)


def test_reads_reference_mat_files(reference_domains):
    pdh, nih = reference_domains
    assert len(pdh) == len(nih) == 35
    assert {e.symbol for s in pdh.structures for e in s.composition} == {"Pd", "H"}
    assert {e.symbol for s in nih.structures for e in s.composition} == {"Ni", "H"}


def test_mat_with_wrong_metal_names_the_file(reference_dir):
    with pytest.raises(io.StructureFileError, match=r"PdH_dataset.mat\[0\].*placeholder"):
        io.read_domain(reference_dir / "PdH_dataset.mat", "Ni", mat_block=3)


@pytest.mark.parametrize("name, text, pattern", [
    ("POSCAR", GOOD.replace("4.0 0.0 0.0", "4.0 zero 0.0"), r"line 3: expected 3 numbers"),
    ("POSCAR", GOOD.replace("1 1\n", "1 x\n"), r"line 7: atom counts must be integers"),
    ("POSCAR", GOOD.replace("H Pd\n1 1", "H Pd\n1 1 1"),
     r"line 7: 2 element symbols but 3 atom counts"),
    ("POSCAR", GOOD.replace("H Pd\n1", "H Qq\n1"), r"line 6: 'Qq' is not an element symbol"),
    ("POSCAR", GOOD.replace("0.0 0.0 0.0\n", "0.0 0.0\n"), r"line 10: expected 3 numbers"),
    ("POSCAR", GOOD.replace("Direct", "Fractional"), r"line 8: expected 'Direct' or 'Cartesian'"),
    ("POSCAR", "", r"file is empty"),
    ("POSCAR", GOOD.replace("0.0 0.0 4.0", "0.0 0.0 0.0"), r"cell volume is zero"),
    # well-formed files with the wrong elements for the domain
    ("x.vasp", GOOD.replace("H Pd", "H Cu"), r"holds Cu; this domain takes only Pd and H"),
    ("x.vasp", GOOD.replace("H Pd\n1 1", "Pd Pd\n1 1"), r"holds no H atom"),
    ("x.vasp", GOOD.replace("H Pd\n1 1", "H H\n1 1"), r"holds no Pd atom"),
])
def test_bad_files_name_the_file_and_line(tmp_path, name, text, pattern):
    path = _write(tmp_path, name, text)
    with pytest.raises(io.StructureFileError, match=pattern) as err:
        io.read_folder(tmp_path, "Pd")
    assert str(path) in str(err.value)


def test_unreadable_file_names_the_file(tmp_path):
    path = tmp_path / "POSCAR"
    path.write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(io.StructureFileError, match=r"POSCAR: cannot read file"):
        io.read_folder(tmp_path, "Pd")


def test_bad_cif_and_empty_folder(tmp_path):
    with pytest.raises(io.StructureFileError, match="holds no structure files"):
        io.read_folder(tmp_path, "Pd")
    with pytest.raises(io.StructureFileError, match="no such folder"):
        io.read_folder(tmp_path / "missing", "Pd")
    _write(tmp_path, "broken.cif", "data_x\n_cell_length_a 4\nloop_\n_atom_site_label\n")
    with pytest.raises(io.StructureFileError, match="broken.cif: malformed CIF"):
        io.read_folder(tmp_path, "Pd")


def test_written_files_read_back_with_pymatgen_and_ase(tmp_path, reference_domains):
    s = reference_domains[0].structures[10]
    io.write_poscar(s, tmp_path / "s.vasp")
    io.write_cif(s, tmp_path / "s.cif")
    for path in (tmp_path / "s.vasp", tmp_path / "s.cif"):
        back = io.read_structure(path)
        assert back.composition == s.composition
        atoms = ase_read(str(path))
        assert sorted(atoms.get_chemical_symbols()) == sorted(x.specie.symbol for x in s)
        np.testing.assert_allclose(atoms.get_volume(), s.volume, rtol=1e-6)
    assert "Pd" in (tmp_path / "s.vasp").read_text().splitlines()[5]


def test_left_handed_cell_is_written_right_handed(tmp_path):
    from pymatgen.analysis.structure_matcher import StructureMatcher

    s = Structure(Lattice([[4.0, 0, 0], [0, 0, 3.5], [0, 3.8, 0.3]]), ["Pd", "H", "Ni"],
                  [[0.1, 0.2, 0.3], [0.5, 0.5, 0.4], [0.7, 0.1, 0.9]])
    assert np.linalg.det(s.lattice.matrix) < 0
    io.write_poscar(s, tmp_path / "s.vasp")
    io.write_cif(s, tmp_path / "s.cif")
    for path in (tmp_path / "s.vasp", tmp_path / "s.cif"):
        back = io.read_structure(path)
        assert np.linalg.det(back.lattice.matrix) > 0
        assert StructureMatcher().fit(back, s)
    back = io.read_structure(tmp_path / "s.vasp")
    np.testing.assert_allclose(back.cart_coords, s.cart_coords, atol=1e-8)


def test_disordered_cif_is_refused_with_the_site(tmp_path):
    s = Structure(Lattice.cubic(4.0), [{"Pd": 0.5, "Ni": 0.5}, "H"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    io.write_cif(s, tmp_path / "mixed.cif")
    with pytest.raises(io.StructureFileError, match=r"mixed.cif: site \d+ has partial occupancy"):
        io.read_folder(tmp_path, "Pd")


@pytest.mark.parametrize("zero", [0.0, -0.0, -1e-17, 1e-17])
def test_writers_print_a_zero_coordinate_the_same_whatever_its_sign(tmp_path, zero):
    """A coordinate that is zero up to rounding gives the same text on every CPU."""
    def written(z):
        s = Structure(Lattice([[4.0, 0, 0], [z, 4.0, 0], [0, z, 4.0]]), ["H", "Pd"],
                      [[z, 0.5, z], [0.25, z, 0.5]], coords_are_cartesian=True)
        io.write_poscar(s, tmp_path / f"{z!r}.vasp")
        io.write_cif(s, tmp_path / f"{z!r}.cif")
        return ((tmp_path / f"{z!r}.vasp").read_text(), (tmp_path / f"{z!r}.cif").read_text())

    poscar, cif = written(zero)
    assert (poscar, cif) == written(0.0)
    assert "-0.0" not in poscar and "-0.0" not in cif
    back = io.read_structure(tmp_path / f"{zero!r}.vasp")
    np.testing.assert_allclose(back.cart_coords[0], [0.0, 0.5, 0.0], atol=1e-12)


def test_negative_zero_normalisation_leaves_other_numbers_alone():
    text = " -0.0000000000 -0.0000000001   1.5 -0.05 x-0.0 -0.00\n"
    assert (io.without_negative_zero(text, padded=True)
            == "  0.0000000000 -0.0000000001   1.5 -0.05 x-0.0  0.00\n")
    assert io.without_negative_zero(text) == " 0.0000000000 -0.0000000001   1.5 -0.05 x-0.0 0.00\n"


_POSCAR = """{comment}
{scale}
   3.1 0.0 0.0
   0.2 3.3 0.0
   0.1 -0.3 3.6
{species}
2 1
{mode}
0.1 0.2 0.3{sd}
0.6 0.5 0.9{sd}
1.0 1.7 -0.4{sd}
"""


@pytest.mark.parametrize("scale, species, mode, sd", [
    ("1.0", "Pd H", "Direct", ""),
    ("1.1", "Pd H", "Cartesian", ""),
    ("0.9", "Pd_pv H", "direct", ""),
    ("1.0", "Pd/abc123 H", "kartesian", ""),
    ("1.0", "Pd H", "Selective dynamics\nDirect", " T F T"),
    ("-40.0", "Pd H", "Direct", ""),  # a volume: read by pymatgen
])
def test_poscar_reader_builds_what_pymatgen_builds(tmp_path, scale, species, mode, sd):
    text = _POSCAR.format(comment="test", scale=scale, species=species, mode=mode, sd=sd)
    path = tmp_path / "POSCAR"
    path.write_text(text)
    got = io.read_structure(path)
    want = Structure.from_str(text, fmt="poscar")
    np.testing.assert_allclose(got.lattice.matrix, want.lattice.matrix, atol=1e-12)
    np.testing.assert_allclose(got.cart_coords, want.cart_coords, atol=1e-12)
    assert [s.species_string for s in got] == [s.species_string for s in want]


def test_poscar_reader_matches_pymatgen_on_the_embedded_data():
    files = sorted(p for p in (Path(__file__).parents[1] / "data").rglob("*")
                   if io.is_structure_file(p) and p.suffix.lower() != ".cif")
    assert len(files) >= 100
    for path in files:
        got = io.read_structure(path)
        want = Structure.from_str(path.read_text(), fmt="poscar")
        np.testing.assert_allclose(got.lattice.matrix, want.lattice.matrix, atol=1e-12)
        np.testing.assert_allclose(got.cart_coords, want.cart_coords, atol=1e-12)
        assert [s.species_string for s in got] == [s.species_string for s in want], path


def test_poscar_writer_prints_what_pymatgen_prints():
    from pymatgen.io.vasp import Poscar

    rng = np.random.default_rng(0)
    lattice = Lattice(np.eye(3) * 4.0 + rng.normal(0, 0.3, (3, 3)))
    # species in runs, one of them repeated later: the species line lists runs
    structure = io.right_handed(Structure(lattice, ["Pd", "Pd", "H", "Ni", "H", "H"],
                                          rng.random((6, 3)) * 1.3 - 0.1))
    want = Poscar(structure, comment="c 1", sort_structure=False).get_str(
        direct=False, significant_figures=10)
    assert io.poscar_text(structure, "c 1") == want
    assert want.splitlines()[5:7] == ["Pd H Ni H", "2 1 1 2"]
