"""Whether CHGNet evaluates several structures faster together than one at a time (CPU).

    python benchmarks/chgnet_batch.py --structures_dir=runs/pdni/candidates [--structures=32] [--batch_sizes=1,8,16,32]

Takes the first ``--structures`` structure files of a folder (in name order; a run's
pooled candidates are what the screening relaxes), builds CHGNet's graphs once, and times energy, forces and stress
(``predict_graph(task="efs")``, one backward pass as the screening runs it) of the first
``b`` graphs at each batch size ``b``, one thread: the median over ``--repeats`` of the
seconds per structure, and the ratio against one at a time measured in the same run.
Prints and writes ``benchmarks/results/chgnet_batch.json``. A relaxation's step is one such
evaluation, so this bounds what relaxing candidates in lockstep batches could gain.
"""

from __future__ import annotations

import contextlib
import io as stdio
import sys
from pathlib import Path

from absl import app, flags

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))  # common.py

from common import RESULTS, median_time, write_results  # noqa: E402
from crystalgan_jax.materials import io  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("structures_dir", None, "A folder of structure files (e.g. RUN/candidates).")
flags.DEFINE_integer("structures", 32, "Candidates to time (the largest batch).")
flags.DEFINE_list("batch_sizes", ["1", "8", "16", "32"], "Batch sizes to time.")
flags.DEFINE_integer("repeats", 3, "Timed repeats per batch size (median).")
flags.DEFINE_string("out", str(RESULTS / "chgnet_batch.json"), "JSON output.")
flags.mark_flag_as_required("structures_dir")


def main(argv: list[str]) -> int:
    del argv
    from crystalgan_jax.screening import potentials, relax

    potentials.pin_threads(1)
    from chgnet.model import CHGNet

    structures = io.read_structure_files(FLAGS.structures_dir, lambda s, p: None)[0]
    structures = structures[:FLAGS.structures]
    with contextlib.redirect_stdout(stdio.StringIO()):
        model = CHGNet.load(verbose=False, use_device="cpu")
    relax.one_backward_pass(model)
    graphs = [model.graph_converter(s) for s in structures]
    model.predict_graph(graphs[:2], task="efs", batch_size=2)  # warm-up
    n = len(graphs)

    def one_at_a_time():
        for g in graphs:
            model.predict_graph(g, task="efs")

    single = median_time(one_at_a_time, FLAGS.repeats) / n
    rows = {}
    for size in map(int, FLAGS.batch_sizes):
        size = min(size, n)
        batches = [graphs[i:i + size] for i in range(0, n, size)]

        def batched():
            for b in batches:
                model.predict_graph(b, task="efs", batch_size=len(b))

        per = median_time(batched, FLAGS.repeats) / n
        rows[size] = {"s_per_structure": round(per, 5), "speedup_vs_one": round(single / per, 3)}
        print(f"batch {size:3d}: {1000 * per:6.1f} ms a structure, {single / per:.2f}x one at a time")
    atoms = [len(s) for s in structures]
    write_results(FLAGS.out, {"structures_dir": FLAGS.structures_dir, "structures": n,
                              "atoms_min_max": [min(atoms), max(atoms)], "threads": 1,
                              "one_at_a_time_s_per_structure": round(single, 5),
                              "batches": rows})
    print(f"one at a time: {1000 * single:.1f} ms a structure ({n} structures, "
          f"{min(atoms)}-{max(atoms)} atoms); {FLAGS.out}")
    return 0


if __name__ == "__main__":
    app.run(main)
