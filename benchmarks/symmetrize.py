"""Does symmetrising relaxed candidates and relaxing them again find lower energies?

    python benchmarks/symmetrize.py --run_dir=runs/pdni [--symprecs=0.2,0.3,0.5] [--out=FILE]

For every converged relaxed candidate of a screened run (``screening/relaxed/``), and each
tolerance of ``--symprecs`` (Angstrom) at which spglib finds a higher space group than at
0.1 A, the idealised primitive standard cell
(:func:`crystalgan_jax.materials.candidates.snap_to_symmetry`) is relaxed again with CHGNet
(``--potential``; FIRE, the screening's defaults, two worker processes). Prints and writes
(``benchmarks/results/symmetrize.json``, or ``--out``) per tolerance: how many candidates
gained symmetry, the energy change after the second relaxation (eV/atom; negative: lower),
how many came out lower by more than 5 meV/atom, the space groups, the steps, and the
E_hull the candidates would then have (the hull unchanged: E_hull moves by the change).
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

from common import RESULTS, define_screened_run_flags, screening_folder, write_results  # noqa: E402,E501

FLAGS = flags.FLAGS
define_screened_run_flags()
flags.DEFINE_list("symprecs", ["0.2", "0.3", "0.5"], "Loose tolerances to try (Angstrom).")
flags.DEFINE_integer("workers", 2, "Relaxation processes.")
flags.DEFINE_string("potential", "chgnet", "The potential (emt: a fast stand-in for tests).")
flags.DEFINE_string("out", str(RESULTS / "symmetrize.json"), "JSON file to write.")


def main(argv: list[str]) -> int:
    del argv
    from crystalgan_jax.materials import candidates, evaluation, io
    from crystalgan_jax.screening import relax
    from crystalgan_jax.screening.workers import Relaxer

    folder = screening_folder(FLAGS.run_dir, FLAGS.side)
    result = json.loads((folder / "screening.json").read_text())
    rows = [r for r in result["structures"] if r.get("relaxed_file")
            and r["relaxation"]["converged"]]
    jobs, meta = [], []
    for r in rows:
        s = io.read_structure(folder / r["relaxed_file"])
        before = evaluation.spacegroup(s, evaluation.SYMPREC)[1]
        for tol in (float(t) for t in FLAGS.symprecs):
            snapped, number = candidates.snap_to_symmetry(s, tol)
            if number > before:
                jobs.append((f"{r['name']}@{tol:g}", snapped, True))
                meta.append((r, tol, before, number))
    print(f"{len(rows)} relaxed candidates; {len(jobs)} (candidate, tolerance) pairs gain "
          "symmetry", flush=True)
    with Relaxer(FLAGS.potential, fmax=relax.DEFAULT_FMAX, max_steps=relax.DEFAULT_MAX_STEPS,
                 workers=FLAGS.workers) as relaxer:
        out = relaxer.relax(jobs, progress=None, tag="sym")
    report = {"run_dir": str(FLAGS.run_dir), "side": FLAGS.side, "candidates": len(rows),
              "by_symprec": {}}
    for tol in (float(t) for t in FLAGS.symprecs):
        picked = [(r, b, n, x) for (r, t, b, n), x in zip(meta, out) if t == tol and x.ok]
        d = [x.energy_per_atom - r["relaxation"]["energy_per_atom_eV"] for r, _, _, x in picked]
        after = [evaluation.spacegroup(x.final, evaluation.SYMPREC)[1] for *_, x in picked]
        figures = {"gained_symmetry": len(picked),
                   "kept_symmetry_after_relaxation": sum(a > b for (_, b, _, _), a in
                                                         zip(picked, after)),
                   "dE_median_eV_per_atom": round(statistics.median(d), 5) if d else None,
                   "dE_min_eV_per_atom": round(min(d), 5) if d else None,
                   "lower_by_5meV": sum(v < -0.005 for v in d),
                   "median_steps": statistics.median(x.steps for *_, x in picked) if picked else None,
                   "spacegroups_after": sorted(set(after)),
                   # the hull is unchanged and the composition the same: E_hull moves by dE
                   "on_hull_after": sum(r["e_hull_eV_per_atom"] + v <= 0
                                        for (r, *_), v in zip(picked, d)),
                   "lowest_e_hull_after": round(min(r["e_hull_eV_per_atom"] + v for (r, *_), v
                                                    in zip(picked, d)), 5) if d else None,
                   "candidates": [{"name": r["name"], "formula": r["formula"],
                                   "spacegroup": [b, n, a], "e_hull_before":
                                   round(r["e_hull_eV_per_atom"], 5), "dE": round(v, 5),
                                   "steps": x.steps}
                                  for (r, b, n, x), v, a in zip(picked, d, after)]}
        report["by_symprec"][f"{tol:g}"] = figures
        print(f"symprec {tol:g} A: {figures['gained_symmetry']} gain symmetry, "
              f"{figures['kept_symmetry_after_relaxation']} keep it relaxed; dE median "
              f"{figures['dE_median_eV_per_atom']} min {figures['dE_min_eV_per_atom']} eV/atom, "
              f"{figures['lower_by_5meV']} lower by > 5 meV/atom; median "
              f"{figures['median_steps']} steps; lowest E_hull after "
              f"{figures['lowest_e_hull_after']}, {figures['on_hull_after']} on the hull")
    write_results(FLAGS.out, report)
    print(f"wrote {FLAGS.out}")
    return 0


if __name__ == "__main__":
    app.run(main)
