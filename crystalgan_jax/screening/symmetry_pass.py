"""A second relaxation from the symmetrised relaxed structure, kept where it is lower.

A generated candidate relaxes into the nearest minimum, usually P1 even where a
symmetric structure lies a few meV/atom lower. After the first relaxation each converged
candidate is symmetrised at a loose tolerance (the idealised primitive standard cell of
:func:`crystalgan_jax.materials.candidates.snap_to_symmetry`); where that raises the space
group (at :data:`crystalgan_jax.materials.evaluation.SYMPREC`), the symmetric cell is
relaxed again and kept if its energy per atom is lower (:func:`keep_lower`). Measured on
the discovery job's candidates (docs/results.md): a quarter to a fifth of them gain a space
group, the second relaxation takes a median of 4 FIRE steps, and the energy drops by a
median of 1-2 meV/atom, by 10 meV/atom at most.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

from pymatgen.core import Structure

from crystalgan_jax.materials import candidates, evaluation
from crystalgan_jax.screening.relax import Relaxation

SUFFIX = "@symmetrized"  # a second relaxation's name in the journal: "<name>@symmetrized"


@dataclasses.dataclass(frozen=True)
class Job:
    """One symmetrised restart: which candidate, its symmetric cell and the space groups."""

    index: int                # position of the candidate in the screened list
    name: str                 # journal name of the second relaxation
    structure: Structure      # the idealised primitive standard cell
    spacegroup_before: int    # of the first relaxation's result, at evaluation.SYMPREC
    spacegroup_snapped: int   # of the symmetric cell, at ``symprec``


def jobs(named: Sequence[tuple[str, Structure]], relaxations: Sequence[Relaxation],
         symprec: float) -> list[Job]:
    """The converged candidates that gain a space group when symmetrised at ``symprec`` (A)."""
    out = []
    for index, ((name, _), r) in enumerate(zip(named, relaxations)):
        if not r.converged or r.final is None:
            continue
        before = evaluation.spacegroup(r.final, evaluation.SYMPREC)[1]
        snapped, number = candidates.snap_to_symmetry(r.final, symprec)
        if number > before:
            out.append(Job(index, f"{name}{SUFFIX}", snapped, before, number))
    return out


def keep_lower(first: Relaxation, second: Relaxation, job: Job, symprec: float
               ) -> tuple[Relaxation, dict[str, Any]]:
    """The relaxation to report for a candidate, and what the pass did, for its row.

    The second is kept where it converged to a lower energy per atom; it is then reported
    as one relaxation from the generated structure: steps and seconds added, its energy
    trajectory appended in the units of the first (total energy of the first's atoms, so
    per-atom values stay comparable when the symmetric cell is smaller).
    """
    kept = (second.converged and second.energy_per_atom is not None
            and first.energy_per_atom is not None
            and second.energy_per_atom < first.energy_per_atom)
    change = (None if second.energy_per_atom is None or first.energy_per_atom is None
              else second.energy_per_atom - first.energy_per_atom)
    info = {"symprec_A": symprec, "spacegroup_first": job.spacegroup_before,
            "spacegroup_snapped": job.spacegroup_snapped, "status": second.status,
            "steps": second.steps, "energy_change_eV_per_atom": change, "kept": kept}
    if not kept:
        return first, info
    scale = len(first.initial) / len(second.initial)
    merged = Relaxation(second.status, second.reason, first.steps + second.steps,
                        list(first.energies) + [e * scale for e in second.energies],
                        second.energy_per_atom, second.max_force, first.initial, second.final,
                        first.seconds + second.seconds)
    return merged, info
