"""What the offspring bring: a screened run's formula-by-formula comparison with
substitution without them, with each operator alone, and with both.

    python benchmarks/offspring.py --run_dir=runs/pdni [--out=FILE]

Reads a run screened with ``--heredity`` / ``--permutations``
(``RUN/screening/screening.json``, ``offspring.json`` and the substitution baseline's
``substitution/screening.json``); relaxes nothing. The comparison is
:func:`crystalgan_jax.screening.compare.compare_formulas` on the candidates' rows with the
offspring left out, with one operator's offspring only, and with all, so the "all" row is
the run's own ``comparison.json``. Per operator: how many were screened and converged,
how many are stable and novel, the median FIRE steps, and in how many formulas an
offspring is lower than every first-screening candidate of that formula (by more than
the comparison's tie). Prints a table and writes JSON (``benchmarks/results/offspring.json``,
or ``--out``).
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

from absl import app, flags

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))  # common.py

from common import RESULTS, write_results  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("run_dir", str(REPO / "runs" / "pdni"), "A run screened with offspring.")
flags.DEFINE_string("out", str(RESULTS / "offspring.json"), "JSON file to write.")

OPERATORS = ("heredity", "permutation")


def main(argv: list[str]) -> int:
    del argv
    from crystalgan_jax.screening import compare

    screening = Path(FLAGS.run_dir) / "screening"
    manifest_path = screening / "offspring.json"
    if not manifest_path.is_file():
        print(f"{manifest_path}: no offspring here; screen the run with --heredity or "
              f"--permutations")
        return 2
    manifest = json.loads(manifest_path.read_text())
    rows = json.loads((screening / "screening.json").read_text())["structures"]
    sub = json.loads((screening / "substitution" / "screening.json").read_text())["structures"]
    tie = compare.TIE
    first = [r for r in rows if r["name"] not in manifest]
    variants = {"without": first,
                **{f"{op} only": first + [r for r in rows
                                          if manifest.get(r["name"], {}).get("operator") == op]
                   for op in OPERATORS},
                "all": rows}
    comparisons = {k: compare.compare_formulas(v, sub) for k, v in variants.items()}
    best_first = _lowest(first)
    operators = {}
    for op in OPERATORS:
        ours = [r for r in rows if manifest.get(r["name"], {}).get("operator") == op]
        converged = [r for r in ours if r["relaxation"]["converged"]]
        lowest = _lowest(ours)
        operators[op] = {
            "screened": len(ours), "converged": len(converged),
            "stable_novel": sum(bool(r.get("stable")) and bool(r.get("novel")) for r in ours),
            "median_steps": (statistics.median(r["relaxation"]["steps"] for r in converged)
                             if converged else None),
            "formulas": len(lowest),
            "formulas_below_first_screening": sorted(
                f for f, e in lowest.items() if f in best_first and e < best_first[f] - tie),
            "formulas_new": sorted(set(lowest) - set(best_first))}
    counts = {k: c["counts"] for k, c in comparisons.items()}
    keys = ("generator", "substitution", "tie", "only generator", "only substitution")
    print(f"{'offspring':16s} " + " ".join(f"{k:>17s}" for k in keys))
    for k, c in counts.items():
        print(f"{k:16s} " + " ".join(f"{c.get(x, 0):17d}" for x in keys))
    for op, o in operators.items():
        print(f"{op}: {o['screened']} screened, {o['converged']} converged, "
              f"{o['stable_novel']} stable and novel, median {o['median_steps']} FIRE steps; "
              f"lower than the first screening in {len(o['formulas_below_first_screening'])} "
              f"of their {o['formulas']} formulas, {len(o['formulas_new'])} formulas new")
    won = sorted(r["formula"] for r in comparisons["all"]["formulas"]
                 if r["lower"] == "generator")
    before = {r["formula"]: r["lower"] for r in comparisons["without"]["formulas"]}
    changed = {f: f"{before.get(f, 'neither')} -> generator" for f in won
               if before.get(f) != "generator"}
    print(f"formulas the offspring won: {changed}")
    report = {"run_dir": FLAGS.run_dir, "tie_eV_per_atom": tie, "comparison": counts,
              "operators": operators, "won_by_offspring": changed,
              "offspring": len(manifest)}
    write_results(FLAGS.out, report)
    print(f"wrote {FLAGS.out}")
    return 0


def _lowest(rows: list[dict]) -> dict[str, float]:
    """Reduced formula -> the lowest E_hull among ``rows``, as the comparison counts it
    (:func:`crystalgan_jax.screening.compare.compare_formulas` with no other side)."""
    from crystalgan_jax.screening import compare

    return {r["formula"]: r["generator"] for r in compare.compare_formulas(rows, [])["formulas"]}


if __name__ == "__main__":
    app.run(main)
