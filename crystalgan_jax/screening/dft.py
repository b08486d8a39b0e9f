"""PBE single points with GPAW (plane waves): settings, time estimate, journal, runner.

What the DFT check (:mod:`crystalgan_jax.screening.dft_check`, ``experiments/verify.py``)
computes, and how:

- :class:`DFTSettings`: PBE, plane-wave cutoff (eV), k-point density (Angstrom: a mesh of
  ``ceil(density * |b_i|)`` points along each reciprocal vector ``b_i``, 2 pi included),
  Fermi-Dirac or Methfessel-Paxton smearing (eV; GPAW's energy is extrapolated to zero
  width), spin polarisation wherever a magnetic element (:data:`MAGNETIC`, Ni among them)
  is present, H as an H2 molecule in a cubic box (Gamma point only);
- :func:`estimate_seconds`: a rough wall time from the atoms (their valence electrons), the
  cell volume, the irreducible k-point count, the cutoff and spin, calibrated on this
  machine (see :data:`SECONDS_PER_UNIT`);
- :func:`single_point`: one calculation that never raises: an SCF that does not converge
  comes back as "not_converged" with GPAW's reason, any other failure as "error";
- :class:`DFTJournal` and :func:`run_all`: each result appended to a JSONL journal as it
  ends, reused by a rerun with the same settings (an interrupted check resumes), with a
  ``max_atoms`` limit and a time guard that stops before a calculation that would pass the
  time limit, each with a clear message.

GPAW (the ``dft`` extra) is imported only inside :func:`single_point`; importing this module
loads neither it nor torch. Energies in eV (eV/atom per atom), lengths in Angstrom.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from pymatgen.core import Element, Lattice, Structure

from crystalgan_jax.screening.journal import JsonlJournal
from crystalgan_jax.screening.system_hull import structure_hash

MAGNETIC = {"Fe": 3.0, "Co": 2.0, "Ni": 1.0, "Mn": 4.0, "Cr": 3.0}  # initial moments, mu_B
SMEARINGS = ("fermi-dirac", "methfessel-paxton")
# Wall time (s) per unit of valence electrons (bands) x cell volume (A^3, plane waves) x
# irreducible k-points x (cutoff / 400 eV)^1.5, x2 with spin, on one busy core. Fitted at
# 400 eV, density 3 A here: measured / estimated Pd (1 atom, 35 k) 3.8 / 4.1 s, Ni (spin,
# 47 k) 8.9 / 7.2 s, PdH (2 atoms, 29 k) 3.6 / 4.3 s, Pd4H4 (10 k) 19.4 / 19.5 s, H2 in an
# 8 A box (Gamma) 1.4 / 1.6 s. Those small cells were far too few: on the discovery job's
# top five (6-9 atoms, spin-polarised, 16-43 irreducible k-points) and their hull phases,
# at 300 eV and density 2 on a machine loaded with two more processes, the measured times
# were 0.8-13 times that fit's estimate (median 5.1; a 12-atom spin-polarised NiH cell 904 s
# against 77 s). The unit below is that fit's times 2.5, the middle of the loaded and the
# idle machine; expect a factor of 2-4 either way for spin-polarised cells.
SECONDS_PER_UNIT = 1.5e-3
SECONDS_OVERHEAD = 1.0  # set-up of one calculation (PAW setups, grids), s
# Valence electrons of GPAW's default PAW setups (others: the periodic-table group)
VALENCE = {"H": 1, "Mg": 2, "Ti": 12, "Ni": 10, "Pd": 10}
INSTALL = ("the DFT check needs GPAW: apt-get install -y libxc-dev libblas-dev "
           "liblapack-dev g++, then CC=g++ pip install -e '.[dft]'")
Log = Callable[[str], None]


class MissingGPAWError(RuntimeError):
    """GPAW or its PAW setups are not installed; the message is one line with the fix."""


@dataclasses.dataclass(frozen=True)
class DFTSettings:
    """How every single point is computed (all in the journal's first line).

    Attributes:
      cutoff_eV: plane-wave cutoff (eV).
      kpoint_density: k-points per reciprocal Angstrom along each reciprocal vector
        (2 pi included); the H2 box always uses the Gamma point alone.
      smearing: one of :data:`SMEARINGS`; width_eV its width (eV).
      h2_box: edge of the cubic box of the H2 reference (Angstrom).
      max_scf: SCF iterations at most (GPAW's maxiter); beyond: "not_converged".
      xc: the functional.
    """

    # 400 eV and density 3 did not finish the discovery job's top five in hours on one core;
    # these did in about an hour (docs/results.md, "The discovery job")
    cutoff_eV: float = 300.0
    kpoint_density: float = 2.0
    smearing: str = "fermi-dirac"
    width_eV: float = 0.1
    h2_box: float = 8.0
    max_scf: int = 100
    xc: str = "PBE"

    def __post_init__(self):
        if self.smearing not in SMEARINGS:
            raise ValueError(f"smearing must be one of {', '.join(SMEARINGS)}, "
                             f"got {self.smearing}")
        for name in ("cutoff_eV", "kpoint_density", "width_eV", "h2_box", "max_scf"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def h2_reference(bond: float, box: float) -> Structure:
    """An H2 molecule (bond in Angstrom) centred in a cubic box of edge ``box`` (Angstrom)."""
    c = box / 2
    return Structure(Lattice.cubic(box), ["H", "H"],
                     [[c, c, c - bond / 2], [c, c, c + bond / 2]], coords_are_cartesian=True)


def kpoint_mesh(structure: Structure, density: float) -> tuple[int, int, int]:
    """Monkhorst-Pack mesh with ``ceil(density * |b_i|)`` points (|b_i| with 2 pi, 1/A)."""
    b = structure.lattice.reciprocal_lattice.abc
    return tuple(max(1, math.ceil(density * x - 1e-9)) for x in b)


def irreducible_kpoints(structure: Structure, mesh: Sequence[int]) -> int:
    """Irreducible k-points of a Gamma-centred mesh (spglib); the full count on failure."""
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    try:
        return len(SpacegroupAnalyzer(structure, symprec=0.01).get_ir_reciprocal_mesh(
            tuple(mesh), is_shift=(0, 0, 0)))
    except Exception:  # spglib on an odd cell: no symmetry assumed
        return int(np.prod(mesh))


def spin_polarised(structure: Structure) -> bool:
    """Whether a magnetic element (:data:`MAGNETIC`) is present."""
    return any(e.symbol in MAGNETIC for e in structure.composition.elements)


def valence_electrons(structure: Structure) -> int:
    """Valence electrons of a structure with GPAW's default setups (:data:`VALENCE`)."""
    def one(symbol: str) -> int:
        if symbol in VALENCE:
            return VALENCE[symbol]
        group = Element(symbol).group
        return group - 10 if group > 12 else group

    return sum(one(site.specie.symbol) for site in structure)


def estimate_seconds(structure: Structure, n_kpoints: int, cutoff_eV: float) -> float:
    """Rough wall time (s) of one single point on one core, from its atoms (their valence
    electrons), volume and irreducible k-points (see :data:`SECONDS_PER_UNIT`)."""
    spin = 2 if spin_polarised(structure) else 1
    return SECONDS_OVERHEAD + SECONDS_PER_UNIT * valence_electrons(structure) * (
        structure.volume * n_kpoints * (cutoff_eV / 400.0) ** 1.5 * spin)


@dataclasses.dataclass(frozen=True)
class Task:
    """One structure to compute: name, structure and, where forced, its k-point mesh."""

    name: str
    structure: Structure
    kpts: tuple[int, int, int] | None = None  # None: from the density; (1, 1, 1): Gamma

    def mesh(self, settings: DFTSettings) -> tuple[int, int, int]:
        return self.kpts or kpoint_mesh(self.structure, settings.kpoint_density)


@dataclasses.dataclass
class DFTResult:
    """One single point.

    Attributes:
      status: "converged", "not_converged" (SCF out of iterations), "error", "skipped"
        (over max_atoms) or "not_run" (stopped by the time guard).
      reason: why, where not converged.
      energy_eV, energy_per_atom: total (eV) and per atom (eV/atom); None unless converged.
      magmom: total magnetic moment (mu_B) where spin-polarised.
    """

    name: str
    status: str
    reason: str | None
    energy_eV: float | None
    energy_per_atom: float | None
    n_atoms: int
    kpts: list[int]
    n_kpoints: int
    spin: bool
    magmom: float | None
    seconds: float
    estimate_s: float

    @property
    def ok(self) -> bool:
        return self.status == "converged"

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "DFTResult":
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls)})


def _gpaw():
    """The gpaw module, with the PAW setups found; else :class:`MissingGPAWError`."""
    try:
        import gpaw
    except ImportError as err:
        raise MissingGPAWError(f"{INSTALL} ({err})") from None
    try:
        import gpaw_data  # noqa: F401  (registers its setups on gpaw's search path)
    except ImportError:
        pass
    if not any(Path(p).is_dir() for p in gpaw.setup_paths) and not os.environ.get(
            "GPAW_SETUP_PATH"):
        raise MissingGPAWError("GPAW finds no PAW setups: pip install gpaw-data "
                               "(or gpaw install-data DIR)")
    return gpaw


def available() -> str | None:
    """None where GPAW and its setups can be used, else the one-line reason."""
    try:
        _gpaw()
    except MissingGPAWError as err:
        return str(err)
    return None


def single_point(task: Task, settings: DFTSettings, txt: str | None = None) -> DFTResult:
    """A PBE plane-wave single point of ``task``; never raises on a bad structure.

    Raises:
      MissingGPAWError: GPAW is not installed (that is not the structure's fault).
    """
    gpaw = _gpaw()
    from gpaw import PW, FermiDirac, MethfesselPaxton
    from pymatgen.io.ase import AseAtomsAdaptor

    s = task.structure
    mesh = task.mesh(settings)
    spin = spin_polarised(s)
    n_k = irreducible_kpoints(s, mesh)
    estimate = estimate_seconds(s, n_k, settings.cutoff_eV)
    tic = time.perf_counter()

    def result(status, reason, energy=None, magmom=None):
        return DFTResult(task.name, status, reason, energy,
                         None if energy is None else energy / len(s), len(s), list(mesh), n_k,
                         spin, magmom, round(time.perf_counter() - tic, 3), round(estimate, 1))

    occupations = (FermiDirac(settings.width_eV) if settings.smearing == "fermi-dirac"
                   else MethfesselPaxton(settings.width_eV, order=1))
    try:
        atoms = AseAtomsAdaptor.get_atoms(s)
        if spin:
            atoms.set_initial_magnetic_moments([MAGNETIC.get(a, 0.0) for a in
                                                atoms.get_chemical_symbols()])
        atoms.calc = gpaw.GPAW(mode=PW(settings.cutoff_eV), xc=settings.xc,
                               kpts={"size": mesh, "gamma": True}, occupations=occupations,
                               spinpol=spin, maxiter=settings.max_scf, txt=txt)
        energy = float(atoms.get_potential_energy())
        magmom = float(atoms.calc.get_magnetic_moment()) if spin else None
    except gpaw.KohnShamConvergenceError as err:
        return result("not_converged", f"SCF not converged in {settings.max_scf} "
                      f"iterations ({err})"[:300])
    except Exception as err:  # GPAW refusing a cell (setups, memory, grids): reported
        return result("error", f"{type(err).__name__}: {err}"[:300])
    if not math.isfinite(energy):
        return result("error", f"energy is {energy}")
    return result("converged", None, energy, magmom)


class DFTJournal(JsonlJournal):
    """Results saved one JSON line each as they end, each synced to disk
    (:class:`~crystalgan_jax.screening.journal.JsonlJournal`)."""

    def __init__(self, path: Path, settings: DFTSettings, log: Log):
        super().__init__(path, settings.to_json(), log, "DFT calculations")

    def get(self, task: Task) -> DFTResult | None:
        entry = self.entries.get(task.name)
        if entry is None or entry.get("hash") != structure_hash(task.structure):
            return None
        return DFTResult.from_json(entry["result"])

    def add(self, task: Task, r: DFTResult) -> None:
        self.append({"name": task.name, "hash": structure_hash(task.structure),
                     "result": r.to_json()}, sync=True)


def run_all(tasks: Sequence[Task], settings: DFTSettings, journal: DFTJournal, *,
            max_atoms: int, time_limit_s: float, log: Log) -> dict[str, DFTResult]:
    """Every task's single point, journaled, within ``max_atoms`` and ``time_limit_s``.

    Logs the estimated time of what is left before starting and one line per calculation.
    A task over ``max_atoms`` is "skipped"; once the next calculation's estimate would end
    past ``time_limit_s`` (s, from the start of this call), it and the rest are "not_run"
    (a rerun continues from the journal). Results are not journaled unless computed.
    """
    out: dict[str, DFTResult] = {}
    todo = []
    for task in tasks:
        previous = journal.get(task)
        if previous is not None:
            out[task.name] = previous
        elif len(task.structure) > max_atoms:
            out[task.name] = DFTResult(task.name, "skipped", f"{len(task.structure)} atoms > "
                                       f"--max_atoms={max_atoms}", None, None,
                                       len(task.structure), list(task.mesh(settings)), 0,
                                       spin_polarised(task.structure), None, 0.0, 0.0)
            log(f"[dft] {task.name}: skipped, {out[task.name].reason}")
        else:
            todo.append(task)
    plans = []
    for task in todo:
        mesh = task.mesh(settings)
        n_k = irreducible_kpoints(task.structure, mesh)
        spin = spin_polarised(task.structure)
        plans.append((task, mesh, n_k, spin,
                      estimate_seconds(task.structure, n_k, settings.cutoff_eV)))
    total = sum(p[-1] for p in plans)
    log(f"[dft] {len(plans)} to compute ({len(out)} reused or skipped), estimated "
        f"{total:.0f} s on one core: " + ", ".join(
            f"{t.name} {len(t.structure)} atoms {'x'.join(map(str, m))} k ({k} irr.)"
            f"{' spin' if s else ''} ~{e:.0f}s" for t, m, k, s, e in plans))
    if total > time_limit_s:
        log(f"[dft] the estimate ({total:.0f} s) exceeds the time limit ({time_limit_s:g} s):"
            " the check stops before the limit; rerun the same command to continue "
            "(finished calculations are journaled), or raise --time_limit")
    tic = time.perf_counter()
    for k, (task, mesh, n_k, spin, estimate) in enumerate(plans, start=1):
        elapsed = time.perf_counter() - tic
        if elapsed + estimate > time_limit_s:
            for t, m, n, s, e in plans[k - 1:]:
                out[t.name] = DFTResult(t.name, "not_run", f"time guard: {elapsed:.0f} s "
                                        f"spent, ~{e:.0f} s more would pass --time_limit="
                                        f"{time_limit_s:g} s", None, None, len(t.structure),
                                        list(m), n, s, None, 0.0, round(e, 1))
            log(f"[dft] time guard: stopped after {elapsed:.0f} s with {len(plans) - k + 1} "
                "calculations left; rerun the same command to continue")
            break
        r = single_point(task, settings)
        journal.add(task, r)
        out[task.name] = r
        what = (f"{r.energy_per_atom:.4f} eV/atom" if r.ok else f"{r.reason}")
        log(f"[dft] {k}/{len(plans)} {task.name} ({len(task.structure)} atoms, "
            f"{'x'.join(map(str, mesh))} k, {n_k} irr.{', spin' if spin else ''}): "
            f"{r.status}, {what}, {r.seconds:.1f}s (est. {estimate:.0f}s)")
    return {t.name: out[t.name] for t in tasks}
