"""Tests of the binary hydride data set builder and of the committed data/ folders."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from ase.data import covalent_radii
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Element, Structure

from crystalgan_jax.materials import datasets, io

DATA = Path(__file__).resolve().parents[1] / "data"
METALS = ("Pd", "Ni", "Mg", "Ti")


@pytest.fixture(scope="module")
def rebuilt(tmp_path_factory) -> dict[str, Path]:
    """Each committed data set rebuilt from scratch into a temporary folder."""
    root = tmp_path_factory.mktemp("datasets")
    folders = {}
    for metal in METALS:
        folders[metal] = root / f"{metal}H"
        datasets.write_dataset(metal, folders[metal])
    return folders


def _too_close_pairs(structure: Structure, factor: float = 0.75) -> list[tuple[str, str, float]]:
    """Atom pairs (periodic images included) closer than factor x sum of covalent radii."""
    radii = {site.specie.symbol: covalent_radii[site.specie.Z] for site in structure}
    cutoff = factor * 2 * max(radii.values())
    bad = []
    for site, neighbours in zip(structure, structure.get_all_neighbors(cutoff)):
        for neighbour in neighbours:
            a, b = site.specie.symbol, neighbour.specie.symbol
            if neighbour.nn_distance < factor * (radii[a] + radii[b]):
                bad.append((a, b, neighbour.nn_distance))
    return bad


def test_too_close_pairs_sees_short_bonds_and_periodic_images():
    lattice = np.eye(3) * 6.0
    assert _too_close_pairs(Structure(lattice, ["H", "Pd"], [[0, 0, 0], [0.5, 0.5, 0.5]])) == []
    # Pd-H at 0.8 A (the paper's Figure 5 flaw), and a Pd next to its own image at 2 A.
    assert _too_close_pairs(Structure(lattice, ["H", "Pd"], [[0, 0, 0], [0.8, 0, 0]],
                                      coords_are_cartesian=True))
    assert _too_close_pairs(Structure(np.diag([2.0, 6.0, 6.0]), ["H", "Pd"],
                                      [[0, 0, 0], [0.5, 0.5, 0.5]]))


# Written coordinates are quoted to 1e-10 A; a different CPU or library build may change
# the last digits of a computed number, never more than this.
REBUILD_TOLERANCE_A = 1e-8
_NUMBER = re.compile(r"[-+]?\d+\.\d+(?:[eE][-+]?\d+)?")


@pytest.mark.parametrize("metal", METALS)
def test_rebuild_matches_committed_files(rebuilt, metal):
    """Same files, species, counts and text; lattices and positions within 1e-8 A."""
    committed = DATA / f"{metal}H"
    assert committed.is_dir(), f"{committed} is missing"
    names = sorted(p.name for p in committed.iterdir() if p.suffix == ".vasp")
    assert names == sorted(p.name for p in rebuilt[metal].iterdir())
    for name in names:
        new_text = (rebuilt[metal] / name).read_text()
        old_text = (committed / name).read_text()
        # the committed files were written by the same normalising writer
        assert old_text == io.without_negative_zero(old_text, padded=True), name
        assert _NUMBER.sub("#", new_text) == _NUMBER.sub("#", old_text), name
        new, old = io.read_structure(rebuilt[metal] / name), io.read_structure(committed / name)
        assert [s.specie.symbol for s in new] == [s.specie.symbol for s in old], name
        np.testing.assert_allclose(new.lattice.matrix, old.lattice.matrix, rtol=0,
                                   atol=REBUILD_TOLERANCE_A, err_msg=name)
        np.testing.assert_allclose(new.cart_coords, old.cart_coords, rtol=0,
                                   atol=REBUILD_TOLERANCE_A, err_msg=name)


@pytest.mark.parametrize("metal", METALS)
def test_built_structures_are_sane_binary_and_follow_the_volume_rule(rebuilt, metal):
    domain = io.read_folder(rebuilt[metal], metal)
    assert len(domain) >= 30
    for source, structure in zip(domain.sources, domain.structures):
        composition = structure.composition
        assert {e.symbol for e in composition.elements} == {metal, "H"}, source
        n_h, n_metal = int(composition["H"]), int(composition[metal])
        assert 1 <= n_h <= 18 and 1 <= n_metal <= 8, source
        assert [site.specie.symbol for site in structure] == ["H"] * n_h + [metal] * n_metal
        assert _too_close_pairs(structure) == [], source
        expected = n_metal * datasets.host_of(metal).atomic_volume + 2.9 * n_h
        assert structure.volume == pytest.approx(expected, rel=1e-6), source


@pytest.mark.parametrize("metal", METALS)
def test_built_structures_are_symmetry_distinct(rebuilt, metal):
    structures = io.read_folder(rebuilt[metal], metal).structures
    # With default tolerances; each group's first member is fitted against every later
    # structure of its formula, so all-singleton groups mean no two structures match.
    groups = StructureMatcher().group_structures(list(structures))
    assert len(groups) == len(structures), [len(g) for g in groups if len(g) > 1]


def test_hosts_come_from_the_elements_reference_lattices():
    assert [datasets.host_of(m).symmetry for m in ("Pd", "Ni", "Mg", "Ti", "V", "U")] == [
        "fcc", "fcc", "hcp", "hcp", "bcc", "fcc"]
    # Pd: fcc, a = 3.89 A; U (orthorhombic, no simple host) falls back to the molar volume.
    assert datasets.host_of("Pd").atomic_volume == pytest.approx(3.89 ** 3 / 4)
    uranium = float(Element("U").molar_volume) * 1e24 / 6.02214076e23
    assert datasets.host_of("U").atomic_volume == pytest.approx(uranium)


def test_limits_are_respected():
    prototypes = datasets.build_dataset("Pd", max_h=4, max_metal=2)
    assert prototypes
    for prototype in prototypes:
        assert prototype.structure.composition["H"] <= 4
        assert prototype.structure.composition["Pd"] <= 2


@pytest.mark.parametrize("symbol", ["H", "O", "He", "Xx", "B", ""])
def test_non_metal_symbols_are_refused(symbol):
    with pytest.raises(datasets.UnsupportedMetalError, match="Accepted symbols: .*Pd"):
        datasets.build_dataset(symbol)
    assert issubclass(datasets.UnsupportedMetalError, ValueError)


def test_command_line_writes_files_and_refuses_bad_symbols(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        datasets.main(["--metal", "Xx", "--out", str(tmp_path / "bad")])
    assert exit_info.value.code == 2
    assert "Accepted symbols" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
    assert datasets.main(["--metal", "Ni", "--out", str(tmp_path / "NiH"),
                          "--max-metal", "1", "--max-h", "2"]) == 0
    written = sorted((tmp_path / "NiH").iterdir())
    assert f"wrote {len(written)} Ni-H structures" in capsys.readouterr().out
    assert written and all(np.all(np.isfinite(io.read_structure(p).frac_coords)) for p in written)
