"""Ordered A-B alloys of two metals: the metallic phases an honest A-B-H hull needs.

A hull of the elements and the binary hydrides alone has no A-B edge below the
elements: a ternary candidate can then look stable only because it is an ordered
alloy with some hydrogen in it. These are the textbook orderings on the fcc and bcc
lattices:

- ``L1_2`` A3B and AB3 (Cu3Au type, Pm-3m, 221): cubic cell of 4 atoms, the minority
  metal on the corner, the majority on the face centres;
- ``L1_0`` AB (CuAu type, P4/mmm, 123): alternating (001) layers of the fcc lattice,
  written in its primitive tetragonal 2-atom cell (a_t = a / sqrt(2), c = a: the
  ideal c/a of 1 in the fcc setting, which a relaxation then changes);
- ``B2`` AB (CsCl type, Pm-3m, 221): the bcc ordering, 2 atoms.

Lattice parameters follow Vegard's law on the elements' atomic volumes: the volume per
atom of an alloy with metal fractions x_A, x_B is ``x_A v_A + x_B v_B``, with ``v`` the
atomic volume that :func:`crystalgan_jax.materials.substitution.atomic_volume` gives
(ASE's reference state of the element, the same rule the substitution baseline scales
its cells by). Each cell is then sized to hold exactly that volume per atom.
"""

from __future__ import annotations

import math
from pymatgen.core import Lattice, Structure

from crystalgan_jax.materials.substitution import atomic_volume

ORDERINGS = ("L1_2 A3B", "L1_2 AB3", "L1_0 AB", "B2 AB")


def vegard_volume_per_atom(element_a: str, element_b: str, fraction_b: float) -> float:
    """Volume per atom (A^3) of an A(1-x)B(x) alloy by Vegard's law on atomic volumes."""
    if not 0.0 <= fraction_b <= 1.0:
        raise ValueError(f"fraction_b must be in [0, 1], got {fraction_b}")
    return (1.0 - fraction_b) * atomic_volume(element_a) + fraction_b * atomic_volume(element_b)


def l12(majority: str, minority: str) -> Structure:
    """L1_2 (Cu3Au type) ``majority``3 ``minority``: 4-atom cubic cell, Pm-3m."""
    a = (4 * vegard_volume_per_atom(majority, minority, 0.25)) ** (1 / 3)
    return Structure(Lattice.cubic(a), [minority, majority, majority, majority],
                     [[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]])


def l10(element_a: str, element_b: str) -> Structure:
    """L1_0 (CuAu type) AB: primitive tetragonal 2-atom cell, c/a_fcc = 1, P4/mmm."""
    a = (4 * vegard_volume_per_atom(element_a, element_b, 0.5)) ** (1 / 3)  # fcc cube
    return Structure(Lattice.tetragonal(a / math.sqrt(2), a), [element_a, element_b],
                     [[0, 0, 0], [0.5, 0.5, 0.5]])


def b2(element_a: str, element_b: str) -> Structure:
    """B2 (CsCl type) AB: 2-atom cubic cell, Pm-3m."""
    a = (2 * vegard_volume_per_atom(element_a, element_b, 0.5)) ** (1 / 3)
    return Structure(Lattice.cubic(a), [element_a, element_b], [[0, 0, 0], [0.5, 0.5, 0.5]])


def ordered_alloys(element_a: str, element_b: str) -> list[tuple[str, Structure]]:
    """The orderings of :data:`ORDERINGS` for metals A and B, as ``(name, structure)``.

    Names read e.g. ``"L1_2 Pd3Ni"``, ``"L1_0 PdNi"``, ``"B2 PdNi"``.

    Raises:
      ValueError: A and B are the same element.
    """
    if element_a == element_b:
        raise ValueError(f"an alloy needs two different metals, got {element_a} twice")
    a, b = element_a, element_b
    return [(f"L1_2 {a}3{b}", l12(a, b)), (f"L1_2 {a}{b}3", l12(b, a)),
            (f"L1_0 {a}{b}", l10(a, b)), (f"B2 {a}{b}", b2(a, b))]
