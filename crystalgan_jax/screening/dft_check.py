"""The DFT check of a screening: top candidates and their hull phases, PBE against the potentials.

``experiments/verify.py`` hands over a screening folder (``RUN/screening``); this module

- :func:`top_candidates`: the best ``top`` relaxed candidates of ``screening.json``, by
  the consensus ranking where a second opinion was made
  (:func:`crystalgan_jax.screening.consensus.rank`), else by E_hull;
- :func:`hull_phases`: the hull phases their E_hull is measured against: the elements and
  the phases of each candidate's decomposition on the primary's hull (``decomposition``),
  or every phase on that hull (``stable``); their relaxed structures come from the
  system's hull cache (:mod:`crystalgan_jax.screening.system_hull`);
- :func:`tasks`: the DFT single points (H as H2 in a box, Gamma point only);
- :func:`evaluate`: DFT formation energies and E_hull (a hull of the DFT energies of the
  same phases), each potential's formation energy and E_hull against the same phases, and
  each potential's mean absolute error against DFT;
- :func:`markdown`: the "DFT check" section (dft_check.md and the run's report.md).

Every structure is computed as relaxed by the primary potential (single points, not DFT
relaxations). Energies in eV/atom, lengths in Angstrom.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

from pymatgen.core import Composition, Structure

from crystalgan_jax.materials import io
from crystalgan_jax.materials.io import HYDROGEN
from crystalgan_jax.screening import consensus, dft, verdicts
from crystalgan_jax.screening.hull import Hull, energetics
from crystalgan_jax.screening.system_hull import SystemHull, cache_dir

SECTION = "## DFT check"
PHASE_SETS = ("decomposition", "stable")


class CheckError(ValueError):
    """A screening that cannot be checked; the message is one line."""


def read_screening(folder: Path) -> dict[str, Any]:
    """``folder/screening.json``.

    Raises:
      CheckError: missing or unreadable.
    """
    path = folder / "screening.json"
    if not path.exists():
        raise CheckError(f"{path} not found: run experiments/screen.py on the run first")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise CheckError(f"{path}: not JSON ({err})") from None


def top_candidates(result: Mapping[str, Any], folder: Path, top: int
                   ) -> list[tuple[Mapping[str, Any], Structure]]:
    """The ``top`` best candidates with an E_hull and a relaxed file, with that structure."""
    rows = [r for r in result["structures"]
            if r.get("relaxed_file") and r.get("e_hull_eV_per_atom") is not None]
    if rows and all("consensus" in r for r in rows):
        by_name = {r["name"]: r for r in rows}
        order = consensus.rank(consensus.compare(
            list(by_name), {n: r["e_hull_eV_per_atom"] for n, r in by_name.items()},
            {n: r["second_opinion"]["e_hull_eV_per_atom"] for n, r in by_name.items()},
            result["stability_threshold_eV_per_atom"]))
        rows = [by_name[o["name"]] for o in order]
    else:
        rows = list(verdicts.ranked(rows))
    return [(r, io.read_structure(folder / r["relaxed_file"])) for r in rows[:top]]


def load_system_hull(result: Mapping[str, Any], key: str | None = None) -> SystemHull:
    """The relaxed hull phases of the screening's system, from the hull cache.

    Raises:
      CheckError: the cache file is missing (another machine, or ``--nohull_cache``).
    """
    key = key or result["settings"].get("hull_cache")
    path = cache_dir() / "hulls" / f"{key}.json"
    if not key or not path.exists():
        raise CheckError(f"hull cache {path} not found: rerun experiments/screen.py with the "
                         "same settings (it caches the hull) on this machine")
    return SystemHull.from_json(json.loads(path.read_text()))


def _hull_name(phase) -> str:
    """A phase's name in the screening's hull (Hull entries: "kind: name", elements bare)."""
    return phase.name if phase.kind == "element" else f"{phase.kind}: {phase.name}"


def hull_phases(result: Mapping[str, Any], system: SystemHull,
                candidates: Sequence[tuple[Mapping[str, Any], Structure]],
                which: str = "decomposition") -> dict[str, Structure]:
    """Hull name -> relaxed structure of the phases to compute (the elements first).

    Raises:
      ValueError: ``which`` not in :data:`PHASE_SETS`.
    """
    if which not in PHASE_SETS:
        raise ValueError(f"hull phases must be one of {', '.join(PHASE_SETS)}, got {which}")
    hull = Hull.from_json(result["settings"]["hull"])
    diagram = hull.phase_diagram()
    if which == "stable":
        names = {e.name for e in diagram.stable_entries}
    else:
        names = set()
        for _, structure in candidates:
            names |= {e.name for e in diagram.get_decomposition(structure.composition)}
    structures = {_hull_name(p): p.relaxation.final for p in system.phases if p.ok}
    out = {e: structures[e] for e in hull.elements}
    out.update({n: structures[n] for n, _, _ in hull.entries
                if n in names and n not in out and n in structures})
    return out


def tasks(phases: Mapping[str, Structure], candidates: Sequence[tuple[Mapping, Structure]],
          settings: dft.DFTSettings) -> list[dft.Task]:
    """The single points: phases (H as H2 re-boxed, Gamma only), then the candidates."""
    out = []
    for name, s in phases.items():
        if name == HYDROGEN:  # the relaxed bond, in the DFT settings' box
            bond = float(s.get_distance(0, 1))
            out.append(dft.Task(name, dft.h2_reference(bond, settings.h2_box), (1, 1, 1)))
        else:
            out.append(dft.Task(name, s))
    out += [dft.Task(f"candidate: {row['name']}", s) for row, s in candidates]
    return out


def single_point_energies(tasks: Sequence[dft.Task], calculator) -> dict[str, float | None]:
    """A potential's energy per atom (eV) of each task's structure as DFT computes it
    (:func:`crystalgan_jax.screening.second_opinion.single_point`; None where it fails)."""
    from crystalgan_jax.screening.second_opinion import single_point

    return {t.name: single_point(t.structure, calculator).energy_per_atom for t in tasks}


def _mae(pairs: Sequence[tuple[float | None, float | None]]) -> tuple[float | None, int]:
    known = [abs(a - b) for a, b in pairs if a is not None and b is not None]
    return (sum(known) / len(known) if known else None), len(known)


def evaluate(result: Mapping[str, Any], phases: Mapping[str, Structure],
             candidates: Sequence[tuple[Mapping[str, Any], Structure]],
             computed: Mapping[str, dft.DFTResult],
             single_points: Mapping[str, Mapping[str, float | None]] | None = None
             ) -> dict[str, Any]:
    """DFT energetics and each potential's error on the same phases (see the module doc).

    ``single_points``: more potentials, each as {task name: energy per atom (eV)} of the
    very structures DFT computed (:func:`single_point_energies`); their formation
    energies and E_hull are measured against their own energies of the same phases.

    Raises:
      CheckError: an element's DFT reference did not converge.
    """
    elements = tuple(result["settings"]["hull"]["elements"])
    bad = [e for e in elements if not computed[e].ok]
    if bad:
        raise CheckError(f"no DFT energy for the element(s) {', '.join(bad)}: "
                         + "; ".join(f"{e}: {computed[e].reason}" for e in bad))
    potentials = {result["settings"]["potential"]: result["settings"]["hull"]}
    second = result.get("second_opinion")
    if second:
        potentials[second["potential"]] = second["hull"]
    ok_phases = [n for n in phases if n not in elements and computed[n].ok]

    def energies_dft(name):
        return computed[name].energy_per_atom

    def build(energy_of) -> Hull | None:
        refs = {e: energy_of(e) for e in elements}
        if any(v is None for v in refs.values()):
            return None
        rows = [(n, phases[n].composition, energy_of(n)) for n in ok_phases
                if energy_of(n) is not None]
        return Hull.build(elements, refs, rows)

    def hull_energy(hull_json):
        table = {e["name"]: e["energy_per_atom_eV"] for e in hull_json["entries"]}
        return lambda name: table.get(name)

    phase_energy = {pot: hull_energy(hull_json) for pot, hull_json in potentials.items()}
    for pot, table in (single_points or {}).items():
        phase_energy[pot] = table.get
    hulls = {"DFT": build(energies_dft)}
    for pot, energy_of in phase_energy.items():
        hulls[pot] = build(energy_of)
    diagrams = {k: (h.phase_diagram() if h is not None else None) for k, h in hulls.items()}

    def candidate_energy(pot, row):
        if pot == "DFT":
            r = computed[f"candidate: {row['name']}"]
            return r.energy_per_atom
        if pot in (single_points or {}):
            return single_points[pot].get(f"candidate: {row['name']}")
        if pot == result["settings"]["potential"]:
            return row["relaxation"]["energy_per_atom_eV"]
        return (row.get("second_opinion") or {}).get("energy_per_atom_eV")

    cand_rows = []
    for row, s in candidates:
        entry = {"name": row["name"], "formula": s.composition.formula,
                 "dft": computed[f"candidate: {row['name']}"].status}
        for pot, diagram in diagrams.items():
            e = candidate_energy(pot, row)
            f = h = None
            if diagram is not None and e is not None:
                f, h = energetics(diagram, s.composition, e)
            entry[pot] = {"energy_per_atom_eV": e, "formation_energy_eV_per_atom": f,
                          "e_hull_eV_per_atom": h}
        cand_rows.append(entry)
    phase_rows = []
    for name in ok_phases:
        entry = {"name": name, "formula": phases[name].composition.formula}
        for pot, diagram in diagrams.items():
            e = energies_dft(name) if pot == "DFT" else phase_energy[pot](name)
            entry[pot] = {"energy_per_atom_eV": e, "formation_energy_eV_per_atom":
                          None if diagram is None or e is None else
                          energetics(diagram, Composition(phases[name].composition), e)[0]}
        phase_rows.append(entry)
    mae = {}
    for pot in phase_energy:
        form = [(r[pot]["formation_energy_eV_per_atom"],
                 r["DFT"]["formation_energy_eV_per_atom"]) for r in cand_rows + phase_rows]
        ehull = [(r[pot]["e_hull_eV_per_atom"], r["DFT"]["e_hull_eV_per_atom"])
                 for r in cand_rows]
        (mf, nf), (mh, nh) = _mae(form), _mae(ehull)
        mae[pot] = {"formation_energy_eV_per_atom": mf, "n_formation": nf,
                    "e_hull_eV_per_atom": mh, "n_e_hull": nh}
    return {"elements": list(elements), "potentials": list(phase_energy),
            "single_point_potentials": list(single_points or {}),
            "candidates": cand_rows, "hull_phases": phase_rows, "mae": mae,
            "dft_hull": hulls["DFT"].to_json()}


def _f(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def markdown(check: Mapping[str, Any]) -> str:
    """The "## DFT check" section: settings, per-candidate table, hull phases, MAE."""
    s = check["settings"]
    pots = check["potentials"]
    short = [p.split(" ")[0] for p in pots]
    lines = [SECTION, "",
             f"PBE single points with GPAW {check.get('gpaw_version', '')} on the structures "
             f"as relaxed by {pots[0]}: plane waves {s['cutoff_eV']:g} eV, k-point density "
             f"{s['kpoint_density']:g} A (mesh ceil(density x |b_i|), Gamma-centred), "
             f"{s['smearing']} smearing {s['width_eV']:g} eV (energies extrapolated to zero "
             f"width), spin-polarised where {', '.join(sorted(dft.MAGNETIC))} is present, H "
             f"as H2 in a {s['h2_box']:g} A box (Gamma). E_hull against the DFT hull of the "
             f"elements and {len(check['hull_phases'])} hull phase(s) "
             f"({check['phase_set']}); each potential's E_hull here against the same "
             "phases" + (f"; {', '.join(check['single_point_potentials'])}: single points on "
                         "the same structures as DFT" if check.get("single_point_potentials")
                         else "") + ".", "",
             "| candidate | formula | DFT | " + " | ".join(
                 f"E_form {p} | E_hull {p}" for p in ["DFT", *short]) + " |",
             "| --- | --- | --- | " + " | ".join(["---: | ---:"] * (len(pots) + 1)) + " |"]
    for row in check["candidates"]:
        cells = [f"{_f(row[p]['formation_energy_eV_per_atom'])} | "
                 f"{_f(row[p]['e_hull_eV_per_atom'])}" for p in ["DFT", *pots]]
        lines.append(f"| {row['name']} | {row['formula']} | {row['dft']} | "
                     + " | ".join(cells) + " |")
    lines += ["", "| hull phase | formula | " + " | ".join(
        f"E_form {p}" for p in ["DFT", *short]) + " |",
        "| --- | --- | " + " | ".join(["---:"] * (len(pots) + 1)) + " |"]
    for row in check["hull_phases"]:
        lines.append(f"| {row['name']} | {row['formula']} | " + " | ".join(
            _f(row[p]["formation_energy_eV_per_atom"]) for p in ["DFT", *pots]) + " |")
    lines += ["", "| potential | MAE E_form (eV/atom) | n | MAE E_hull (eV/atom) | n |",
              "| --- | ---: | ---: | ---: | ---: |"]
    for p in pots:
        m = check["mae"][p]
        lines.append(f"| {p} | {_f(m['formation_energy_eV_per_atom'])} | {m['n_formation']} "
                     f"| {_f(m['e_hull_eV_per_atom'])} | {m['n_e_hull']} |")
    problems = [r for r in check["calculations"].values() if r["status"] != "converged"]
    if problems:
        lines += ["", "Not used: " + "; ".join(f"{r['name']}: {r['status']} ({r['reason']})"
                                               for r in problems) + "."]
    lines += ["", f"DFT wall time {check['timing_s']['dft']:.0f} s "
              f"(estimated {check['timing_s']['estimate']:.0f} s)."]
    return "\n".join(lines) + "\n"


def write_section(report_md: Path, section: str) -> bool:
    """Adds or replaces the "## DFT check" section of a report; False if it has none."""
    if not report_md.exists():
        return False
    text = report_md.read_text()
    if SECTION in text:
        head, rest = text.split(SECTION, 1)
        nxt = rest.find("\n## ")
        text = head.rstrip() + "\n\n" + section + ("" if nxt < 0 else rest[nxt:])
    else:
        text = text.rstrip() + "\n\n" + section
    report_md.write_text(text)
    return True
