"""Offspring of screened candidates: heredity (two decorations of one cell stacked into a
doubled cell) and permutation (one A-B pair swapped), checked against pymatgen's
supercells and StructureMatcher, and the discovery job's breeding step."""

import itertools
import json

import numpy as np
import pytest
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Lattice, Structure

from crystalgan_jax.materials import offspring
from crystalgan_jax.pipeline import discovery

METALS = ("Pd", "Ni")


def rocksalt(metals: list[str], a: float = 4.0) -> Structure:
    """A conventional rock-salt cell: four metal sites (given species) and four H."""
    metal_sites = [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]]
    h_sites = [[0.5, 0, 0], [0, 0.5, 0], [0, 0, 0.5], [0.5, 0.5, 0.5]]
    return Structure(Lattice.cubic(a), metals + ["H"] * 4, metal_sites + h_sites)


def matcher() -> StructureMatcher:
    return StructureMatcher(primitive_cell=False, attempt_supercell=True, scale=True)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_a_structure_stacked_on_itself_is_its_doubled_supercell(axis):
    s = rocksalt(["Pd", "Ni", "Pd", "Pd"])
    child = offspring.stack(s, s, axis)
    scaling = [1, 1, 1]
    scaling[axis] = 2
    reference = s * scaling
    assert len(child) == 2 * len(s)
    assert child.composition == reference.composition
    assert child.volume == pytest.approx(reference.volume, rel=1e-9)
    assert np.allclose(child.lattice.abc, reference.lattice.abc, atol=1e-9)
    assert matcher().fit(child, reference)


def test_stack_puts_each_parent_in_its_half_and_takes_the_mean_volume():
    first = rocksalt(["Pd", "Pd", "Pd", "Ni"], a=4.0)
    second = rocksalt(["Ni", "Ni", "Pd", "Ni"], a=3.8)
    child = offspring.stack(first, second, 2)
    n = len(first)
    assert [str(x.specie) for x in child][:n] == [str(x.specie) for x in first]
    assert [str(x.specie) for x in child][n:] == [str(x.specie) for x in second]
    assert child.volume == pytest.approx(first.volume + second.volume, rel=1e-9)
    # lower half z in [0, 0.5), upper half in [0.5, 1)
    assert np.all(child.frac_coords[:n, 2] < 0.5) and np.all(child.frac_coords[n:, 2] >= 0.5)
    shifted = rocksalt(["Pd"] * 4)
    shifted.translate_sites([0], [0.1, 0, 0])
    with pytest.raises(ValueError, match="same sites"):
        offspring.stack(first, shifted, 0)


def test_align_puts_the_second_decoration_on_the_first_cells_sites():
    first = rocksalt(["Pd", "Pd", "Pd", "Ni"])
    second = rocksalt(["Ni", "Ni", "Pd", "Ni"], a=3.9)
    # the same decoration, its sites listed in another order and shifted by a lattice
    # translation: only a framework match recovers which site is which
    moved = Structure(second.lattice, [s.specie for s in second][::-1],
                      (second.frac_coords[::-1] + [0.5, 0.5, 0]) % 1.0)
    aligned = offspring.align(first, moved, METALS)
    assert aligned is not None
    assert np.allclose(aligned.frac_coords, first.frac_coords)
    assert aligned.volume == pytest.approx(second.volume)
    assert aligned.composition == second.composition
    assert StructureMatcher().fit(aligned, second)
    # different frameworks: no alignment
    fluorite_like = Structure(Lattice.cubic(4.0), ["Pd", "H", "H"],
                              [[0, 0, 0], [0.25, 0.25, 0.25], [0.75, 0.75, 0.75]])
    assert offspring.align(first, fluorite_like, METALS) is None


def test_permutations_are_every_distinct_one_pair_swap():
    parent = rocksalt(["Pd", "Pd", "Ni", "Ni"]) * [2, 1, 1]
    parent.replace(0, "Ni")  # lower the symmetry so that swaps differ
    found = offspring.permutations(parent, METALS)
    # reference: every swap, grouped by StructureMatcher, the parent's own group left out
    swaps = []
    pd = [i for i, s in enumerate(parent) if s.specie.symbol == "Pd"]
    ni = [i for i, s in enumerate(parent) if s.specie.symbol == "Ni"]
    for i, j in itertools.product(pd, ni):
        s = parent.copy()
        s.replace(i, "Ni")
        s.replace(j, "Pd")
        swaps.append(s)
    sm = StructureMatcher(primitive_cell=False, attempt_supercell=False, scale=True)
    groups = [g for g in sm.group_structures(swaps) if not sm.fit(g[0], parent)]
    assert len(found) == len(groups) > 1
    for s in found:
        assert s.composition == parent.composition and not sm.fit(s, parent)
    assert offspring.permutations(rocksalt(["Pd"] * 4), METALS) == []


def test_heredity_children_of_two_decorations_of_one_cell():
    a = rocksalt(["Pd", "Pd", "Pd", "Ni"])
    b = rocksalt(["Ni", "Ni", "Pd", "Ni"], a=3.9)
    other = Structure(Lattice.cubic(3.0), ["Pd", "Ni", "H"],
                      [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0, 0]])  # another framework
    kids = offspring.heredity([("b", b, 0.02), ("a", a, 0.01), ("o", other, 0.0),
                               ("a2", a.copy(), 0.05)], METALS)
    assert kids, "two decorations of one cell have children"
    for child in kids:
        assert child.structure.composition == a.composition + b.composition
        assert len(child.structure) == 16 and child.axis in ("a", "b", "c")
    # the best pair (a with b, mean score 0.015) first; a2 repeats a: its children are
    # alike to a's and kept once; a with a2 (one decoration twice) gives none
    assert kids[0].score == pytest.approx(0.015)
    assert all(child.parents == ("a", "b") for child in kids)
    sm = StructureMatcher(primitive_cell=False, attempt_supercell=False, scale=True)
    for x, y in itertools.combinations(kids, 2):
        assert not sm.fit(x.structure, y.structure)
    assert len(kids) <= 3


def test_breed_writes_the_offspring_and_their_parents(tmp_path):
    a = rocksalt(["Pd", "Pd", "Pd", "Ni"])
    b = rocksalt(["Ni", "Ni", "Pd", "Ni"], a=3.9)
    unconverged = rocksalt(["Pd", "Ni", "Ni", "Pd"])
    named = [("a.vasp", a), ("b.vasp", b), ("u.vasp", unconverged)]
    rows = [{"name": "a.vasp", "relaxation": {"converged": True}, "e_hull_eV_per_atom": 0.01},
            {"name": "b.vasp", "relaxation": {"converged": True}, "e_hull_eV_per_atom": 0.03},
            {"name": "u.vasp", "relaxation": {"converged": False}, "e_hull_eV_per_atom": None}]
    out = tmp_path / "offspring"
    kids = discovery.breed({"structures": rows}, named, METALS, out, heredity=1,
                           permutations=1, log=lambda _: None)
    manifest = json.loads(out.with_suffix(".json").read_text())
    assert [n for n, _ in kids] == sorted(manifest) == sorted(p.name for p in out.glob("*.vasp"))
    ops = [m["operator"] for m in manifest.values()]
    # one child for the one formula of a+b; a's and b's swaps (formulas with both metals),
    # not the unconverged candidate's
    assert ops.count("heredity") == 1
    assert ops.count("permutation") == len(offspring.permutations(a, METALS)) + len(
        offspring.permutations(b, METALS))
    assert all("u.vasp" not in m["parents"] for m in manifest.values())
    assert [m["parents"] for m in manifest.values() if m["operator"] == "heredity"] == [
        ["a.vasp", "b.vasp"]]
    assert discovery.bred_from(tmp_path) == manifest
    # the same screening breeds the same offspring under the same names (what resuming an
    # interrupted screening from its journal relies on)
    again = discovery.breed({"structures": rows}, named, METALS, out, heredity=1,
                            permutations=1, log=lambda _: None)
    assert [n for n, _ in again] == [n for n, _ in kids]
    assert json.loads(out.with_suffix(".json").read_text()) == manifest
    for (_, x), (_, y) in zip(again, kids):
        assert x == y
    for (name, s), m in zip(kids, manifest.values()):
        assert s.composition.reduced_formula == m["formula"]
    assert discovery.breed({"structures": rows}, named, METALS, out, heredity=0,
                           permutations=0, log=lambda _: None) == []
    assert json.loads(out.with_suffix(".json").read_text()) == {}
