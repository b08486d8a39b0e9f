"""Would relaxation be shorter from the data's volume? Candidates relaxed from a rescaled cell.

    python benchmarks/start_volume.py --run_dir=runs/pdni [--workers=2] [--structures=N] [--out=FILE]

Generated cells are far from the potential's volume (relaxation changes it by a median of
20-30 %). For every converged candidate of a screened run, the generated structure
(``RUN_DIR/candidates/``) is scaled isotropically to the volume its composition has in the
training data (``V = n_H v_H + n_A v_A + n_B v_B``, least squares over the training cells:
:func:`crystalgan_jax.materials.candidates.learn_block_volumes`) and relaxed again with the
screening's settings (CHGNet or ``--potential``, FIRE, fmax 0.1 eV/A, two worker
processes). Prints and writes (``benchmarks/results/start_volume.json``, or ``--out``): FIRE steps (median, generated
start against rescaled), the volume change of each relaxation, how many final energies
agree within 5 meV/atom, the E_hull change (against the screening's own hull) and the
stable count either way. Seconds are printed too, comparable only when nothing else runs.
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
flags.DEFINE_string("run_dir", str(REPO / "runs" / "pdni"), "A screened run folder.")
flags.DEFINE_integer("workers", 2, "Relaxation processes.")
flags.DEFINE_string("potential", "chgnet", "The potential (emt: a fast stand-in for tests).")
flags.DEFINE_integer("structures", 0, "The first N converged candidates only (0: all).")
flags.DEFINE_string("out", str(RESULTS / "start_volume.json"), "JSON file to write.")


def main(argv: list[str]) -> int:
    del argv
    from pymatgen.core import Composition

    from crystalgan_jax.materials import candidates, io
    from crystalgan_jax.screening import relax
    from crystalgan_jax.screening.hull import Hull, energetics
    from crystalgan_jax.screening.runs import run_system
    from crystalgan_jax.screening.workers import Relaxer

    run = Path(FLAGS.run_dir)
    result = json.loads((run / "screening" / "screening.json").read_text())
    diagram = Hull.from_json(result["settings"]["hull"]).phase_diagram()
    threshold = float(result.get("stability_threshold_eV_per_atom", 0.1))
    system = run_system(run)
    a, b = system["element_a"], system["element_b"]
    ah = io.read_domain(system["data_ah"], a).structures
    bh = io.read_domain(system["data_bh"], b).structures
    v_h, v_a, v_b = candidates.learn_block_volumes(ah, bh, a, b)
    rows = [r for r in result["structures"] if r["relaxation"]["converged"]]
    rows = rows[:FLAGS.structures or None]
    if not rows:
        print(f"{run}: no converged candidate to relax again")
        write_results(FLAGS.out, {"run_dir": str(run), "candidates": 0})
        return 0
    jobs, starts = [], []
    for r in rows:
        s = io.read_structure(run / "candidates" / r["name"])
        c = s.composition
        target = c["H"] * v_h + c[a] * v_a + c[b] * v_b
        starts.append(s.volume / target - 1.0)
        scaled = s.copy()
        scaled.scale_lattice(target)
        jobs.append((r["name"], scaled, True))
    print(f"{len(rows)} converged candidates; volumes per atom fitted on the training cells: "
          f"H {v_h}, {a} {v_a}, {b} {v_b} A^3", flush=True)
    with Relaxer(FLAGS.potential, fmax=relax.DEFAULT_FMAX, max_steps=relax.DEFAULT_MAX_STEPS,
                 workers=FLAGS.workers) as relaxer:
        out = relaxer.relax(jobs, tag="rescaled")
    pairs = [(r, j[1], x) for r, j, x in zip(rows, jobs, out) if x.converged]
    d_e = [energetics(diagram, Composition(r["formula"]), x.energy_per_atom)[1]
           - r["e_hull_eV_per_atom"] for r, _, x in pairs]
    med = statistics.median
    report = {
        "run_dir": str(run), "candidates": len(rows), "converged_rescaled": len(pairs),
        "block_volumes_A3": [v_h, v_a, v_b],
        "median_start_volume_over_fitted_minus_1": round(med(starts), 3),
        "median_steps_generated": med(r["relaxation"]["steps"] for r, _, _ in pairs),
        "median_steps_rescaled": med(x.steps for *_, x in pairs),
        "median_abs_volume_change_generated": round(med(
            abs(r["displacement"]["volume_change"]) for r, _, _ in pairs), 3),
        "median_abs_volume_change_rescaled": round(med(
            abs(x.final.volume / s.volume - 1) for _, s, x in pairs), 3),
        "seconds_generated": round(sum(r["relaxation"]["seconds"] for r, _, _ in pairs), 1),
        "seconds_rescaled": round(sum(x.seconds for *_, x in pairs), 1),
        "within_5meV": sum(abs(v) <= 0.005 for v in d_e),
        "e_hull_change_median": round(med(d_e), 4), "e_hull_change_min": round(min(d_e), 4),
        "e_hull_change_max": round(max(d_e), 4),
        "stable_generated": sum(r["e_hull_eV_per_atom"] <= threshold for r, _, _ in pairs),
        "stable_rescaled": sum(r["e_hull_eV_per_atom"] + v <= threshold
                               for (r, _, _), v in zip(pairs, d_e))}
    for key, value in report.items():
        print(f"{key}: {value}")
    write_results(FLAGS.out, report)
    print(f"wrote {FLAGS.out}")
    return 0


if __name__ == "__main__":
    app.run(main)
