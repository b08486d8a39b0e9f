"""The convex hull of one A-B-H system: elemental references, phases, energetics.

- :func:`reference_structure` / :func:`elemental_references`: the elements relaxed the same
  way as the candidates (each metal in its ground-state structure from ``ase.build.bulk``,
  H as an H2 molecule in a large box);
- :class:`Hull`: pymatgen's PhaseDiagram of named phases (elements first); formation
  energy and energy above the hull of any composition of the system (:func:`energetics`);
- :func:`hull_from_relaxations`: a Hull from relaxations that can be used.

The honest hull of a system (training binaries, ordered alloys, substitution baseline),
and its cache, are in :mod:`crystalgan_jax.screening.system_hull`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

from pymatgen.analysis.phase_diagram import PDEntry, PhaseDiagram
from pymatgen.core import Composition, Structure

from crystalgan_jax.materials.io import HYDROGEN
from crystalgan_jax.screening.relax import (DEFAULT_FMAX, DEFAULT_MAX_STEPS, Relaxation,
                                            relax)

H2_BOX = 12.0  # Angstrom, cubic box of the H2 reference: H2 images far beyond the cutoff


# --------------------------------------------------------------------------------------
# References and hull


def reference_structure(symbol: str) -> tuple[Structure, bool]:
    """An element's reference structure and whether its cell is relaxed.

    Metals: ``ase.build.bulk`` (ASE's reference state: fcc Pd and Ni, hcp Mg and Ti, ...),
    cell relaxed. Hydrogen: an H2 molecule (0.74 A) centred in a cubic box of ``H2_BOX``
    A, positions only (relaxing the box of a molecule has no meaning).
    """
    from ase import Atoms
    from ase.build import bulk
    from pymatgen.io.ase import AseAtomsAdaptor

    if symbol == HYDROGEN:
        atoms = Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.74]], cell=[H2_BOX] * 3, pbc=True)
        atoms.center()
        return AseAtomsAdaptor.get_structure(atoms), False
    try:
        atoms = bulk(symbol)
    except (ValueError, KeyError) as err:
        raise ValueError(f"no reference structure known to ase.build.bulk for {symbol}: "
                         f"{err}") from None
    return AseAtomsAdaptor.get_structure(atoms), True


def elemental_references(symbols: Sequence[str], calculator, *, fmax: float = DEFAULT_FMAX,
                         max_steps: int = DEFAULT_MAX_STEPS) -> dict[str, Relaxation]:
    """Each element relaxed with :func:`relax` from :func:`reference_structure`."""
    out = {}
    for symbol in symbols:
        structure, cell = reference_structure(symbol)
        out[symbol] = relax(structure, calculator, fmax=fmax, max_steps=max_steps,
                            relax_cell=cell)
        if not out[symbol].ok:
            raise RuntimeError(f"reference {symbol} failed to relax: {out[symbol].reason}")
    return out


@dataclasses.dataclass(frozen=True)
class Hull:
    """The convex hull of one chemical system.

    Attributes:
      elements: element symbols of the system.
      entries: ``(name, composition formula, energy per atom in eV/atom)`` of every phase
        it was built from (the elements first).
    """

    elements: tuple[str, ...]
    entries: tuple[tuple[str, str, float], ...]

    @classmethod
    def build(cls, elements: Sequence[str], references: Mapping[str, float],
              phases: Sequence[tuple[str, Composition, float]]) -> "Hull":
        """From elemental energies per atom and ``(name, composition, energy per atom)``.

        Raises:
          ValueError: an element without a reference, or a phase outside the system.
        """
        missing = [e for e in elements if e not in references]
        if missing:
            raise ValueError(f"no elemental reference for {', '.join(missing)}")
        rows = [(e, e, float(references[e])) for e in elements]
        for name, composition, e in phases:
            outside = {el.symbol for el in Composition(composition).elements} - set(elements)
            if outside:
                raise ValueError(f"{name}: {Composition(composition).formula} holds "
                                 f"{', '.join(sorted(outside))}, not in {'-'.join(elements)}")
            rows.append((name, Composition(composition).formula, float(e)))
        return cls(tuple(elements), tuple(rows))

    def phase_diagram(self) -> PhaseDiagram:
        entries = [PDEntry(Composition(f), e * Composition(f).num_atoms, name=n)
                   for n, f, e in self.entries]
        return PhaseDiagram(entries)

    def to_json(self) -> dict[str, Any]:
        return {"elements": list(self.elements),
                "entries": [{"name": n, "formula": f, "energy_per_atom_eV": e}
                            for n, f, e in self.entries]}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "Hull":
        return cls(tuple(data["elements"]),
                   tuple((r["name"], r["formula"], float(r["energy_per_atom_eV"]))
                         for r in data["entries"]))


def energetics(diagram: PhaseDiagram, composition: Composition,
               energy_per_atom: float) -> tuple[float, float]:
    """Formation energy and energy above the hull (both eV/atom) of one phase.

    The energy above the hull is negative for a phase below the hull the diagram was built
    from (a candidate more stable than every known phase).
    """
    composition = Composition(composition)
    entry = PDEntry(composition, energy_per_atom * composition.num_atoms)
    formation = float(diagram.get_form_energy_per_atom(entry))
    _, e_hull = diagram.get_decomp_and_e_above_hull(entry, allow_negative=True)
    return formation, float(e_hull)


def hull_from_relaxations(elements: Sequence[str], references: Mapping[str, Relaxation],
                          relaxations: Sequence[tuple[str, Relaxation]]) -> Hull:
    """A :class:`Hull` of the relaxed elements and every relaxation that can be used.

    Relaxations that failed are left out (their energy says nothing); ones that ran out of
    steps stay in: their energy is an upper bound of the minimum they were heading to.
    """
    phases = [(name, r.final.composition, r.energy_per_atom)
              for name, r in relaxations if r.ok]
    return Hull.build(elements, {s: r.energy_per_atom for s, r in references.items()}, phases)
