"""Where CHGNet screening time goes on the CPU: batching, and BLAS threads.

    python benchmarks/screening.py [--structures=16] [--repeats=5] [--out=FILE]

Prints and writes ``benchmarks/results/screening.json`` (or ``--out``):

- CHGNet energy+forces+stress (``predict_structure``) on the first N reference Pd-H
  structures, one by one against batches of 4 and of N (median of repeats);
- one FIRE relaxation (10 steps, cell and positions) with the process's BLAS pools at
  one thread against at as many threads as there are cores (threadpoolctl), and the part
  of each spent inside CHGNet.

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
    write_results(FLAGS.out, out)
    print(f"wrote {FLAGS.out}")


if __name__ == "__main__":
    app.run(main)
