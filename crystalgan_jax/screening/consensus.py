"""Two potentials' verdicts on the same candidates: difference, consensus, ranking.

Pure functions over energies above the hull (eV/atom), one value per candidate and
potential (None where that potential gave none: a failed relaxation or calculation):

- :func:`verdict`: "both stable", "disagree", "both unstable", or "unknown" where either
  value is missing; stable means E_hull <= threshold;
- :func:`compare`: per candidate, both E_hull, their difference (second - primary) and the
  verdict;
- :func:`rank`: both stable first, then disagree, both unstable, unknown; within each by
  the mean of the two E_hull, then by the larger;
- :func:`agreement`: how many of each verdict;
- :func:`markdown`: the "Second opinion" section of screening.md.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

VERDICTS = ("both stable", "disagree", "both unstable", "unknown")


def _known(x: float | None) -> bool:
    return x is not None and math.isfinite(x)


def verdict(e_primary: float | None, e_second: float | None, threshold: float) -> str:
    """Consensus of two energies above the hull (eV/atom) at ``threshold`` (eV/atom)."""
    if not (_known(e_primary) and _known(e_second)):
        return "unknown"
    stable = (e_primary <= threshold, e_second <= threshold)
    if all(stable):
        return "both stable"
    return "disagree" if any(stable) else "both unstable"


def compare(names: Sequence[str], primary: Mapping[str, float | None],
            second: Mapping[str, float | None], threshold: float) -> list[dict[str, Any]]:
    """One row per name: ``e_hull_primary``, ``e_hull_second``, ``difference``, ``consensus``.

    Args:
      names: the candidates, in input order.
      primary, second: E_hull (eV/atom) by each potential; a name absent or None: unknown.
      threshold: stable means E_hull <= threshold (eV/atom).
    Returns:
      Rows in ``names`` order; ``difference`` is second - primary (eV/atom), None when
      either is unknown.
    """
    rows = []
    for name in names:
        a, b = primary.get(name), second.get(name)
        a = a if _known(a) else None
        b = b if _known(b) else None
        rows.append({"name": name, "e_hull_primary": a, "e_hull_second": b,
                     "difference": None if a is None or b is None else b - a,
                     "consensus": verdict(a, b, threshold)})
    return rows


def rank(rows: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Rows by consensus (:data:`VERDICTS` order), then mean, then larger E_hull.

    A row with a single known E_hull (verdict unknown) sorts by that one; rows with none
    come last in input order (the sort is stable).
    """
    def key(row):
        known = [x for x in (row["e_hull_primary"], row["e_hull_second"]) if x is not None]
        mean = sum(known) / len(known) if known else math.inf
        return (VERDICTS.index(row["consensus"]), mean, max(known) if known else math.inf)

    return sorted(rows, key=key)


def agreement(rows: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """Counts of each verdict, plus ``agree`` (both stable + both unstable) and ``known``."""
    counts = {v: sum(row["consensus"] == v for row in rows) for v in VERDICTS}
    counts["agree"] = counts["both stable"] + counts["both unstable"]
    counts["known"] = len(rows) - counts["unknown"]
    return counts


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def markdown(rows: Sequence[Mapping[str, Any]], primary: str, second: str,
             threshold: float, mode: str, formulas: Mapping[str, str] | None = None) -> str:
    """The "## Second opinion" section: how judged, agreement counts, ranked table.

    Args:
      rows: from :func:`compare`.
      primary, second: the potentials' names with versions.
      threshold: the stability threshold (eV/atom).
      mode: how the second potential judged ("single_point" or "relax").
      formulas: name -> formula, for the table.
    """
    formulas = formulas or {}
    how = {"single_point": "a single point on the primary's relaxed structure",
           "relax": "its own relaxation, started from the primary's relaxed structure"
           }.get(mode, mode)
    c = agreement(rows)
    lines = ["## Second opinion", "",
             f"Primary: {primary}. Second: {second}, by {how}, against its own hull (the "
             f"same phases relaxed by it). Stable: E_hull <= {threshold:g} eV/atom. "
             "Difference: second - primary.", "",
             "| both stable | disagree | both unstable | unknown | agree |",
             "| ---: | ---: | ---: | ---: | ---: |",
             f"| {c['both stable']} | {c['disagree']} | {c['both unstable']} | "
             f"{c['unknown']} | {c['agree']} of {c['known']} |", "",
             f"| # | file | formula | E_hull {primary.split(' ')[0]} (eV/atom) | "
             f"E_hull {second.split(' ')[0]} (eV/atom) | difference (eV/atom) | consensus |",
             "| ---: | --- | --- | ---: | ---: | ---: | --- |"]
    for k, row in enumerate(rank(rows), start=1):
        lines.append(f"| {k} | {row['name']} | {formulas.get(row['name'], '-')} | "
                     f"{_fmt(row['e_hull_primary'])} | {_fmt(row['e_hull_second'])} | "
                     f"{_fmt(row['difference'])} | {row['consensus']} |")
    return "\n".join(lines) + "\n"
