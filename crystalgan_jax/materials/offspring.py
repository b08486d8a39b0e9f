"""Offspring of screened candidates: heredity (two parents that share a framework, one in
each half of a doubled cell) and permutation (two unlike metals of one parent swapped).

Two candidates share a framework when they are the same arrangement of metal and hydrogen
sites and differ only in which metal sits on which metal site (two decorations of one
cell). Stacking one parent's cell on top of the other's along a lattice vector gives a
cell twice the size whose two halves carry the two decorations: a metal ordering and a
composition neither parent has, on the parents' sites. Evolutionary structure search
calls this operation heredity; here it recombines a screened run's lowest-energy
candidates (:func:`children`), the screening then relaxing and judging the children like
any candidate (:mod:`crystalgan_jax.pipeline.discovery`). Permutation
(:func:`permutations`) is the local move in the same search: one parent's composition and
sites, one A-B pair exchanged, which explores the orderings of a formula near its best
candidate.
"""

from __future__ import annotations

import itertools
from typing import NamedTuple, Sequence

import numpy as np
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Lattice, Structure

class Child(NamedTuple):
    """A child of :func:`heredity`: its two parents' names, the lattice vector it was
    stacked along ("a", "b" or "c"), the structure and its score (the parents' mean)."""

    parents: tuple[str, str]
    axis: str
    structure: Structure
    score: float


FRAMEWORK_METAL = "Cu"  # stands for every metal while frameworks are compared
AXES = ("a", "b", "c")


def framework(structure: Structure, metals: Sequence[str]) -> Structure:
    """``structure`` with every metal of ``metals`` replaced by one placeholder element;
    each site's own species kept in the site property ``"species"``."""
    out = structure.copy()
    out.add_site_property("species", [site.specie.symbol for site in structure])
    out.replace_species({m: FRAMEWORK_METAL for m in metals})
    return out


def _matcher() -> StructureMatcher:
    # the same cell and site count (no supercells, no primitive reduction): a child needs
    # both parents on one set of sites; scale=True because each parent's volume follows
    # its own composition
    return StructureMatcher(primitive_cell=False, attempt_supercell=False, scale=True)


def align(first: Structure, second: Structure, metals: Sequence[str]) -> Structure | None:
    """``second``'s decoration put on ``first``'s cell and site order.

    Returns a structure with ``first``'s lattice (scaled to ``second``'s volume) and
    fractional coordinates, where site j holds the species that the site of ``second``
    mapped onto ``first``'s site j holds; None where the two do not share a framework
    (StructureMatcher's default tolerances, on :func:`framework`).
    """
    if len(first) != len(second):
        return None
    mapped = _matcher().get_s2_like_s1(framework(first, metals), framework(second, metals))
    if mapped is None:
        return None
    out = Structure(first.lattice, mapped.site_properties["species"], first.frac_coords)
    out.scale_lattice(second.volume)
    return out


def stack(first: Structure, second: Structure, axis: int) -> Structure:
    """The doubled cell with ``first`` in its lower half and ``second`` in its upper half
    along lattice vector ``axis`` (0, 1, 2: a, b, c).

    ``second`` must be on ``first``'s sites (:func:`align`): same site count and
    fractional coordinates (within 1e-3). The child's lattice is ``first``'s, scaled to
    the mean of the two parents' volumes per cell, with vector ``axis`` doubled; sites
    ``0..n-1`` are ``first``'s, ``n..2n-1`` ``second``'s.

    Raises:
      ValueError: the two are not on the same sites.
    """
    if len(first) != len(second):
        raise ValueError(f"parents of {len(first)} and {len(second)} sites")
    delta = first.frac_coords - second.frac_coords
    if np.abs(delta - np.round(delta)).max() > 1e-3:
        raise ValueError("the parents are not on the same sites (align them first)")
    scale = ((first.volume + second.volume) / (2.0 * first.volume)) ** (1.0 / 3.0)
    matrix = np.array(first.lattice.matrix, dtype=np.float64) * scale
    matrix[axis] *= 2.0
    frac = np.array(first.frac_coords, dtype=np.float64) % 1.0
    lower, upper = frac.copy(), frac.copy()
    lower[:, axis] /= 2.0
    upper[:, axis] = (upper[:, axis] + 1.0) / 2.0
    species = [s.specie for s in first] + [s.specie for s in second]
    return Structure(Lattice(matrix), species, np.concatenate([lower, upper]))


def heredity(parents: Sequence[tuple[str, Structure, float]], metals: Sequence[str],
             per_framework: int = 4) -> list[Child]:
    """Every child of two parents that share a framework, along each lattice vector.

    Args:
      parents: (name, structure, score) triples, lower score better (a screened
        candidate's E_hull, eV/atom).
      metals: the two metals (what may swap between parents on a framework).
      per_framework: the parents of lowest score kept per framework.
    Returns:
      :class:`Child` records, the score the mean of the parents', lowest first;
      children with the same formula that StructureMatcher finds alike are kept once
      (the one of lower score). Parents with the same
      decoration (equal formula and alike) give no child: it would be the parent
      repeated.
    """
    groups: list[list[tuple[str, Structure, float]]] = []
    frames: list[Structure] = []
    matcher = _matcher()
    for name, structure, score in sorted(parents, key=lambda p: p[2]):
        frame = framework(structure, metals)
        for group, first in zip(groups, frames):
            if len(first) == len(frame) and matcher.fit(first, frame):
                group.append((name, structure, score))
                break
        else:
            groups.append([(name, structure, score)])
            frames.append(frame)
    made = []
    for group in groups:
        for (n1, s1, e1), (n2, s2, e2) in itertools.combinations(group[:per_framework], 2):
            if s1.composition.reduced_formula == s2.composition.reduced_formula and \
                    matcher.fit(s1, s2):
                continue  # the same decoration twice: the child is a parent repeated
            second = align(s1, s2, metals)
            if second is not None:
                made += [Child((n1, n2), AXES[axis], stack(s1, second, axis),
                               (e1 + e2) / 2.0) for axis in range(3)]
    kept: dict[str, list[Structure]] = {}  # by reduced formula
    out = []
    for child in sorted(made, key=lambda c: c.score):
        alike = kept.setdefault(child.structure.composition.reduced_formula, [])
        if not any(matcher.fit(c, child.structure) for c in alike):
            alike.append(child.structure)
            out.append(child)
    return out


def permutations(parent: Structure, metals: Sequence[str]) -> list[Structure]:
    """Every structure made from ``parent`` by exchanging one site of ``metals[0]`` with
    one of ``metals[1]``, one per class of alike results (StructureMatcher).

    The cell, the sites and the composition stay the parent's. None where the parent holds
    only one of the two metals.
    """
    first = [i for i, s in enumerate(parent) if s.specie.symbol == metals[0]]
    second = [i for i, s in enumerate(parent) if s.specie.symbol == metals[1]]
    matcher = _matcher()
    out: list[Structure] = []
    for i, j in itertools.product(first, second):
        new = parent.copy()
        new.replace(i, metals[1])
        new.replace(j, metals[0])
        if matcher.fit(parent, new) or any(matcher.fit(o, new) for o in out):
            continue
        out.append(new)
    return out
