"""Relaxing candidates with a machine-learned interatomic potential (CHGNet).

Geometry alone does not say whether a generated crystal is plausible. This module relaxes
each candidate (cell and positions) with CHGNet and FIRE:

- :func:`load_calculator`: CHGNet as an ASE calculator, threads pinned;
- :func:`relax`: one relaxation, never raising: a structure CHGNet cannot handle, or one
  that diverges (non-finite energy, collapsed or exploded cell, atoms still nearly on top
  of each other), comes back as a :class:`Relaxation` with ``status`` and ``reason``;
- :func:`relax_all`: the same over a list, with progress lines and reuse of earlier ones;
- :func:`displacement`: how far a relaxation moved a structure.

The hull (references, energetics) is in :mod:`crystalgan_jax.screening.hull`, the verdicts
and the report in :mod:`crystalgan_jax.screening.verdicts`.

Units: energies in eV (CHGNet's, on the Materials Project's GGA/GGA+U scale), energies
per atom in eV/atom, lengths in Angstrom, volumes in Angstrom^3, forces in eV/Angstrom.

PyTorch is imported only by :func:`load_calculator`; importing this module (and the rest
of the package) does not load it. Install with ``pip install -e '.[screen]'``.
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Structure

from crystalgan_jax.materials import evaluation

DEFAULT_FMAX = 0.1  # eV/A, CHGNet's StructOptimizer default
DEFAULT_MAX_STEPS = 500  # FIRE steps
STABILITY_THRESHOLD = 0.1  # eV/atom above the hull still counted as stable (MatterGen's)
# Volume per atom (A^3) a structure must keep: outside it a candidate is refused and a
# relaxation stopped as diverged. The bound below also bounds CHGNet's graphs (neighbours
# within 6 A grow as 1 / volume per atom): a reference Pd-H cell of 1.92 A^3 per atom
# collapsing under FIRE took a process to 3.7 GB before the out-of-memory killer. The
# densest real hydrides have about 2 A^3 per atom; CHGNet's 6 A cutoff sees nothing in a
# cell sparser than a few hundred.
VOLUME_PER_ATOM_RANGE = (1.0, 500.0)
# Two atoms closer than this after relaxation: the potential did not push them apart
# (shortest real bond, H-H in H2, is 0.74 A).
MIN_SENSIBLE_DISTANCE = 0.5  # Angstrom
# Largest CHGNet bond-angle graph (sum over atoms of (bonds within 3 A)^2) a structure
# may have. The reference Pd-H cells have at most ~2,600; one of them, PdH6 at 1.92 A^3
# per atom, has 56,840, and CHGNet took a process past 4.9 GB on it before the
# out-of-memory killer stopped it. Such a structure is refused rather than screened.
MAX_ANGLES = 20_000
BOND_CUTOFF = 3.0  # Angstrom, CHGNet's bond-graph cutoff
# name -> (ASE optimizer, its arguments). BFGS_alpha20: BFGS whose initial Hessian guess is
# 20 eV/A^2 instead of ASE's 70, i.e. larger first steps; on structures near a minimum it
# takes fewer steps to the same energy (benchmarks/optimizers.py).
OPTIMIZERS: dict[str, tuple[str, dict[str, float]]] = {
    "FIRE": ("FIRE", {}), "BFGS": ("BFGS", {}), "LBFGS": ("LBFGS", {}),
    "BFGS_alpha20": ("BFGS", {"alpha": 20.0}), "FIRE2": ("FIRE2", {})}
DEFAULT_OPTIMIZER = "FIRE"  # chosen by benchmarks/screening.py (docs/performance.md)
# The hull's solid phases (metals, training binaries, alloys, substitution structures;
# H2 in its box keeps DEFAULT_OPTIMIZER, screening.runs.System) start near a minimum,
# where BFGS with a soft initial Hessian takes 0.4 of FIRE's time to the same energy;
# generated candidates start far from one, where BFGS is slower and lands elsewhere
# (benchmarks/optimizers.py, docs/performance.md).
DEFAULT_HULL_OPTIMIZER = "BFGS_alpha20"

Progress = Callable[[str], None]


def check_optimizer(name: str) -> str:
    """``name`` where it is one of :data:`OPTIMIZERS`; ValueError naming them otherwise."""
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {name}")
    return name

# --------------------------------------------------------------------------------------
# The potential


def load_calculator(threads: int = 1, device: str = "cpu", one_backward: bool = True):
    """CHGNet's pretrained model (shipped inside the wheel, loads offline) as an ASE calculator.

    Args:
      threads: PyTorch intra-op threads, and the size of the BLAS / OpenMP thread pools of
        this process from now on (:func:`crystalgan_jax.screening.potentials.pin_threads`).
      device: "cpu" or "cuda".
      one_backward: forces and stress from one backward pass (:func:`one_backward_pass`).
    Returns:
      A ``chgnet.model.dynamics.CHGNetCalculator``. Its ``calculate`` is wrapped to add
      its wall time to ``calculator.seconds`` (how much of a screening is the potential;
      :func:`crystalgan_jax.screening.potentials.timed`).
    """
    if threads < 1:
        raise ValueError(f"threads must be at least 1, got {threads}")
    import contextlib
    import io as stdio

    from crystalgan_jax.screening import potentials

    potentials.pin_threads(threads)
    from chgnet.model import CHGNet
    from chgnet.model.dynamics import CHGNetCalculator

    with contextlib.redirect_stdout(stdio.StringIO()):  # CHGNet prints its device
        model = CHGNet.load(verbose=False, use_device=device)
        calculator = CHGNetCalculator(model=model, use_device=device,
                                      on_isolated_atoms="error")
    if one_backward:
        one_backward_pass(model)
    return potentials.timed(calculator)


def one_backward_pass(model) -> None:
    """Makes a CHGNet model get forces and stress from one backward pass, without the
    double-backward graph.

    CHGNet (0.3-0.4) differentiates the energy twice, once by the atom positions and once
    by the strains, each with ``create_graph=True`` (kept for training on forces). In
    inference that builds and walks the backward graph twice: measured on a perturbed
    8-atom Pd-Ni-H cell, one thread, the backward passes took 2.1 of 2.9 s of 20 calls, and
    one pass (positions and strains together, no graph kept) made a call 1.9 times faster
    with the same energy, forces within 2e-5 eV/A and stress within 1e-6 (float32 sums in
    another order). While the model computes, ``torch.autograd.grad`` is swapped for one that
    answers the positions' request with both gradients and the strains' request from
    what it kept; any other request (other models, training) goes to torch unchanged.

    Args:
      model: a ``chgnet.model.CHGNet`` (changed in place: its ``_compute``).
    """
    import torch

    compute = model._compute
    torch_grad = torch.autograd.grad

    def grad_once(g):
        kept: dict[str, Any] = {}

        def grad(outputs, inputs, *args, **kwargs):
            positions, strains = list(g.atom_positions), list(g.strains or [])
            if (positions and strains and all(t is not None for t in strains)
                    and inputs[0] is positions[0] and len(inputs) == len(positions)):
                both = torch_grad(outputs, positions + strains)
                kept["strains"] = both[len(positions):]
                return both[:len(positions)]
            if "strains" in kept and strains and inputs[0] is strains[0]:
                return kept.pop("strains")
            return torch_grad(outputs, inputs, *args, **kwargs)

        return grad

    def compute_once(g, **kwargs):
        torch.autograd.grad = grad_once(g)
        try:
            return compute(g, **kwargs)
        finally:
            torch.autograd.grad = torch_grad

    model._compute = compute_once


def model_version(calculator) -> str:
    """CHGNet model version of a calculator from :func:`load_calculator`."""
    return str(calculator.model.version)


# --------------------------------------------------------------------------------------
# One relaxation


@dataclasses.dataclass
class Relaxation:
    """One structure relaxed with CHGNet.

    Attributes:
      status: "converged" (max force <= fmax, stress included), "not_converged" (ran out
        of steps), "diverged" (ran away or ended unphysical) or "error" (CHGNet or the
        optimizer refused it).
      reason: why, where the status is not "converged".
      steps: FIRE steps taken (trajectory length minus one).
      energies: total energy (eV) at each step of the trajectory.
      energy_per_atom: final energy (eV/atom); None where no energy was computed.
      max_force: final largest atomic force (eV/A).
      initial, final: the structures before and after (``final`` None on error).
      seconds: wall time of the relaxation.
    """

    status: str
    reason: str | None
    steps: int
    energies: list[float]
    energy_per_atom: float | None
    max_force: float | None
    initial: Structure
    final: Structure | None
    seconds: float

    @property
    def ok(self) -> bool:
        """Whether the final energy and structure can be used (converged or out of steps)."""
        return self.status in ("converged", "not_converged")

    @property
    def converged(self) -> bool:
        return self.status == "converged"


class _Diverged(RuntimeError):
    pass


def _min_distance(structure: Structure) -> float:
    """Shortest interatomic distance (Angstrom, periodic, own images included)."""
    if len(structure) == 1:
        return float(min(structure.lattice.abc))
    d = evaluation.periodic_distances(structure, cutoff=MIN_SENSIBLE_DISTANCE)
    return math.inf if d is None else float(d.min())


def angle_count(atoms) -> int:
    """Size of CHGNet's bond-angle graph: sum over atoms of (neighbours within 3 A)^2."""
    from ase.neighborlist import neighbor_list

    centres = neighbor_list("i", atoms, BOND_CUTOFF)
    return int((np.bincount(centres, minlength=len(atoms)).astype(np.int64) ** 2).sum())


def _check_sane(structure: Structure, energy: float, check_volume: bool) -> str | None:
    """Why a (relaxed) structure is unphysical, or None."""
    if not math.isfinite(energy):
        return f"energy is {energy}"
    v = structure.volume / len(structure)
    low, high = VOLUME_PER_ATOM_RANGE
    if check_volume and not low <= v <= high:
        return f"volume per atom {v:.3g} A^3 outside {low:g}..{high:g} A^3"
    d = _min_distance(structure)
    if d < MIN_SENSIBLE_DISTANCE:
        return f"two atoms {d:.2f} A apart after relaxation (< {MIN_SENSIBLE_DISTANCE:g} A)"
    return None


def relax(structure: Structure, calculator, *, fmax: float = DEFAULT_FMAX,
          max_steps: int = DEFAULT_MAX_STEPS, relax_cell: bool = True,
          optimizer: str = DEFAULT_OPTIMIZER) -> Relaxation:
    """Relaxes cell (FrechetCellFilter) and positions with FIRE; never raises on bad input.

    Args:
      structure: the structure (ordered, any cell).
      calculator: from :func:`load_calculator`.
      fmax: convergence: largest force (and stress x cell, through the filter) in eV/A.
      max_steps: FIRE steps at most.
      relax_cell: also relax the cell (False: positions only, e.g. a molecule in a box).
      optimizer: the ASE optimizer, one of :data:`OPTIMIZERS` (FIRE the default; the
        others for measurements such as ``benchmarks/optimizers.py``).
    """
    from ase.filters import FrechetCellFilter
    from ase import optimize
    from pymatgen.io.ase import AseAtomsAdaptor

    tic = time.perf_counter()
    energies: list[float] = []
    atoms = None

    def record():
        energy = float(atoms.get_potential_energy())
        energies.append(energy)
        v = atoms.get_volume() / len(atoms)
        if not math.isfinite(energy) or (relax_cell and not (VOLUME_PER_ATOM_RANGE[0]
                                                             <= v <= VOLUME_PER_ATOM_RANGE[1])):
            # stop at once: a runaway cell only gets slower to evaluate
            raise _Diverged(f"ran away at step {len(energies) - 1} (energy {energy:.4g} eV, "
                            f"volume per atom {v:.3g} A^3)")
        if relax_cell and angle_count(atoms) > MAX_ANGLES:
            raise _Diverged(f"collapsed at step {len(energies) - 1}: more than {MAX_ANGLES} "
                            f"bond angles within {BOND_CUTOFF:g} A")

    def result(status, reason, final=None, max_force=None):
        e = energies[-1] / len(structure) if energies and final is not None else None
        return Relaxation(status, reason, max(len(energies) - 1, 0), energies, e, max_force,
                          structure, final, time.perf_counter() - tic)

    check_optimizer(optimizer)
    v = structure.volume / max(len(structure), 1)
    low, high = VOLUME_PER_ATOM_RANGE
    if len(structure) == 0 or v < low or (relax_cell and v > high):
        return result("error", f"refused: volume per atom {v:.3g} A^3 outside {low:g}..{high:g} "
                      "A^3 (CHGNet's graph would explode)")
    try:
        atoms = AseAtomsAdaptor.get_atoms(structure)
        n_angles = angle_count(atoms)
        if n_angles > MAX_ANGLES:
            return result("error", f"refused: {n_angles} bond angles within {BOND_CUTOFF:g} A "
                          f"(> {MAX_ANGLES}); CHGNet would need gigabytes")
        atoms.calc = calculator
        target = FrechetCellFilter(atoms) if relax_cell else atoms
        kind, arguments = OPTIMIZERS[optimizer]
        dynamics = getattr(optimize, kind)(target, logfile=None, **arguments)
        dynamics.attach(record, interval=1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            converged = bool(dynamics.run(fmax=fmax, steps=max_steps))
        relaxed = AseAtomsAdaptor.get_structure(atoms)
        # without the calculator's site properties (float32 magnetic moments, charges)
        final = Structure(relaxed.lattice, relaxed.species, relaxed.frac_coords)
        forces = np.asarray(atoms.get_forces())
    except _Diverged as err:
        return result("diverged", str(err))
    except Exception as err:  # CHGNet refuses some cells (isolated atoms, ...): report it
        return result("error", f"{type(err).__name__}: {err}".strip()[:300])
    max_force = float(np.linalg.norm(forces, axis=1).max())
    energy = energies[-1] if energies else math.nan
    reason = _check_sane(final, energy, check_volume=relax_cell)
    if reason:
        return result("diverged", reason, final, max_force)
    if not converged:
        return result("not_converged", f"not converged in {max_steps} steps "
                      f"(max force {max_force:.3f} eV/A > fmax {fmax:g})", final, max_force)
    return result("converged", None, final, max_force)


def displacement(initial: Structure, final: Structure) -> dict[str, Any]:
    """How far a relaxation moved a structure.

    Returns:
      ``volume_change`` (fraction, final / initial - 1), ``rms`` and ``max_dist`` of
      StructureMatcher's ``get_rms_dist`` (normalised by (V / n)^(1/3); None where the two
      no longer match under default tolerances), and ``spacegroup_before`` /
      ``spacegroup_after`` (symbol and number, symprec 0.1 A).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            rms = StructureMatcher().get_rms_dist(initial, final)
        except Exception:  # spglib / matcher failures on odd cells: no match
            rms = None
    before = evaluation.spacegroup(initial, evaluation.SYMPREC)
    after = evaluation.spacegroup(final, evaluation.SYMPREC)
    return {"volume_change": final.volume / initial.volume - 1.0,
            "rms": None if rms is None else float(rms[0]),
            "max_dist": None if rms is None else float(rms[1]),
            "spacegroup_before": list(before), "spacegroup_after": list(after)}


def relaxation_json(r: Relaxation) -> dict[str, Any]:
    """Plain-JSON summary of a :class:`Relaxation` (structures left out)."""
    return {"status": r.status, "reason": r.reason, "steps": r.steps,
            "converged": r.converged, "energy_per_atom_eV": r.energy_per_atom,
            "max_force_eV_per_A": r.max_force, "seconds": round(r.seconds, 3),
            "energy_trajectory_eV": [round(e, 6) if math.isfinite(e) else None
                                     for e in r.energies]}


def relaxation_from_json(data: Mapping[str, Any], initial: Structure,
                         final: Structure | None) -> Relaxation:
    """Inverse of :func:`relaxation_json`, given the two structures."""
    return Relaxation(data["status"], data["reason"], int(data["steps"]),
                      list(data["energy_trajectory_eV"]), data["energy_per_atom_eV"],
                      data["max_force_eV_per_A"], initial, final, float(data["seconds"]))


def progress_line(tag: str, done: int, total: int, name: str, r: Relaxation,
                  elapsed: float) -> str:
    """One progress line: count, result, steps, energy, seconds, and the time left."""
    what = (f"{r.energy_per_atom:.4f} eV/atom" if r.energy_per_atom is not None
            else "no energy")
    why = f" ({r.reason})" if r.status in ("diverged", "error") else ""
    eta = f"eta {elapsed / done * (total - done):.0f}s" if done else "eta ?"
    return (f"[{tag}] {done}/{total} {name}: {r.status}{why}, {r.steps} steps, {what}, "
            f"{r.seconds:.1f}s; {eta}")


def relax_all(named: Sequence[tuple[str, Structure]], calculator, *, fmax: float,
              max_steps: int, progress: Progress | None = None, label: str = "relax",
              done: Mapping[str, Relaxation] | None = None,
              on_done: Callable[[str, Relaxation], None] | None = None) -> list[Relaxation]:
    """:func:`relax` over a list in this process, one progress line per structure.

    (:class:`crystalgan_jax.screening.workers.Relaxer` does the same over several
    processes.)

    Args:
      done: relaxations already made (by name, e.g. read back from a journal): reused.
      on_done: called with each new relaxation as soon as it ends (to save it).
    """
    done = done or {}
    out = []
    tic = time.perf_counter()
    todo = sum(name not in done for name, _ in named)
    new = 0
    for name, structure in named:
        if name in done:
            out.append(done[name])
            continue
        r = relax(structure, calculator, fmax=fmax, max_steps=max_steps)
        out.append(r)
        new += 1
        if on_done:
            on_done(name, r)
        if progress:
            progress(progress_line(label, new, todo, name, r, time.perf_counter() - tic))
    return out
