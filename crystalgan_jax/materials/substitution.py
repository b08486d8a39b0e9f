"""The non-learned baseline a chemist tries first: substitution with Vegard's law.

Each binary A-H structure becomes ternary A-B-H structures by putting B on some of the
A sites (and each B-H structure by putting A on some B sites); the cell is scaled
isotropically so that its volume follows Vegard's law. The results are evaluated by
:mod:`crystalgan_jax.materials.evaluation` exactly like generated structures.
"""

from __future__ import annotations

from typing import Sequence

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


def substitute(structure: Structure, parent: str, dopant: str, count: int,
               source: str = "") -> Structure:
    """Puts ``dopant`` on the first ``count`` ``parent`` sites (site order), Vegard-scaled.

    Fractional coordinates and cell angles are kept; the cell is scaled isotropically by
    :func:`vegard_volume_ratio`. The returned structure's ``properties`` record the
    source, the substitution and the volume ratio.
    """
    sites = [i for i, site in enumerate(structure) if site.specie.symbol == parent]
    if not 0 < count <= len(sites):
        raise ValueError(f"cannot substitute {count} of {len(sites)} {parent} sites")
    new = structure.copy()
    for i in sites[:count]:
        new.replace(i, dopant)
    metals = sum(1 for site in structure if site.specie.symbol != "H")
    ratio = vegard_volume_ratio(parent, dopant, count / metals)
    new.scale_lattice(structure.volume * ratio)
    new.properties = {"source": source,
                      "substituted": f"{count} of {len(sites)} {parent} -> {dopant}",
                      "vegard_volume_ratio": ratio}
    return new


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
            n_parent = sum(1 for site in structure if site.specie.symbol == parent)
            for count in range(1, n_parent):
                out.append(substitute(structure, parent, dopant, count, f"{domain}[{i}]"))
    return out
