"""FIRE against BFGS and LBFGS on the FrechetCellFilter with CHGNet: steps and seconds.

    python benchmarks/optimizers.py [--structures=5] [--max_steps=300]

Generated-like structures: the first Pd-H prototypes of data/PdH with at least two Pd
atoms, one Pd made Ni, cell strained 3 % and every atom moved by up to 0.15 A (seeded),
so each needs a real relaxation. Each is relaxed from the same start by every optimizer
(:func:`crystalgan_jax.screening.relax.relax`, fmax 0.1 eV/A, cell and positions).
Prints and writes ``benchmarks/results/optimizers.json``.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

import numpy as np
from absl import app, flags

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))  # common.py

from common import RESULTS, write_results  # noqa: E402
from crystalgan_jax.materials import io  # noqa: E402
from crystalgan_jax.screening import relax as screening  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_integer("structures", 5, "Structures to relax.")
flags.DEFINE_integer("max_steps", 300, "Steps at most per relaxation.")
flags.DEFINE_float("fmax", screening.DEFAULT_FMAX, "Convergence (eV/A).")
flags.DEFINE_integer("seed", 0, "Seed of the perturbations.")
flags.DEFINE_string("out", str(RESULTS / "optimizers.json"), "JSON output.")


def generated_like(n: int, seed: int):
    rng = np.random.default_rng(seed)
    out = []
    for path in sorted((REPO / "data" / "PdH").glob("*.vasp")):
        s = io.read_structure(path)
        pd = [i for i, site in enumerate(s) if site.specie.symbol == "Pd"]
        if len(pd) < 2 or len(s) > 12:
            continue
        s = s.copy()
        s.replace(pd[0], "Ni")
        s.apply_strain(0.03)
        for i, shift in enumerate(rng.uniform(-0.15, 0.15, (len(s), 3))):
            s.translate_sites([i], shift, frac_coords=False)
        out.append((path.name, s))
        if len(out) == n:
            break
    return out


def main(argv):
    calculator = screening.load_calculator(threads=1)
    structures = generated_like(FLAGS.structures, FLAGS.seed)
    rows = []
    for name, s in structures:
        for opt in screening.OPTIMIZERS:
            r = screening.relax(s, calculator, fmax=FLAGS.fmax, max_steps=FLAGS.max_steps,
                                optimizer=opt)
            rows.append({"structure": name, "atoms": len(s), "optimizer": opt,
                         "status": r.status, "steps": r.steps, "seconds": round(r.seconds, 2),
                         "energy_per_atom_eV": r.energy_per_atom})
            print(json.dumps(rows[-1]), flush=True)
    summary = {}
    for opt in screening.OPTIMIZERS:
        mine = [r for r in rows if r["optimizer"] == opt]
        summary[opt] = {"converged": sum(r["status"] == "converged" for r in mine),
                        "median_steps": statistics.median(r["steps"] for r in mine),
                        "mean_seconds": round(statistics.mean(r["seconds"] for r in mine), 2),
                        "total_seconds": round(sum(r["seconds"] for r in mine), 1)}
    out = {"fmax": FLAGS.fmax, "max_steps": FLAGS.max_steps, "rows": rows,
           "summary": summary}
    print(json.dumps(summary, indent=1))
    write_results(FLAGS.out, out)
    print(f"wrote {FLAGS.out}")


if __name__ == "__main__":
    app.run(main)
