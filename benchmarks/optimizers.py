"""FIRE against BFGS and LBFGS on the FrechetCellFilter with CHGNet: steps, seconds, energies.

    python benchmarks/optimizers.py [--structures=5] [--max_steps=300]
    python benchmarks/optimizers.py --sets=hull,candidates --structures=16 \
        --hull=~/.cache/crystalgan_jax/hulls/KEY.json --run_dir=runs/pdni

The sets (``--sets``):

- ``perturbed``: the first Pd-H prototypes of data/PdH with at least two Pd atoms, one Pd
  made Ni, cell strained 3 % and every atom moved by up to 0.15 A (seeded);
- ``hull``: phases of a relaxed hull (``--hull``, a cache file of
  :mod:`crystalgan_jax.screening.system_hull`), ``--structures`` of its training binaries
  and as many of its substitution structures, spread evenly, each from its initial
  structure: what the hull relaxes;
- ``candidates``: ``--structures`` of a run's pooled candidates (``RUN/candidates/*.vasp``,
  spread evenly): what the screening relaxes.

Each structure is relaxed from the same start by every optimizer
(:func:`crystalgan_jax.screening.relax.relax`, fmax 0.1 eV/A, cell and positions); the
summary gives, per set and optimizer, the converged count, median steps, total seconds,
the time ratio against FIRE measured in the same run, and the final energy against
FIRE's (eV/atom: median, lowest, highest, and how many within 5 meV/atom). Prints and
writes ``benchmarks/results/optimizers.json``.
"""

from __future__ import annotations

import json
import os
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
flags.DEFINE_list("sets", ["perturbed"], "Of perturbed, hull, candidates.")
flags.DEFINE_integer("structures", 5, "Structures per set (hull: of each kind).")
flags.DEFINE_string("hull", None, "A relaxed hull's cache file (for --sets=hull).")
flags.DEFINE_string("run_dir", None, "A run folder with candidates/ (for --sets=candidates).")
flags.DEFINE_list("optimizers", list(screening.OPTIMIZERS), "Optimizers, FIRE first.")
flags.DEFINE_integer("max_steps", 300, "Steps at most per relaxation.")
flags.DEFINE_float("fmax", screening.DEFAULT_FMAX, "Convergence (eV/A).")
flags.DEFINE_integer("seed", 0, "Seed of the perturbations.")
flags.DEFINE_string("out", str(RESULTS / "optimizers.json"), "JSON output.")
TOLERANCE = 0.005  # eV/atom: "the same energy"


def perturbed(n: int, seed: int):
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


def spread(items: list, n: int) -> list:
    """``n`` items spread evenly over ``items`` (all of them where there are fewer)."""
    if len(items) <= n:
        return list(items)
    return [items[round(k * (len(items) - 1) / max(n - 1, 1))] for k in range(n)]


def hull_phases(path: str, n: int):
    from pymatgen.core import Structure

    data = json.loads(Path(os.path.expanduser(path)).read_text())
    out = []
    for kind in ("training", "substitution"):
        phases = [p for p in data["phases"] if p["kind"] == kind]
        out += [(f"{kind}: {p['name']}", Structure.from_dict(p["initial"]))
                for p in spread(phases, n)]
    return out


def run_candidates(run_dir: str, n: int):
    files = sorted((Path(run_dir) / "candidates").glob("*.vasp"))
    return [(f.name, io.read_structure(f)) for f in spread(files, n)]


def summarise(rows: list[dict], optimizers: list[str]) -> dict:
    base = {r["structure"]: r for r in rows if r["optimizer"] == optimizers[0]}
    out = {}
    for opt in optimizers:
        mine = [r for r in rows if r["optimizer"] == opt]
        de = [r["energy_per_atom_eV"] - base[r["structure"]]["energy_per_atom_eV"]
              for r in mine if r["energy_per_atom_eV"] is not None
              and base[r["structure"]]["energy_per_atom_eV"] is not None]
        total = sum(r["seconds"] for r in mine)
        out[opt] = {"structures": len(mine),
                    "converged": sum(r["status"] == "converged" for r in mine),
                    "median_steps": statistics.median(r["steps"] for r in mine),
                    "total_seconds": round(total, 1),
                    f"seconds_over_{optimizers[0]}": round(
                        total / sum(base[r["structure"]]["seconds"] for r in mine), 3),
                    f"dE_vs_{optimizers[0]}_eV_per_atom": {
                        "median": round(statistics.median(de), 4), "min": round(min(de), 4),
                        "max": round(max(de), 4),
                        "within_5meV": sum(abs(x) <= TOLERANCE for x in de)}}
    return out


def main(argv):
    optimizers = list(FLAGS.optimizers)
    for opt in optimizers:
        if opt not in screening.OPTIMIZERS:
            raise app.UsageError(f"--optimizers: {opt} is not one of "
                                 f"{', '.join(screening.OPTIMIZERS)}")
    loaders = {"perturbed": lambda: perturbed(FLAGS.structures, FLAGS.seed),
               "hull": lambda: hull_phases(FLAGS.hull, FLAGS.structures),
               "candidates": lambda: run_candidates(FLAGS.run_dir, FLAGS.structures)}
    for name in FLAGS.sets:
        if name not in loaders:
            raise app.UsageError(f"--sets: {name} is not one of {', '.join(loaders)}")
    if "hull" in FLAGS.sets and not FLAGS.hull:
        raise app.UsageError("--sets=hull needs --hull=a cached hull's JSON file")
    if "candidates" in FLAGS.sets and not FLAGS.run_dir:
        raise app.UsageError("--sets=candidates needs --run_dir=a run folder")
    calculator = screening.load_calculator(threads=1)
    rows, summary = [], {}
    for set_name in FLAGS.sets:
        structures = loaders[set_name]()
        mine = []
        for name, s in structures:
            for opt in optimizers:
                r = screening.relax(s, calculator, fmax=FLAGS.fmax, max_steps=FLAGS.max_steps,
                                    optimizer=opt)
                mine.append({"set": set_name, "structure": name, "atoms": len(s),
                             "optimizer": opt, "status": r.status, "steps": r.steps,
                             "seconds": round(r.seconds, 2),
                             "energy_per_atom_eV": r.energy_per_atom})
                print(json.dumps(mine[-1]), flush=True)
        rows += mine
        summary[set_name] = summarise(mine, optimizers)
    out = {"fmax": FLAGS.fmax, "max_steps": FLAGS.max_steps, "sets": list(FLAGS.sets),
           "hull": FLAGS.hull, "run_dir": FLAGS.run_dir, "rows": rows, "summary": summary}
    print(json.dumps(summary, indent=1))
    write_results(FLAGS.out, out)
    print(f"wrote {FLAGS.out}")


if __name__ == "__main__":
    app.run(main)
