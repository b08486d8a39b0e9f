"""Would a cheap energy choose which candidates to relax? Rank correlation with relaxed E_hull.

    python benchmarks/preselection.py --run_dir=runs/pdni [--steps=0,5,10,20] [--out=FILE]

Reads a screened run's ``screening/screening.json``: every relaxation's energy trajectory
is journaled, so step 0 is the potential's single-point energy of the generated structure
as it was, and step k the energy after k FIRE steps. For each k in ``--steps`` it turns
that energy into an estimated E_hull against the screening's own hull and prints and
writes (``benchmarks/results/preselection.json``, or ``--out``):

- the Spearman rank correlation of the estimate with the relaxed E_hull (converged
  candidates);
- if only the best half by the estimate were relaxed: how many of the stable candidates
  (relaxed E_hull <= the screening's threshold) and of the ten lowest it would keep, and
  the share of the relaxation steps it would spend.

No potential is called: the figures come from the trajectories the screening recorded.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from absl import app, flags

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))  # common.py

from common import RESULTS, define_screened_run_flags, screening_folder, write_results  # noqa: E402,E501

FLAGS = flags.FLAGS
define_screened_run_flags()
flags.DEFINE_list("steps", ["0", "5", "10", "20"], "Trajectory steps to estimate from.")
flags.DEFINE_string("out", str(RESULTS / "preselection.json"), "JSON file to write.")
flags.DEFINE_bool("include_unconverged", False, "Also candidates that ran out of steps.")


def main(argv: list[str]) -> int:
    del argv
    import numpy as np
    from pymatgen.core import Composition
    from scipy.stats import spearmanr

    from crystalgan_jax.screening.hull import Hull, energetics

    path = screening_folder(FLAGS.run_dir, FLAGS.side) / "screening.json"
    if not path.is_file():
        print(f"{path}: no screening here; run experiments/screen.py --run_dir={FLAGS.run_dir}")
        return 2
    result = json.loads(path.read_text())
    diagram = Hull.from_json(result["settings"]["hull"]).phase_diagram()
    threshold = float(result.get("stability_threshold_eV_per_atom", 0.1))
    usable = ("converged", "not_converged") if FLAGS.include_unconverged else ("converged",)
    rows = [r for r in result["structures"] if r["relaxation"]["status"] in usable
            and r["e_hull_eV_per_atom"] is not None]
    if len(rows) < 2:
        print(f"{len(rows)} usable candidates in {path}: nothing to rank")
        write_results(FLAGS.out, {"run_dir": str(FLAGS.run_dir), "candidates": len(rows),
                                  "estimates": {}})
        return 0
    relaxed = np.array([r["e_hull_eV_per_atom"] for r in rows])
    steps = np.array([r["relaxation"]["steps"] for r in rows])
    stable = relaxed <= threshold
    lowest = np.argsort(relaxed)[:10]
    report = {"run_dir": str(FLAGS.run_dir), "side": FLAGS.side, "candidates": len(rows),
              "stable": int(stable.sum()), "stability_threshold_eV_per_atom": threshold,
              "median_relaxation_steps": float(np.median(steps)), "estimates": {}}
    print(f"{len(rows)} converged candidates, {int(stable.sum())} stable, median "
          f"{np.median(steps):.0f} FIRE steps")
    for k in (int(s) for s in FLAGS.steps):
        est = []
        for r in rows:
            traj = r["relaxation"]["energy_trajectory_eV"]
            e = traj[min(k, len(traj) - 1)]
            est.append(np.nan if e is None else
                       energetics(diagram, Composition(r["formula"]), e / r["n_atoms"])[1])
        est = np.array(est)
        ok = np.isfinite(est)
        rho = float(spearmanr(est[ok], relaxed[ok]).statistic)
        half = np.argsort(np.where(ok, est, np.inf))[:len(rows) // 2]
        chosen = np.zeros(len(rows), bool)
        chosen[half] = True
        spent = ((np.minimum(steps, k).sum() + np.maximum(steps - k, 0)[chosen].sum())
                 / max(int(steps.sum()), 1))
        figures = {"spearman": round(rho, 3),
                   "best_half_keeps_stable": int((chosen & stable).sum()),
                   "best_half_keeps_lowest10": int(chosen[lowest].sum()),
                   "best_half_step_share": round(float(spent), 3)}
        report["estimates"][f"step_{k}"] = figures
        print(f"after {k:3d} steps: Spearman {rho:+.3f}; relaxing the best half keeps "
              f"{figures['best_half_keeps_stable']}/{int(stable.sum())} stable and "
              f"{figures['best_half_keeps_lowest10']}/10 of the lowest, "
              f"{100 * spent:.0f}% of the steps")
    write_results(FLAGS.out, report)
    print(f"wrote {FLAGS.out}")
    return 0


if __name__ == "__main__":
    app.run(main)
