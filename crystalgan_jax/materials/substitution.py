"""The non-learned baseline a chemist tries first: substitution with Vegard's law.

Each binary A-H structure becomes ternary A-B-H structures by putting B on some of the
A sites (and each B-H structure by putting A on some B sites); the cell is scaled
isotropically so that its volume follows Vegard's law. The results are evaluated by
:mod:`crystalgan_jax.materials.evaluation` exactly like generated structures.
"""

from __future__ import annotations

import itertools
from typing import Sequence

import numpy as np

from pymatgen.core import Structure

from crystalgan_jax.materials.datasets import host_of


def atomic_volume(symbol: str) -> float:
    """Volume per atom (Angstrom^3) of the elemental metal, as the data-set builder uses it."""
    return host_of(symbol).atomic_volume


def vegard_volume_ratio(parent: str, dopant: str, fraction: float) -> float:
    """Cell volume after / before putting ``dopant`` on ``fraction`` of the metal sites.

    Vegard's law: the volume per metal atom interpolates linearly between the two
    elements' atomic volumes, ``v(x) = (1 - x) v_parent + x v_dopant``; the whole cell
    (H included) is scaled by ``v(x) / v_parent``.
    """
    v_parent, v_dopant = atomic_volume(parent), atomic_volume(dopant)
    return ((1.0 - fraction) * v_parent + fraction * v_dopant) / v_parent


def _sites_of(structure: Structure, symbol: str) -> list[int]:
    """Indices of the sites ``symbol`` occupies, in site order."""
    return [i for i, site in enumerate(structure) if site.specie.symbol == symbol]


def decorate(structure: Structure, parent: str, dopant: str, sites: Sequence[int],
             source: str = "") -> Structure:
    """Puts ``dopant`` on the given ``parent`` sites (indices into ``structure``), Vegard-scaled.

    Fractional coordinates and cell angles are kept; the cell is scaled isotropically by
    :func:`vegard_volume_ratio`. The returned structure's ``properties`` record the
    source, the substitution and the volume ratio.
    """
    parents = _sites_of(structure, parent)
    chosen = sorted(set(int(i) for i in sites))
    if not 0 < len(chosen) <= len(parents) or not set(chosen) <= set(parents):
        raise ValueError(f"cannot substitute sites {list(sites)}: the {parent} sites are "
                         f"{parents}")
    new = structure.copy()
    for i in chosen:
        new.replace(i, dopant)
    metals = sum(1 for site in structure if site.specie.symbol != "H")
    ratio = vegard_volume_ratio(parent, dopant, len(chosen) / metals)
    new.scale_lattice(structure.volume * ratio)
    new.properties = {"source": source,
                      "substituted": f"{len(chosen)} of {len(parents)} {parent} -> {dopant}",
                      "vegard_volume_ratio": ratio}
    return new


def substitute(structure: Structure, parent: str, dopant: str, count: int,
               source: str = "") -> Structure:
    """Puts ``dopant`` on the first ``count`` ``parent`` sites (site order), Vegard-scaled.

    :func:`decorate` with those sites.
    """
    sites = _sites_of(structure, parent)
    if not 0 < count <= len(sites):
        raise ValueError(f"cannot substitute {count} of {len(sites)} {parent} sites")
    return decorate(structure, parent, dopant, sites[:count], source)


def site_permutations(structure: Structure, sites: Sequence[int],
                      symprec: float = 0.01) -> np.ndarray:
    """How the structure's space-group operations permute the given sites.

    Returns an int array ``[n_ops, len(sites)]``: row g, entry j is the position (in
    ``sites``) of the site that operation g maps ``sites[j]`` onto (fractional
    coordinates, minimum image, within 0.05 Angstrom). Operations that do not map the
    sites onto themselves at that tolerance are left out; the identity is always there.
    """
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    frac = structure.frac_coords[list(sites)]
    rows = [np.arange(len(sites))]
    for op in SpacegroupAnalyzer(structure, symprec=symprec).get_symmetry_operations():
        delta = op.operate_multi(frac)[:, None, :] - frac[None, :, :]
        delta -= np.round(delta)
        dist = np.linalg.norm(delta @ structure.lattice.matrix, axis=-1)
        image = dist.argmin(axis=1)
        if dist.min(axis=1).max() < 0.05 and len(set(image.tolist())) == len(sites):
            rows.append(image)
    return np.unique(np.array(rows), axis=0)


def distinct_decorations(structure: Structure, parent: str, count: int,
                         symprec: float = 0.01) -> list[tuple[int, ...]]:
    """Every way to choose ``count`` ``parent`` sites, one per symmetry class.

    Two choices are the same decoration when an operation of the structure's space group
    (:func:`site_permutations`) maps one onto the other. Each class is represented by its
    choice that comes first in lexicographic order of site indices, so the first
    ``count`` sites (what :func:`substitute` takes) represent their own class.

    Returns:
      Tuples of site indices into ``structure``, sorted.
    """
    parents = _sites_of(structure, parent)
    if not 0 < count <= len(parents):
        raise ValueError(f"cannot choose {count} of {len(parents)} {parent} sites")
    perms = site_permutations(structure, parents, symprec)
    seen, out = set(), []
    for choice in itertools.combinations(range(len(parents)), count):
        if choice in seen:
            continue
        # the class of this choice: its images under every operation
        seen.update(tuple(sorted(p[list(choice)].tolist())) for p in perms)
        out.append(tuple(parents[j] for j in choice))
    return out


def substitution(ah_structures: Sequence[Structure], bh_structures: Sequence[Structure],
                 element_a: str, element_b: str) -> list[Structure]:
    """Ternary A-B-H candidates from binary hydrides by site substitution.

    For each A-H structure with n_A A atoms and each count k = 1..n_A-1, the first k A
    sites (in site order; a fixed rule, so the result is deterministic) become B; B-H
    structures likewise give A on their first k B sites. The cell is scaled by Vegard's
    law (:func:`vegard_volume_ratio`, the atomic volumes of :func:`atomic_volume`).

    A structure with only one metal atom cannot become ternary by substitution (putting
    the other metal on its only site leaves a binary hydride again), so it contributes
    nothing.

    Returns:
      The structures, AH-derived first, then BH-derived; each one's ``properties["source"]``
      reads ``"AH[i]"`` or ``"BH[i]"`` (index into the input) and ``properties["substituted"]``
      says what was replaced.
    """
    out = []
    for domain, structures, parent, dopant in (("AH", ah_structures, element_a, element_b),
                                               ("BH", bh_structures, element_b, element_a)):
        for i, structure in enumerate(structures):
            n_parent = len(_sites_of(structure, parent))
            for count in range(1, n_parent):
                out.append(substitute(structure, parent, dopant, count, f"{domain}[{i}]"))
    return out
