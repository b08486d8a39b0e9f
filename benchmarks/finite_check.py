"""What the per-chunk divergence check costs next to the chunk it guards.

After every chunk of epochs the chunk's program reduces the new parameters, optimizer
state and metrics with ``train.tree_all_finite``. This times that reduction alone
and one chunk of stage-1 epochs on the paper's network size (5 x 100 MLPs, batch 35)
with the embedded Pd-H / Ni-H data, in the same process, and prints the medians and
their ratio; it writes them to a JSON file.

    python benchmarks/finite_check.py [--chunk 10] [--repeats 5] [--out FILE]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # common.py, run as a module too
from common import median_time, write_results  # noqa: E402

from crystalgan_jax.core import encoding
from crystalgan_jax.materials import io
from crystalgan_jax import train

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "benchmarks" / "results" / "finite_check.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunk", type=int, default=10, help="epochs per timed chunk")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    ah, bh = io.read_folder(REPO / "data" / "PdH", "Pd"), io.read_folder(REPO / "data" / "NiH", "Ni")
    layout = encoding.Layout.fit("Pd", "Ni", ah.structures + bh.structures)
    enc = lambda d: jax.tree_util.tree_map(  # noqa: E731
        jnp.asarray, encoding.encode_batch(d.structures, layout, dtype=np.float32))
    x, y = enc(ah), enc(bh)
    cfg = train.TrainConfig(chunk_epochs=args.chunk)
    lattices = np.concatenate([np.asarray(x.lattice), np.asarray(y.lattice)])
    nets = train.Networks.build(layout.rows, train.length_scale(lattices), cfg)
    state = train.init_state(jax.random.PRNGKey(0), nets, cfg)
    data = train.stage_data("stage1", state, nets, x, y)
    runner = train.make_chunk_runner(train.STAGES["stage1"], nets, cfg,
                                        train.penalty_shifts(lattices, cfg),
                                        [d.lattice.shape[0] for d in data])
    active = jnp.ones(args.chunk, bool)
    new_state, metrics = jax.block_until_ready(runner(state, data, active))  # compile
    tree = (new_state.params, new_state.opt_state, metrics)
    jax.block_until_ready(train.tree_all_finite(tree))  # compile
    chunk_s = median_time(lambda: runner(state, data, active), args.repeats)
    check_s = median_time(lambda: train.tree_all_finite(tree), 20 * args.repeats)
    numbers = sum(int(np.size(leaf)) for leaf in jax.tree_util.tree_leaves(tree))
    result = {"device": str(jax.devices()[0]), "chunk_epochs": args.chunk,
              "checked_numbers": numbers, "chunk_median_s": chunk_s,
              "check_median_s": check_s, "check_over_chunk": check_s / chunk_s}
    print(f"{numbers} numbers checked: check {check_s * 1e3:.3f} ms, chunk of {args.chunk} "
          f"epochs {chunk_s * 1e3:.1f} ms (medians), ratio {check_s / chunk_s:.2e}")
    write_results(args.out, result)


if __name__ == "__main__":
    main()
