"""Generator against substitution, formula by formula: who reaches the lower E_hull.

For every reduced formula either screening reaches (a relaxed candidate with an energy
above the hull), the lowest E_hull each side found; per formula the lower side wins,
a difference within ``tie`` (1 meV/atom by default) is a tie, and formulas only one side
reaches are counted apart.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping

from pymatgen.core import Composition

TIE = 1e-3  # eV/atom
E_HULL = "e_hull_eV_per_atom"


def _by_formula(rows: Iterable[Mapping[str, Any]], key: str
                ) -> dict[str, tuple[float, Mapping[str, Any], int]]:
    """Reduced formula -> (lowest E_hull, the first row that has it, rows with a finite
    E_hull in that formula)."""
    out: dict[str, tuple[float, Mapping[str, Any], int]] = {}
    for row in rows:
        e = row.get(key)
        if e is None or not math.isfinite(e):
            continue
        formula = Composition(row["formula"]).reduced_formula
        lowest, kept, tries = out.get(formula, (math.inf, row, 0))
        out[formula] = (float(e), row, tries + 1) if e < lowest else (lowest, kept, tries + 1)
    return out


def structure_summary(row: Mapping[str, Any]) -> dict[str, Any]:
    """What a reader compares between two sides' best structures in one formula: the
    atoms in the cell and the space group after relaxation (``[symbol, number]`` of the
    row's ``displacement``; None where the row has none)."""
    after = (row.get("displacement") or {}).get("spacegroup_after")
    return {"atoms": row.get("n_atoms"), "spacegroup": list(after) if after else None}


def compare_formulas(generator: Iterable[Mapping[str, Any]],
                     substitution: Iterable[Mapping[str, Any]], *, tie: float = TIE,
                     key: str = E_HULL) -> dict[str, Any]:
    """Per-formula comparison of two screenings' rows (``verdicts.screen``'s "structures").

    Returns:
      ``{"formulas": [...], "counts": {...}, "tie_eV_per_atom": tie}``; each formula row has
      ``formula``, ``generator`` and ``substitution`` (lowest E_hull or None), their
      structures' names, ``*_tries`` (how many of each side's rows have that formula),
      ``*_best`` (:func:`structure_summary` of each side's lowest structure, or None),
      and ``lower``: "generator", "substitution", "tie",
      "only generator" or "only substitution". Counts are of each ``lower`` value.
      Formulas sorted by the lowest E_hull either side reaches.
    """
    gen, sub = _by_formula(generator, key), _by_formula(substitution, key)
    rows = []
    for formula in set(gen) | set(sub):
        g, s = gen.get(formula), sub.get(formula)
        if g is None:
            lower = "only substitution"
        elif s is None:
            lower = "only generator"
        elif abs(g[0] - s[0]) <= tie:
            lower = "tie"
        else:
            lower = "generator" if g[0] < s[0] else "substitution"
        rows.append({"formula": formula, "generator": g and g[0], "substitution": s and s[0],
                     "generator_name": g and str(g[1].get("name", "")),
                     "substitution_name": s and str(s[1].get("name", "")),
                     "generator_tries": g[2] if g else 0,
                     "substitution_tries": s[2] if s else 0,
                     "generator_best": g and structure_summary(g[1]),
                     "substitution_best": s and structure_summary(s[1]),
                     "lower": lower})
    rows.sort(key=lambda r: (min(x for x in (r["generator"], r["substitution"])
                                 if x is not None), r["formula"]))
    counts = {k: sum(r["lower"] == k for r in rows)
              for k in ("generator", "substitution", "tie", "only generator",
                        "only substitution")}
    return {"formulas": rows, "counts": counts, "tie_eV_per_atom": tie}


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def markdown(comparison: Mapping[str, Any]) -> str:
    """The comparison as a markdown section: counts, then one line per formula."""
    c = comparison["counts"]
    tie = comparison["tie_eV_per_atom"]
    lines = ["## Generator against substitution, per formula", "",
             f"Lowest E_hull (eV/atom) each side reaches per reduced formula; within "
             f"{1000 * tie:g} meV/atom a tie.", "",
             "| generator lower | substitution lower | tie | only generator | "
             "only substitution |", "| ---: | ---: | ---: | ---: | ---: |",
             "| " + " | ".join(str(c[k]) for k in ("generator", "substitution", "tie",
                                                   "only generator", "only substitution"))
             + " |", "",
             "| formula | generator E_hull | substitution E_hull | lower |",
             "| --- | ---: | ---: | --- |"]
    lines += [f"| {r['formula']} | {_fmt(r['generator'])} | {_fmt(r['substitution'])} | "
              f"{r['lower']} |" for r in comparison["formulas"]]
    shared = shared_table(comparison)
    if shared:
        lines += ["", "### The formulas both reach", ""] + shared
    return "\n".join(lines) + "\n"


SHARED = ("generator", "substitution", "tie")  # ``lower`` of a formula both sides reach


def shared_formulas(comparison: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The rows of :func:`compare_formulas`'s "formulas" that both sides reach."""
    return [r for r in comparison["formulas"] if r["lower"] in SHARED]


def shared_table(comparison: Mapping[str, Any]) -> list[str]:
    """The formulas both sides reach as markdown lines (none where there are none): each
    side's lowest E_hull, its cell (:func:`structure_summary`) and its tries."""
    shared = shared_formulas(comparison)
    if not shared:
        return []
    lines = ["Each side's lowest structure (atoms in the cell, space group after relaxation) "
             "and how many of its relaxed structures have the formula.", "",
             "| formula | generator E_hull | its cell | tries | substitution E_hull | "
             "its cell | tries | lower |", "| --- | ---: | --- | ---: | ---: | --- | ---: "
             "| --- |"]
    return lines + [f"| {r['formula']} | {_fmt(r['generator'])} | "
                    f"{_cell(r['generator_best'])} | {r['generator_tries']} | "
                    f"{_fmt(r['substitution'])} | {_cell(r['substitution_best'])} | "
                    f"{r['substitution_tries']} | {r['lower']} |" for r in shared]


def _cell(summary: Mapping[str, Any] | None) -> str:
    if not summary:
        return "-"
    group = summary.get("spacegroup")
    where = f"{group[0]} ({group[1]})" if group else "?"
    return f"{summary.get('atoms', '?')} atoms, {where}"
