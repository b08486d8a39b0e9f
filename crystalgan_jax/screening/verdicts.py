"""Verdicts after relaxation (S.U.N. counts) and the screening report.

- :func:`screen`: over a list of relaxed candidates, the verdicts after relaxation
  (ternary / good (paper) / good (strict) by :mod:`crystalgan_jax.materials.evaluation`),
  energetics against a :class:`~crystalgan_jax.screening.hull.Hull`, unique
  (StructureMatcher among the relaxed candidates), novel (matches no reference structure:
  the training set and the substitution baseline), and the S.U.N. counts
  (stable: E_hull <= threshold, unique, novel);
- :func:`markdown`: screening.md.
"""

from __future__ import annotations

import math
import time
import warnings
from typing import Any, Mapping, Sequence

from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Structure

from crystalgan_jax.materials import evaluation
from crystalgan_jax.screening.hull import Hull, energetics
from crystalgan_jax.screening.relax import (STABILITY_THRESHOLD, Relaxation, displacement,
                                            relaxation_json)


ON_HULL_TOLERANCE = 1e-6  # eV/atom: "on the hull" is E_hull <= this


def _matches_any(structure: Structure, references: Sequence[Structure],
                 matcher: StructureMatcher) -> int | None:
    """Index of the first reference StructureMatcher matches with ``structure``, or None."""
    formula = structure.composition.reduced_formula
    for k, ref in enumerate(references):
        if ref.composition.reduced_formula != formula:  # fit needs the same composition
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                if matcher.fit(structure, ref):
                    return k
            except Exception:  # spglib can fail on odd cells: no match
                continue
    return None


def screen(candidates: Sequence[tuple[str, Structure]], relaxations: Sequence[Relaxation],
           hull: Hull, element_a: str, element_b: str, *,
           novelty_references: Mapping[str, Sequence[Structure]],
           stability_threshold: float = STABILITY_THRESHOLD,
           evaluation_options: Mapping[str, Any],
           substitution_hull: Hull | None = None,
           substitution_structures: Sequence[Structure] = ()) -> dict[str, Any]:
    """Verdicts after relaxation and the S.U.N. counts.

    Args:
      candidates: ``(name, structure)`` before relaxation.
      relaxations: :func:`relax` of each candidate, same order.
      hull: from :func:`hull_from_relaxations`.
      element_a, element_b: the system's metals.
      novelty_references: named sets of structures a novel candidate must match none of
        (e.g. "training" and "substitution"); StructureMatcher, default tolerances.
      stability_threshold: stable means E_hull <= this (eV/atom) and a converged
        relaxation.
      evaluation_options: keyword options of :func:`evaluation.evaluate_structure`, d1 and
        d2 (Angstrom) at least.
      substitution_hull: the hull that also holds the relaxed substitution structures
        (:meth:`SystemHull.hull` with "substitution"); None: no "beats substitution".
      substitution_structures: the substitution structures (relaxed and not) a candidate
        that beats substitution must match none of.
    Returns:
      ``{"counts": ..., "structures": [...], "timing_s": ...}``; structures in input order,
      each with its relaxation, displacement, energetics and verdicts.
    """
    if len(candidates) != len(relaxations):
        raise ValueError(f"{len(candidates)} candidates but {len(relaxations)} relaxations")
    options = dict(evaluation_options)
    diagram = hull.phase_diagram()
    sub_diagram = substitution_hull.phase_diagram() if substitution_hull is not None else None
    matcher = StructureMatcher()
    system = set(hull.elements)
    timing = {"evaluation": 0.0, "energetics": 0.0, "novelty": 0.0, "uniqueness": 0.0}
    rows = []
    for (name, structure), r in zip(candidates, relaxations):
        row: dict[str, Any] = {"name": name, "formula": structure.composition.formula,
                               "n_atoms": len(structure), "relaxation": relaxation_json(r)}
        tic = time.perf_counter()
        before = evaluation.evaluate_structure(structure, element_a, element_b, **options)
        row["before"] = {k: getattr(before, k) for k in ("ternary", "good_paper",
                                                          "good_strict")}
        if r.ok:
            after = evaluation.evaluate_structure(r.final, element_a, element_b, **options)
            row["after"] = {k: getattr(after, k) for k in ("ternary", "good_paper",
                                                            "good_strict")}
            row["after"]["reasons"] = after.to_json()["reasons"]
            row["after"]["min_distances_A"] = after.to_json()["min_distances_A"]
            row["displacement"] = displacement(structure, r.final)
        timing["evaluation"] += time.perf_counter() - tic
        tic = time.perf_counter()
        elements = {e.symbol for e in structure.composition.elements}
        if r.ok and elements <= system:
            row["formation_energy_eV_per_atom"], row["e_hull_eV_per_atom"] = energetics(
                diagram, r.final.composition, r.energy_per_atom)
        else:
            row["formation_energy_eV_per_atom"] = row["e_hull_eV_per_atom"] = None
        timing["energetics"] += time.perf_counter() - tic
        tic = time.perf_counter()
        if r.ok:
            row["matches"] = {}
            for ref_name, refs in novelty_references.items():
                k = _matches_any(r.final, refs, matcher)
                row["matches"][ref_name] = k
            row["novel"] = all(k is None for k in row["matches"].values())
        else:
            row["novel"] = None
        timing["novelty"] += time.perf_counter() - tic
        e_hull = row["e_hull_eV_per_atom"]
        row["stable"] = bool(r.converged and e_hull is not None
                             and e_hull <= stability_threshold)
        if sub_diagram is not None:
            tic = time.perf_counter()
            beats_substitution(row, r, sub_diagram, substitution_structures, matcher,
                               stability_threshold, elements <= system)
            timing["substitution"] = timing.get("substitution", 0.0) + time.perf_counter() - tic
        rows.append(row)

    tic = time.perf_counter()
    usable = [k for k, r in enumerate(relaxations) if r.ok]
    groups = evaluation.unique_groups([relaxations[k].final for k in usable], matcher)
    for k, g in zip(usable, groups):
        rows[k]["unique_group"] = g
    timing["uniqueness"] = time.perf_counter() - tic

    def distinct(keep) -> int:
        return len({rows[k]["unique_group"] for k in usable if keep(rows[k])})

    sun = distinct(lambda row: row["stable"] and row["novel"])
    counts = {
        "screened": len(rows),
        "relaxed": len(usable),
        "converged": sum(r.converged for r in relaxations),
        "failed": len(rows) - len(usable),
        "ternary_after": sum(bool(row.get("after", {}).get("ternary")) for row in rows),
        "good_strict_after": sum(bool(row.get("after", {}).get("good_strict")) for row in rows),
        "unique": distinct(lambda row: True),
        "novel": sum(bool(row["novel"]) for row in rows),
        "stable": sum(row["stable"] for row in rows),
        "stable_unique": distinct(lambda row: row["stable"]),
        "sun": sun,
        "novel_unique": distinct(lambda row: bool(row["novel"])),
        # on or below the hull; the tolerance absorbs rounding for phases of the hull itself
        "on_hull": distinct(lambda row: bool(
            row["relaxation"]["converged"] and row["e_hull_eV_per_atom"] is not None
            and row["e_hull_eV_per_atom"] <= ON_HULL_TOLERANCE)),
    }
    if sub_diagram is not None:
        counts["beats_substitution"] = distinct(lambda row: row["beats_substitution"])
    return {"stability_threshold_eV_per_atom": stability_threshold, "counts": counts,
            "structures": rows, "timing_s": {k: round(v, 2) for k, v in timing.items()}}


def beats_substitution(row: dict[str, Any], r: Relaxation, diagram, references:
                       Sequence[Structure], matcher: StructureMatcher, threshold: float,
                       in_system: bool) -> None:
    """Adds ``e_hull_vs_substitution_eV_per_atom`` and ``beats_substitution`` to a row.

    Beats substitution: converged, E_hull <= ``threshold`` against the hull that holds the
    substitution structures, and StructureMatcher matches none of them.
    """
    if not (r.ok and in_system):
        row["e_hull_vs_substitution_eV_per_atom"] = None
        row["beats_substitution"] = False
        return
    _, e = energetics(diagram, r.final.composition, r.energy_per_atom)
    row["e_hull_vs_substitution_eV_per_atom"] = e
    row["beats_substitution"] = bool(r.converged and e <= threshold
                                     and _matches_any(r.final, references, matcher) is None)


# --------------------------------------------------------------------------------------
# Report


def _fmt(x: float | None, digits: int = 3) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{x:.{digits}f}"


def _sg(pair: Sequence | None) -> str:
    return "-" if not pair or pair[0] is None else f"{pair[0]} ({pair[1]})"


def ranked(rows: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Rows by energy above the hull, lowest first; those without one last, in input order."""
    return sorted(rows, key=lambda r: (r["e_hull_eV_per_atom"] is None,
                                       r["e_hull_eV_per_atom"] or 0.0))


def markdown(result: Mapping[str, Any], title: str, settings: Mapping[str, Any]) -> str:
    """screening.md: settings, counts, hull, and every candidate ranked by E_hull."""
    c = result["counts"]
    t = result["stability_threshold_eV_per_atom"]
    lines = [f"# Screening: {title}", "",
             f"Relaxed with CHGNet {settings.get('model_version', '')} "
             f"({settings.get('optimizer', 'FIRE')}, cell and positions, fmax "
             f"{settings['fmax']:g} eV/A, at most {settings['max_steps']} steps; the hull's "
             f"phases with {settings.get('hull_optimizer', settings.get('optimizer', 'FIRE'))}"
             f"). E_hull against {settings.get('hull_phases', 'the elements and the relaxed training binaries')}. "
             f"Stable: converged and E_hull <= {t:g} eV/atom; unique: StructureMatcher "
             f"groups among the relaxed; novel: matches no structure of "
             f"{', '.join(settings.get('novelty_references', [])) or 'no reference set'}; "
             "S.U.N.: distinct groups that are stable and novel.", "",
             "## Counts", "",
             "| screened | relaxed | converged | failed | strict after | unique | novel | "
             "stable | S.U.N. |",
             "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
             "| " + " | ".join(str(c[k]) for k in (
                 "screened", "relaxed", "converged", "failed", "good_strict_after",
                 "unique", "novel", "stable", "sun")) + " |", "",
             *([f"Beats substitution (converged, E_hull <= {t:g} eV/atom against the hull "
                "that also holds the relaxed substitution structures, matching none of them): "
                f"{c['beats_substitution']} distinct groups.", ""]
               if "beats_substitution" in c else []),
             "## Candidates by energy above the hull", "",
             "| # | file | formula | relaxation | E (eV/atom) | E_form (eV/atom) | "
             "E_hull (eV/atom) | stable | group | novel | strict before -> after | "
             "space group before -> after | dV | RMS |",
             "| ---: | --- | --- | --- | ---: | ---: | ---: | :-: | ---: | :-: | :-: | --- | "
             "---: | ---: |"]
    yes = {True: "yes", False: "no", None: "-"}
    for k, row in enumerate(ranked(result["structures"]), start=1):
        rel = row["relaxation"]
        status = f"{rel['status']} ({rel['steps']} steps)"
        if rel["status"] in ("diverged", "error"):
            status += f": {str(rel['reason']).replace('|', '/')}"
        d = row.get("displacement") or {}
        after = row.get("after") or {}
        strict = f"{yes[row['before']['good_strict']]} -> {yes[after.get('good_strict')]}"
        dv = "-" if "volume_change" not in d else f"{100 * d['volume_change']:+.1f}%"
        lines.append(
            f"| {k} | {row['name']} | {row['formula']} | {status} | "
            f"{_fmt(rel['energy_per_atom_eV'])} | {_fmt(row['formation_energy_eV_per_atom'])} | "
            f"{_fmt(row['e_hull_eV_per_atom'])} | {yes[row['stable']]} | "
            f"{row.get('unique_group', '-')} | {yes[row['novel']]} | {strict} | "
            f"{_sg(d.get('spacegroup_before'))} -> {_sg(d.get('spacegroup_after'))} | {dv} | "
            f"{_fmt(d.get('rms'), 3)} |")
    hull = settings.get("hull")
    if hull:
        lines += ["", "## Hull", "", "| phase | formula | E (eV/atom) |", "| --- | --- | ---: |"]
        lines += [f"| {e['name']} | {e['formula']} | {e['energy_per_atom_eV']:.4f} |"
                  for e in hull["entries"]]
    timing = settings.get("timing_s")
    if timing:
        lines += ["", "## Where the time went (s)", "",
                  ", ".join(f"{k} {v}" for k, v in timing.items())]
    return "\n".join(lines) + "\n"
