"""Benchmark: CrystalGAN's geometric penalty in JAX against pymatgen neighbour search.

What is measured (CPU, whatever JAX finds on this machine):

* JAX: the jitted value AND gradient, with respect to the lattice and all position
  blocks, of ``mean over the batch of sum(geometry.geometric_penalty(...))`` (the
  penalty vmapped over the batch). The batch is the 35 PdH + 35 NiH reference
  structures (``../shared/data/crystalgan-reference``), encoded as one float32 batch.
  Four configurations are timed in the same run:

  - ``per_species/hinge``: ``Layout.fit`` (each species block padded to its own
    maximum: 18 H, 6 Pd, 6 Ni rows) with the default hinge form;
  - ``single_n/hinge``: the paper's single-N view, every block padded to N = 18
    (``Layout('Pd', 'Ni', 18, 18, 18)``), to show what per-species padding saves;
  - ``per_species/paper`` and ``single_n/paper``: the same with ``form="paper"``.

  The lattice shifts come from ``cells.image_range(batch.lattice)`` (nearest-neighbour
  range, maximum over the batch) and ``cells.lattice_shifts``. Compilation
  (``jit(...).lower(...).compile()``) is timed on its own and excluded; after warm-up
  calls each repeat is one call of the compiled function followed by
  ``jax.block_until_ready``. The median over ``--repeats`` is reported, except that a
  configuration whose calls would take more than ``BUDGET_S`` in all gets fewer repeats
  (at least ``MIN_REPEATS``; the JSON records how many).

* pymatgen: ``Structure.get_all_neighbors(r)`` called on each of the same 70 structures;
  one repeat is the total over all 70. ``r = 3.0`` A (the spec's d2) and ``r`` = the largest
  constrained nearest-neighbour distance in the data (metal-metal, H-H) + 0.1 A, the
  smallest radius at which pymatgen finds every constrained atom's nearest neighbour.
  One untimed warm-up pass; the same repeat budget applies.

Timings are wall-clock and sensitive to other load on the machine: the JSON records the
load average before and after the run.

The last line printed is ``speedup_vs_pymatgen: X`` with X = pymatgen median at r = 3.0
divided by the JAX ``per_species/hinge`` value+grad median. All figures (medians, raw
times, compile times, versions, device, shapes, image counts) go to ``--out`` (JSON).

Run from the repository root:  ``python benchmarks/geometry.py [--repeats 20]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import pymatgen.core
from pymatgen.core import Structure

sys.path.insert(0, str(Path(__file__).resolve().parent))  # common.py, run as a module too
from common import call_times, write_results  # noqa: E402

from crystalgan_jax.core import cells, encoding, geometry  # noqa: E402
from crystalgan_jax.materials import io  # noqa: E402
from crystalgan_jax.train import TrainConfig  # noqa: E402

PAPER = TrainConfig()  # the paper's d1, d2 (their one definition)

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "crystalgan-reference"
DEFAULT_OUT = REPO / "benchmarks" / "results" / "geometry.json"
SPEC_D2 = 3.0  # Angstrom, the spec's longest allowed nearest-neighbour distance
NN_MARGIN = 0.1  # Angstrom added to the largest nearest-neighbour distance
PAPER_N = 18  # the paper's common padding of every block
WARMUP_CALLS = 2
# Seconds of timed calls per configuration: a slow configuration gets fewer repeats than
# asked (never fewer than MIN_REPEATS), keeping the whole run near a minute on 2 cores.
BUDGET_S = 8.0
MIN_REPEATS = 5


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=20,
                        help="timed calls per configuration (median reported; default 20)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help=f"JSON output (default {DEFAULT_OUT.relative_to(REPO)})")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA,
                        help="folder holding PdH_dataset.mat and NiH_dataset.mat "
                             "(default ../shared/data/crystalgan-reference beside the repo)")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    return args


def load_structures(data: Path) -> list[Structure]:
    """The 35 PdH + 35 NiH reference structures; exits with a message if data are absent."""
    files = (data / "PdH_dataset.mat", data / "NiH_dataset.mat")
    if not data.is_dir() or not all(f.is_file() for f in files):
        sys.exit(f"reference data not found: {data} must hold PdH_dataset.mat and "
                 f"NiH_dataset.mat (expected ../shared/data/crystalgan-reference beside "
                 f"the repo; see --data)")
    pdh = io.read_domain(files[0], "Pd", mat_block=2)
    nih = io.read_domain(files[1], "Ni", mat_block=3)
    return list(pdh.structures) + list(nih.structures)


def penalty_value_and_grad(shifts: np.ndarray, form: str) -> Callable:
    """Jitted ``(lattice, positions, masks) -> (loss, (d lattice, d positions))``."""
    shifts = jnp.asarray(shifts)

    def loss(lattice, positions, masks):
        crystal = encoding.Crystal(lattice, positions, masks)

        def one(c: encoding.Crystal) -> jax.Array:
            return sum(geometry.geometric_penalty(c, shifts, PAPER.d1, PAPER.d2, form=form))

        return jnp.mean(jax.vmap(one)(crystal))

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))


def budgeted_repeats(asked: int, one_call_s: float) -> int:
    """``asked``, or fewer if that many calls would exceed ``BUDGET_S``."""
    fit = int(BUDGET_S / max(one_call_s, 1e-9))
    return min(asked, max(MIN_REPEATS, fit))


def time_calls(fn: Callable[[], object], repeats: int) -> list[float]:
    """Wall times (s) of ``repeats`` calls of ``fn``, each result blocked on."""
    return call_times(fn, repeats)


def bench_jax(batch: encoding.Crystal, shifts: np.ndarray, form: str,
              repeats: int) -> dict:
    """Compile time, warm-up, then timed value+grad calls for one batch and form."""
    args = (jnp.asarray(batch.lattice), tuple(map(jnp.asarray, batch.positions)),
            tuple(map(jnp.asarray, batch.masks)))
    jax.block_until_ready(args)
    start = time.perf_counter()
    compiled = penalty_value_and_grad(shifts, form).lower(*args).compile()
    compile_s = time.perf_counter() - start
    value, _ = compiled(*args)
    warmup = time_calls(lambda: compiled(*args), WARMUP_CALLS)
    taken = budgeted_repeats(repeats, min(warmup))
    times = time_calls(lambda: compiled(*args), taken)
    return {"form": form, "value": float(value), "compile_s": compile_s,
            "repeats": taken, "repeats_asked": repeats, "reduced_repeats": taken < repeats,
            "warmup_ms": [1e3 * t for t in warmup], "median_ms": 1e3 * statistics.median(times),
            "times_ms": [1e3 * t for t in times],
            "rows": {"H": batch.positions[0].shape[-2], "A": batch.positions[1].shape[-2],
                     "B": batch.positions[2].shape[-2]}}


def largest_constrained_nn(batch: encoding.Crystal, shifts: np.ndarray) -> float:
    """Largest nearest-neighbour distance (A) of any constrained atom, float64."""
    with jax.enable_x64(True):
        crystal = jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float64), batch)
        s, valid = jax.vmap(lambda c: geometry.constrained_nearest(
            c, jnp.asarray(shifts, jnp.float64)))(crystal)
        return float(np.max(np.asarray(s)[np.asarray(valid)]))


def bench_pymatgen(structures: Sequence[Structure], r: float, repeats: int) -> dict:
    """Timed passes of ``get_all_neighbors(r)`` over all structures (one warm-up pass)."""
    def one_pass() -> int:
        return sum(len(n) for s in structures for n in s.get_all_neighbors(r))

    start = time.perf_counter()
    n_neighbours = one_pass()
    first = time.perf_counter() - start
    times = []
    for _ in range(budgeted_repeats(repeats, first)):
        start = time.perf_counter()
        one_pass()
        times.append(time.perf_counter() - start)
    return {"r_angstrom": r, "repeats": len(times), "repeats_asked": repeats,
            "reduced_repeats": len(times) < repeats, "neighbours_found": n_neighbours,
            "warmup_ms": 1e3 * first, "median_ms": 1e3 * statistics.median(times),
            "times_ms": [1e3 * t for t in times]}


def environment() -> dict:
    """The versions this benchmark adds to common.py's environment."""
    return {"pymatgen": getattr(pymatgen.core, "__version__", "unknown")}


def print_table(jax_results: dict, pmg_results: dict, speedup: float) -> None:
    """Readable table of medians (ms); the speedup line last."""
    print(f"{'measurement':<44}{'median ms':>11}{'compile s':>11}{'repeats':>9}")
    for name, res in jax_results.items():
        print(f"{'jax value+grad ' + name:<44}{res['median_ms']:>11.2f}"
              f"{res['compile_s']:>11.2f}{res['repeats']:>9d}")
    for name, res in pmg_results.items():
        label = f"pymatgen get_all_neighbors r={res['r_angstrom']:.2f} ({name})"
        print(f"{label:<44}{res['median_ms']:>11.2f}{'-':>11}{res['repeats']:>9d}")
    print(f"speedup_vs_pymatgen: {speedup:.2f}")


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    warnings.simplefilter("ignore")
    env = environment()
    structures = load_structures(args.data)
    layouts = {"per_species": encoding.Layout.fit("Pd", "Ni", structures),
               "single_n": encoding.Layout("Pd", "Ni", PAPER_N, PAPER_N, PAPER_N)}
    batches = {k: encoding.encode_batch(structures, v, dtype=np.float32)
               for k, v in layouts.items()}
    image_n = cells.image_range(batches["per_species"].lattice)
    shifts = cells.lattice_shifts(image_n)

    jax_results = {f"{k}/{form}": bench_jax(batches[k], shifts, form, args.repeats)
                   for form in ("hinge", "paper") for k in layouts}
    r_nn = round(largest_constrained_nn(batches["per_species"], shifts) + NN_MARGIN, 4)
    pmg_results = {"d2": bench_pymatgen(structures, SPEC_D2, args.repeats),
                   "all_nn": bench_pymatgen(structures, r_nn, args.repeats)}
    speedup = pmg_results["d2"]["median_ms"] / jax_results["per_species/hinge"]["median_ms"]

    report = {
        "measured": "jitted value+grad (w.r.t. lattice and positions) of the batch mean of "
                    "sum(geometric_penalty); pymatgen Structure.get_all_neighbors(r) over all "
                    "structures; medians after warm-up, compile excluded",
        "environment": env,
        "load_average_after": list(os.getloadavg()),
        "budget_s_per_configuration": BUDGET_S, "min_repeats": MIN_REPEATS,
        "structures": {"PdH": 35, "NiH": 35, "total": len(structures),
                       "atoms": [len(s) for s in structures]},
        "dtype": "float32",
        "shapes": {k: {"lattice": list(b.lattice.shape),
                       "positions": [list(p.shape) for p in b.positions],
                       "layout": {"n_h": layouts[k].n_h, "n_a": layouts[k].n_a,
                                  "n_b": layouts[k].n_b}} for k, b in batches.items()},
        "images": {"per_axis": list(image_n), "shifts": int(len(shifts))},
        "warmup_calls": WARMUP_CALLS,
        "jax": jax_results,
        "pymatgen": pmg_results,
        "largest_constrained_nn_plus_margin_angstrom": r_nn,
        "speedup_vs_pymatgen": round(speedup, 2),
        "speedup_definition": "pymatgen median at r=3.0 / jax per_species/hinge median",
    }
    write_results(args.out, report)
    print(f"{len(structures)} structures, float32, {len(shifts)} lattice images "
          f"{tuple(image_n)}, device {jax.devices()[0]}, {os.cpu_count()} CPUs; "
          f"JSON: {args.out}")
    print_table(jax_results, pmg_results, speedup)


if __name__ == "__main__":
    main()
