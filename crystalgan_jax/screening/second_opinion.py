"""A second potential's verdict on a finished screening (``screen.py --potentials=A,B``).

The primary potential relaxes every candidate (:meth:`crystalgan_jax.screening.runs.System.screen`);
the second then judges each relaxed candidate against its own hull (the same phases,
relaxed by the second potential: a second :class:`~crystalgan_jax.screening.runs.System`)
in one of two :data:`MODES`:

- ``single_point``: its energy of the primary's relaxed structure, as is;
- ``relax``: its own relaxation, started from the primary's relaxed structure (FIRE, cell
  and positions, the screening's fmax and step limit).

A single point asks "is the structure the primary found stable by the second?", a
relaxation "is there a stable structure near it?"; the relaxation can only lower the
energy, so its E_hull is at most the single point's (up to the relaxation's own noise).

The verdicts need the relaxation (the default of ``screen.py``): measured on 5 Pd-Ni-H
candidates relaxed by CHGNet 0.3.0 (100 FIRE steps), SevenNet-l3i5's own relaxation
lowered its E_hull by 0.005-0.05 eV/atom on the four converged ones and by 0.12 on the
one CHGNet left unconverged, which moved one candidate across the 0.1 eV/atom threshold
(0.129 -> 0.078: "disagree" -> "both stable"); the single points cost 1.1 s in all, the
relaxations 30 s. A single point says how far the second potential is from the primary's
minimum, not whether it has a stable one nearby. (In relax mode the second potential's
energy is of its own relaxed structure, so its error against DFT in
:mod:`crystalgan_jax.screening.dft_check`, computed on the primary's structures, includes
the relaxation.)

:func:`judge` adds to each row of ``screening.json`` the second potential's
``second_opinion`` (energy, formation energy, E_hull, status), ``e_hull_by_potential``,
``e_hull_difference_eV_per_atom`` (second - primary) and ``consensus``
(:mod:`crystalgan_jax.screening.consensus`), the potentials' names with versions to the
settings, and a "Second opinion" section to ``screening.md``. Each judgement is appended
to ``second_opinion_<potential>.jsonl`` as it ends: a rerun reuses them.

Energies in eV/atom, lengths in Angstrom.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping

from pymatgen.core import Structure

from crystalgan_jax.materials import io
from crystalgan_jax.screening import consensus, relax as relaxing
from crystalgan_jax.screening.hull import energetics
from crystalgan_jax.screening.journal import JsonlJournal
from crystalgan_jax.screening.system_hull import structure_hash

MODES = ("single_point", "relax")
SECTION = "## Second opinion"
Log = Callable[[str], None]


@dataclasses.dataclass
class Judgement:
    """The second potential on one relaxed candidate.

    Attributes:
      status: "ok", or the relaxation's status in relax mode ("converged",
        "not_converged", "diverged", "error"); "error" where the potential failed.
      reason: why, where not usable.
      energy_per_atom: eV/atom, None where not usable.
      steps: relaxation steps (0 for a single point).
      seconds: wall time.
      final: the structure the energy is of (relax mode: the second's relaxed one).
    """

    status: str
    reason: str | None
    energy_per_atom: float | None
    steps: int
    seconds: float
    final: Structure | None

    @property
    def ok(self) -> bool:
        return self.energy_per_atom is not None and self.status in ("ok", "converged",
                                                                    "not_converged")

    def to_json(self) -> dict[str, Any]:
        return {"status": self.status, "reason": self.reason,
                "energy_per_atom_eV": self.energy_per_atom, "steps": self.steps,
                "seconds": round(self.seconds, 3),
                "final": self.final.as_dict() if self.final is not None else None}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "Judgement":
        final = Structure.from_dict(data["final"]) if data.get("final") else None
        return cls(data["status"], data["reason"], data["energy_per_atom_eV"],
                   int(data["steps"]), float(data["seconds"]), final)


def single_point(structure: Structure, calculator) -> Judgement:
    """The calculator's energy of ``structure`` as is; never raises."""
    from pymatgen.io.ase import AseAtomsAdaptor

    tic = time.perf_counter()
    try:
        atoms = AseAtomsAdaptor.get_atoms(structure)
        atoms.calc = calculator
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            energy = float(atoms.get_potential_energy())
    except Exception as err:  # a potential refusing a cell: reported, not fatal
        return Judgement("error", f"{type(err).__name__}: {err}"[:300], None, 0,
                         time.perf_counter() - tic, None)
    if not math.isfinite(energy):
        return Judgement("error", f"energy is {energy}", None, 0, time.perf_counter() - tic,
                         None)
    return Judgement("ok", None, energy / len(structure), 0, time.perf_counter() - tic,
                     structure)


def judgement(r: relaxing.Relaxation) -> Judgement:
    """The second potential's own relaxation (from the primary's relaxed structure) as a
    :class:`Judgement`."""
    return Judgement(r.status, r.reason, r.energy_per_atom if r.ok else None, r.steps,
                     r.seconds, r.final)


def slug(potential: str) -> str:
    """File-name form of a potential's name: ``"SevenNet-l3i5 (sevenn 0.13.0)"`` -> ``sevennet-l3i5``."""
    return re.sub(r"[^a-z0-9]+", "-", potential.split(" ")[0].lower()).strip("-")


class JudgementJournal(JsonlJournal):
    """Judgements saved one JSON line each (:class:`~crystalgan_jax.screening.journal.JsonlJournal`)."""

    def __init__(self, path: Path, settings: Mapping[str, Any], log: Log):
        super().__init__(path, settings, log, "judgements")

    def get(self, name: str, structure: Structure) -> Judgement | None:
        entry = self.entries.get(name)
        if entry is None or entry.get("hash") != structure_hash(structure):
            return None
        return Judgement.from_json(entry["judgement"])

    def add(self, name: str, structure: Structure, j: Judgement) -> None:
        self.append({"name": name, "hash": structure_hash(structure),
                     "judgement": j.to_json()})


def judge(result: dict[str, Any], out: Path, system, mode: str = "relax",
          log: Log | None = None) -> dict[str, Any]:
    """Adds the second potential's verdicts to a screening result and rewrites its files.

    Args:
      result: :meth:`System.screen`'s result of the primary; its rows' ``relaxed_file``
        (relative to ``out``) are the structures judged.
      out: the screening folder (``screening.json``, ``screening.md`` are rewritten).
      system: a :class:`~crystalgan_jax.screening.runs.System` built with the second
        potential's :class:`~crystalgan_jax.screening.workers.Relaxer` (its hull, and
        the relaxations of relax mode over its workers).
      mode: one of :data:`MODES`.
    Returns:
      ``result``, updated in place (see the module doc).
    Raises:
      ValueError: an unknown mode.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode}")
    log = log or (lambda msg: None)
    settings = result["settings"]
    primary, second = settings["potential"], system.potential
    threshold = result["stability_threshold_eV_per_atom"]
    relaxer = system.relaxer
    journal = JudgementJournal(out / f"second_opinion_{slug(second)}.jsonl",
                               {"potential": second, "mode": mode, "fmax": relaxer.fmax,
                                "max_steps": relaxer.max_steps,
                                "optimizer": relaxer.optimizer,
                                "hull_cache": system.system_hull.key}, log)
    diagram = system.hull.phase_diagram()
    elements = set(system.hull.elements)
    tic = time.perf_counter()
    rows = result["structures"]
    structures = {row["name"]: io.read_structure(out / row["relaxed_file"])
                  for row in rows if row.get("relaxed_file")}
    judged = {name: journal.get(name, s) for name, s in structures.items()}
    todo = [(name, structures[name], True) for name, j in judged.items() if j is None]

    def save(name: str, j: Judgement) -> None:
        judged[name] = j
        journal.add(name, structures[name], j)

    if mode == "single_point":
        calculator = relaxer.in_process_calculator()
        for k, (name, structure, _) in enumerate(todo, start=1):
            save(name, single_point(structure, calculator))
            log(f"[second {slug(second)}] {k}/{len(todo)} {name}: {judged[name].status}, "
                f"{judged[name].seconds:.1f}s")
    else:  # its own relaxations, all workers at once
        relaxer.relax(todo, on_done=lambda name, r: save(name, judgement(r)), progress=log,
                      tag=f"second {slug(second)}")
    for row in rows:
        if row["name"] not in structures:
            continue
        structure, j = structures[row["name"]], judged[row["name"]]
        opinion: dict[str, Any] = {"potential": second, "mode": mode, **j.to_json(),
                                   "formation_energy_eV_per_atom": None,
                                   "e_hull_eV_per_atom": None}
        opinion.pop("final")
        in_system = {e.symbol for e in structure.composition.elements} <= elements
        if j.ok and in_system:
            opinion["formation_energy_eV_per_atom"], opinion["e_hull_eV_per_atom"] = (
                energetics(diagram, j.final.composition, j.energy_per_atom))
        row["second_opinion"] = opinion
    by_name = {row["name"]: row for row in rows}
    compared = consensus.compare(
        [row["name"] for row in rows],
        {row["name"]: row.get("e_hull_eV_per_atom") for row in rows},
        {row["name"]: (row.get("second_opinion") or {}).get("e_hull_eV_per_atom")
         for row in rows}, threshold)
    for c in compared:
        row = by_name[c["name"]]
        row["e_hull_by_potential"] = {primary: c["e_hull_primary"], second: c["e_hull_second"]}
        row["e_hull_difference_eV_per_atom"] = c["difference"]
        row["consensus"] = c["consensus"]
    settings["potentials"] = [primary, second]
    result["second_opinion"] = {
        "primary": primary, "potential": second, "mode": mode,
        "agreement": consensus.agreement(compared),
        "ranking": [c["name"] for c in consensus.rank(compared)],
        "hull": system.hull.to_json(), "hull_cache": system.system_hull.key,
        "timing_s": {"judging": round(time.perf_counter() - tic, 2),
                     **{f"system_{k}": round(v, 2) for k, v in system.timing.items()}}}
    (out / "screening.json").write_text(json.dumps(result, indent=1))
    md = out / "screening.md"
    text = md.read_text() if md.exists() else ""
    if SECTION in text:
        text = text[:text.index(SECTION)].rstrip() + "\n"
    formulas = {row["name"]: row["formula"] for row in rows}
    md.write_text(text + "\n" + consensus.markdown(compared, primary, second, threshold, mode,
                                                   formulas))
    c = result["second_opinion"]["agreement"]
    log(f"second opinion ({second}, {mode}): {c['both stable']} both stable, "
        f"{c['disagree']} disagree, {c['both unstable']} both unstable, "
        f"{c['unknown']} unknown")
    return result
