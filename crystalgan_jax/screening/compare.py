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


def lowest_by_formula(rows: Iterable[Mapping[str, Any]], key: str = E_HULL
                      ) -> dict[str, tuple[float, str]]:
    """Reduced formula -> (lowest E_hull, name of the row that has it); rows without one skipped."""
    out: dict[str, tuple[float, str]] = {}
    for row in rows:
        e = row.get(key)
        if e is None or not math.isfinite(e):
            continue
        formula = Composition(row["formula"]).reduced_formula
        if formula not in out or e < out[formula][0]:
            out[formula] = (float(e), str(row.get("name", "")))
    return out


def compare_formulas(generator: Iterable[Mapping[str, Any]],
                     substitution: Iterable[Mapping[str, Any]], *, tie: float = TIE,
                     key: str = E_HULL) -> dict[str, Any]:
    """Per-formula comparison of two screenings' rows (``verdicts.screen``'s "structures").

    Returns:
      ``{"formulas": [...], "counts": {...}, "tie_eV_per_atom": tie}``; each formula row has
      ``formula``, ``generator`` and ``substitution`` (lowest E_hull or None), their
      structures' names, and ``lower``: "generator", "substitution", "tie",
      "only generator" or "only substitution". Counts are of each ``lower`` value.
      Formulas sorted by the lowest E_hull either side reaches.
    """
    gen, sub = lowest_by_formula(generator, key), lowest_by_formula(substitution, key)
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
                     "generator_name": g and g[1], "substitution_name": s and s[1],
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
    return "\n".join(lines) + "\n"
