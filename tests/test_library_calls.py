"""Hand-written helpers replaced by library calls give the results of what they replaced."""

import itertools
import warnings

import numpy as np
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Lattice, Structure
from pymatgen.core.operations import SymmOp

from crystalgan_jax.materials import datasets, evaluation


def _greedy_groups(structures, matcher):
    """The hand-written grouping evaluation.unique_groups had: join the first group whose
    first member matches."""
    representatives, labels = [], []
    for structure in structures:
        for g, rep in enumerate(representatives):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                same = matcher.fit(rep, structure)
            if same:
                labels.append(g)
                break
        else:
            labels.append(len(representatives))
            representatives.append(structure)
    return labels


OCTAHEDRAL = [[0.5, 0.5, 0.5], [0.5, 0, 0], [0, 0.5, 0], [0, 0, 0.5]]
TETRAHEDRAL = [[0.25, 0.25, 0.25], [0.75, 0.75, 0.25], [0.75, 0.25, 0.75], [0.25, 0.75, 0.75]]


def _rocksalt(a: float = 3.9, metals=("Pd", "Ni", "Pd", "Ni"), h_sites=OCTAHEDRAL) -> Structure:
    frac = [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]] + h_sites
    return Structure(Lattice.cubic(a), list(metals) + ["H"] * 4, frac)


def test_unique_groups_is_group_structures_with_the_old_labels():
    base = _rocksalt()
    op = SymmOp.from_axis_angle_and_translation([1, 2, 3], 37.0)
    rotated = Structure(Lattice(op.apply_rotation_only(base.lattice.matrix)), base.species,
                        base.frac_coords)
    other = _rocksalt(3.8, ("Pd", "Pd", "Pd", "Ni"))  # another formula
    layered = _rocksalt(h_sites=TETRAHEDRAL)  # same formula, H on other sites
    strained = _rocksalt(4.6)  # same structure, larger: matched (StructureMatcher scales)
    structures = [other, base, layered, rotated, base * (2, 1, 1), other, strained, base]
    matcher = StructureMatcher()
    labels = evaluation.unique_groups(structures)
    assert labels == _greedy_groups(structures, matcher)
    assert len(set(labels)) == 3 and labels[:3] == [0, 1, 2]
    assert evaluation.unique_groups([]) == []


def _pymatgen_min_pair_distances(lattice: np.ndarray, frac: np.ndarray) -> np.ndarray:
    """Shortest distance per site pair from pymatgen's neighbour search (large radius)."""
    structure = Structure(Lattice(lattice), ["H"] * len(frac), frac)
    radius = 1.01 * max(np.linalg.norm(lattice, axis=1).sum(), 1.0)
    out = np.full((len(frac), len(frac)), np.inf)
    centres, neighbours, _, distances = structure.get_neighbor_list(radius)
    for i, j, d in zip(centres, neighbours, distances):
        if i != j:
            out[i, j] = min(out[i, j], d)
    return out


def test_min_image_distances_are_exact_for_thin_skewed_cells():
    # c leans far over a: the nearest image of a pair is several a-vectors away, which a
    # fixed +-1 shell (the replaced helper) misses.
    lattice = np.array([[1.2, 0.0, 0.0], [0.3, 5.0, 0.0], [6.7, 0.4, 3.1]])
    frac = np.array([[0.0, 0.0, 0.0], [0.35, 0.5, 0.45], [0.8, 0.1, 0.7]])
    exact = datasets.min_image_distances(frac, lattice)
    reference = _pymatgen_min_pair_distances(lattice, frac)
    np.testing.assert_allclose(exact, reference, rtol=0, atol=1e-9)
    delta = frac[:, None, :] - frac[None, :, :]
    delta -= np.round(delta)
    shell = np.min([np.linalg.norm((delta + s) @ lattice, axis=2)
                    for s in itertools.product((-1, 0, 1), repeat=3)], axis=0)
    off = ~np.eye(3, dtype=bool)
    assert np.any(shell[off] > exact[off] + 0.1)  # the old shell was wrong here
