"""Where CHGNet screening time goes on the CPU: batching, and BLAS threads.

    python benchmarks/screening.py [--structures=16] [--repeats=5] [--out=FILE]

Prints and writes ``benchmarks/results/screening.json`` (or ``--out``):

- CHGNet energy+forces+stress (``predict_structure``) on the first N reference Pd-H
  structures, one by one against batches of 4 and of N (median of repeats), and one by
  one with CHGNet as shipped (two backward passes) against the screening's calculator
  (one, :func:`crystalgan_jax.screening.relax.one_backward_pass`), with their ratio;
- one FIRE relaxation (10 steps, cell and positions) with the process's BLAS pools at
  one thread against at as many threads as there are cores (threadpoolctl), and the part
  of each spent inside CHGNet.

- candidates per minute (``--candidates=N``, 0 to skip): N generated candidates (a run's
  pooled ``candidates/``, ``--candidates_dir``; default the discovery job's
  ``runs/pdni/candidates``, else N unique strictly good substitution structures of the
  embedded data) relaxed as the screening relaxes them
  (:class:`crystalgan_jax.screening.workers.Relaxer`), for each configuration of
  ``--configs`` (optimizer:workers; ``FIRE:1:shipped`` is the screening before the
  one-backward pass and the workers, the baseline):
  wall time, candidates per minute, median steps and seconds per candidate, and each
  optimizer's converged energies against FIRE's on the same candidates (eV/atom).

Needs the screen extra and ../shared/data/crystalgan-reference beside the repository.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from absl import app, flags

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))  # common.py

from common import RESULTS, median_time, write_results  # noqa: E402
from crystalgan_jax.materials import io  # noqa: E402
from crystalgan_jax.screening import relax as screening  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_integer("structures", 16, "Reference Pd-H structures to predict.")
flags.DEFINE_integer("repeats", 5, "Repeats per timing (median quoted).")
flags.DEFINE_integer("steps", 10, "FIRE steps of the relaxation timing.")
flags.DEFINE_string("out", str(RESULTS / "screening.json"), "JSON file to write.")
flags.DEFINE_integer("candidates", 12, "Candidates relaxed per configuration (0: skip).")
flags.DEFINE_string("candidates_dir", str(REPO / "runs" / "pdni" / "candidates"),
                    "A run's pooled candidates/ (POSCAR files).")
flags.DEFINE_list("configs", ["FIRE:1:shipped", "FIRE:1", "FIRE:2"],
                  "optimizer:workers to compare; optimizer:1:shipped relaxes in this process "
                  "with CHGNet as shipped (two backward passes: the screening before "
                  "one_backward_pass and the worker processes). The first is the baseline.")
flags.DEFINE_integer("max_steps", 500, "Steps at most per candidate relaxation.")


def candidate_set(n: int) -> tuple[str, list]:
    """(what they are, n structures): a run's pooled candidates, else substitution's."""
    folder = Path(FLAGS.candidates_dir)
    files = sorted(folder.glob("*.vasp")) if folder.is_dir() else []
    if files:
        step = max(1, len(files) // n)  # spread over the members and directions
        return str(folder), [io.read_structure(p) for p in files[::step][:n]]
    from crystalgan_jax.materials import substitution
    from crystalgan_jax.screening.runs import substitution_candidates

    ah = io.read_domain(REPO / "data" / "PdH", "Pd")
    bh = io.read_domain(REPO / "data" / "NiH", "Ni")
    named = substitution_candidates(substitution.substitution(
        ah.structures, bh.structures, "Pd", "Ni"), "Pd", "Ni", {"d1": 1.8, "d2": 3.0})
    return "substitution (embedded Pd-Ni)", [s for _, s in named[::max(1, len(named) // n)][:n]]


def throughput(n: int) -> dict:
    """Candidates per minute for each of --configs on the same n candidates."""
    import statistics

    from crystalgan_jax.screening.workers import Relaxer

    what, structures = candidate_set(n)
    jobs = [(f"{k:03d}", s, True) for k, s in enumerate(structures)]
    out = {"candidates_from": what, "n_candidates": len(jobs),
           "atoms_median": statistics.median(len(s) for s in structures), "configs": {}}
    energies = {}
    for config in FLAGS.configs:
        optimizer, workers, *shipped = config.split(":")
        if shipped == ["shipped"]:  # the screening before one_backward_pass and workers
            calculator = screening.load_calculator(threads=1, one_backward=False)
            tic = time.perf_counter()
            rs = [screening.relax(s, calculator, fmax=screening.DEFAULT_FMAX,
                                  max_steps=FLAGS.max_steps, optimizer=optimizer)
                  for _, s, _ in jobs]
            wall = time.perf_counter() - tic
        else:
            with Relaxer("chgnet", fmax=screening.DEFAULT_FMAX, max_steps=FLAGS.max_steps,
                         optimizer=optimizer, workers=int(workers)) as relaxer:
                relaxer.label  # the potential loaded (the workers started) before the clock
                tic = time.perf_counter()
                rs = relaxer.relax(jobs)
                wall = time.perf_counter() - tic
        energies[config] = [r.energy_per_atom if r.converged else None for r in rs]
        out["configs"][config] = {
            "wall_s": round(wall, 2), "candidates_per_minute": round(60 * len(jobs) / wall, 2),
            "median_steps": statistics.median(r.steps for r in rs),
            "median_seconds_per_candidate": round(statistics.median(r.seconds for r in rs), 2),
            "converged": sum(r.converged for r in rs)}
        print(f"{config}: {out['configs'][config]}", flush=True)
    base = FLAGS.configs[0]
    for config in FLAGS.configs[1:]:
        diffs = [b - a for a, b in zip(energies[base], energies[config])
                 if a is not None and b is not None]
        if diffs:
            out["configs"][config].update({
                f"dE_vs_{base}_median_eV_per_atom": round(statistics.median(diffs), 4),
                f"dE_vs_{base}_max_abs_eV_per_atom": round(max(map(abs, diffs)), 4),
                f"within_5meV_of_{base}": sum(abs(d) <= 0.005 for d in diffs)})
        out["configs"][config][f"speedup_vs_{base}"] = round(
            out["configs"][base]["wall_s"] / out["configs"][config]["wall_s"], 2)
    return out


def main(argv):
    from threadpoolctl import threadpool_limits

    data = REPO.parent / "shared" / "data" / "crystalgan-reference" / "PdH_dataset.mat"
    structures = list(io.read_domain(data, "Pd", mat_block=2).structures[:FLAGS.structures])
    calculator = screening.load_calculator(threads=1)
    model = calculator.model
    model.predict_structure(structures, task="efs", batch_size=4)  # warm-up
    n = len(structures)
    out = {"n_structures": n, "atoms": [len(s) for s in structures],
           "load_average": list(os.getloadavg()), "cores": os.cpu_count()}
    out["predict_one_by_one_s"] = median_time(
        lambda: [model.predict_structure(s, task="efs") for s in structures], FLAGS.repeats)
    shipped = screening.load_calculator(threads=1, one_backward=False).model
    shipped.predict_structure(structures, task="efs", batch_size=4)  # warm-up
    out["predict_one_by_one_shipped_chgnet_s"] = median_time(
        lambda: [shipped.predict_structure(s, task="efs") for s in structures], FLAGS.repeats)
    out["one_backward_speedup"] = (out["predict_one_by_one_shipped_chgnet_s"]
                                   / out["predict_one_by_one_s"])
    for b in (4, n):
        out[f"predict_batch{b}_s"] = median_time(
            lambda: model.predict_structure(structures, task="efs", batch_size=b),
            FLAGS.repeats)
    for label, limit in (("blas_1_thread", 1), ("blas_all_threads", os.cpu_count())):
        with threadpool_limits(limits=limit, user_api="blas"):
            calculator.seconds = 0.0
            tic = time.perf_counter()
            r = screening.relax(structures[0], calculator, max_steps=FLAGS.steps, fmax=1e-6)
            out[f"relax_{label}_s"] = time.perf_counter() - tic
            out[f"relax_{label}_chgnet_s"] = calculator.seconds
            out[f"relax_{label}_steps"] = r.steps
    for k, v in out.items():
        print(f"{k}: {v if not isinstance(v, float) else round(v, 3)}")
    if FLAGS.candidates > 0:
        out["throughput"] = throughput(FLAGS.candidates)
    write_results(FLAGS.out, out)
    print(f"wrote {FLAGS.out}")


if __name__ == "__main__":
    app.run(main)
