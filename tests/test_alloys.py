"""Ordered A-B alloys: compositions, distances, space groups, Vegard volumes."""

import itertools

import pytest
from pymatgen.core import Composition, Element
from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

from crystalgan_jax.materials import alloys
from crystalgan_jax.materials.substitution import atomic_volume

PAIRS = [("Pd", "Ni"), ("Mg", "Ti"), ("Pd", "Ti")]
EXPECTED = {  # ordering -> (composition A_x B_y, space group number, symbol)
    0: ({"A": 3, "B": 1}, 221, "Pm-3m"),
    1: ({"A": 1, "B": 3}, 221, "Pm-3m"),
    2: ({"A": 1, "B": 1}, 123, "P4/mmm"),
    3: ({"A": 1, "B": 1}, 221, "Pm-3m"),
}


@pytest.mark.parametrize("a,b", PAIRS)
def test_orderings_have_the_right_composition_symmetry_and_distances(a, b):
    made = alloys.ordered_alloys(a, b)
    assert len(made) == len(alloys.ORDERINGS) == len(EXPECTED)
    for k, (name, s) in enumerate(made):
        amounts, number, symbol = EXPECTED[k]
        want = Composition({a: amounts["A"], b: amounts["B"]})
        assert s.composition.reduced_composition == want.reduced_composition, name
        assert Composition(name.split()[1]) == want
        sga = SpacegroupAnalyzer(s, symprec=1e-3)
        assert (sga.get_space_group_number(), sga.get_space_group_symbol()) == (number, symbol)
        # nothing closer than 0.8 x the sum of metallic radii of the pair
        radii = {e: float(Element(e).metallic_radius) for e in (a, b)}
        dm = s.distance_matrix
        for i, j in itertools.combinations(range(len(s)), 2):
            limit = 0.8 * (radii[s[i].specie.symbol] + radii[s[j].specie.symbol])
            assert dm[i, j] > limit, (name, i, j, dm[i, j], limit)
        # single-atom images too: lattice vectors
        assert min(s.lattice.abc) > 0.8 * 2 * min(radii.values())
        # Vegard: volume per atom interpolates the elements' atomic volumes
        x_b = s.composition.get_atomic_fraction(b)
        vegard = (1 - x_b) * atomic_volume(a) + x_b * atomic_volume(b)
        assert s.volume / len(s) == pytest.approx(vegard, rel=1e-9)


def test_vegard_between_the_elements_and_refusals():
    va, vb = atomic_volume("Mg"), atomic_volume("Ni")
    assert alloys.vegard_volume_per_atom("Mg", "Ni", 0.0) == pytest.approx(va)
    assert alloys.vegard_volume_per_atom("Mg", "Ni", 1.0) == pytest.approx(vb)
    assert alloys.vegard_volume_per_atom("Mg", "Ni", 0.25) == pytest.approx(0.75 * va + 0.25 * vb)
    with pytest.raises(ValueError):
        alloys.vegard_volume_per_atom("Mg", "Ni", 1.5)
    with pytest.raises(ValueError):
        alloys.ordered_alloys("Pd", "Pd")
