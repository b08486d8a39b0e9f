"""Benchmark: the paper configuration on the embedded Pd-Ni data, phase by phase.

What is measured (CPU, whatever JAX finds; wall clock, so other load on the machine
shows: the JSON records the load average before and after):

* ``import_s``: a fresh ``python -c "import crystalgan_jax.pipeline.job"`` (what
  ``experiments/train.py`` needs before training), and which heavy modules that import
  pulled in (matplotlib, pymatgen.analysis);
* ``data_load_s``: reading and encoding ``data/PdH`` and ``data/NiH``;
* per stage: ``compile_s`` (``jit(...).lower(...).compile()`` of the chunk runner) and
  the steady rate ``epochs_per_s`` (median over chunks of ``chunk_epochs`` epochs each,
  compile excluded), over ``--epochs`` epochs per stage (default 1000, the paper's);
* ``generate_write_s`` (generation and POSCAR/CIF files) and ``report_s``
  (:func:`crystalgan_jax.materials.report.write_run_report`: evaluation, report.json/md, plots),
  and the size of report.json;
* the matmul FLOPs of one epoch of each stage (every ``dot_general`` in the traced epoch,
  scan bodies times their length) and the achieved GFLOP/s, next to this machine's
  float32 matmul rate measured in the same run (median of jitted 1024 x 1024 products);
* ``paper_config_wall_s``: ``python experiments/train.py --flagfile=experiments/pdni_paper.flags``
  end to end in a subprocess (``--epochs`` passed through), writing to a temporary folder,
  with an empty XLA compilation cache (a first run); ``paper_config_wall_warm_cache_s``:
  the same command again, reusing the programs the first run cached; ``epochs_1_wall_s``
  and ``epochs_1_wall_warm_cache_s``: the same with ``--epochs=1``.

Run from the repository root:  ``python benchmarks/train.py [--epochs 1000]``. The last
line printed is ``paper_config_wall_s: X``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))  # common.py, run as a module too
from common import matmul_rate, write_results  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "benchmarks" / "results" / "train.json"
FLAGFILE = REPO / "experiments" / "pdni_paper.flags"
MATMUL_N = 1024
MATMUL_REPEATS = 20


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=1000, help="epochs per stage (paper: 1000)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON output")
    parser.add_argument("--depth", type=int, default=5,
                        help="hidden layers per network in the in-process phases (default the "
                             "paper's 5; fewer for a quick check; the end-to-end runs keep "
                             "the flagfile's)")
    parser.add_argument("--matmul_repeats", type=int, default=MATMUL_REPEATS,
                        help="repeats of the matmul-rate measurement (median quoted)")
    parser.add_argument("--skip_wall", action="store_true",
                        help="do not run experiments/train.py end to end")
    args = parser.parse_args(argv)
    if args.epochs < 1:
        parser.error("--epochs must be at least 1")
    return args


def timed_subprocess(cmd: list[str], cwd: Path, env: dict | None = None) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return wall, done.stdout


def measure_import() -> dict:
    code = ("import time, sys, json; t = time.perf_counter(); import crystalgan_jax.pipeline.job; "
            "dt = time.perf_counter() - t; "
            "print(json.dumps({'import_s': dt, 'heavy_modules_loaded': sorted(m for m in "
            "('matplotlib', 'pymatgen.analysis.structure_matcher', 'pymatgen.symmetry.analyzer',"
            " 'ase', 'flax', 'optax', 'orbax.checkpoint') if m in sys.modules)}))")
    _, out = timed_subprocess([sys.executable, "-c", code], REPO)
    return json.loads(out.strip().splitlines()[-1])




def jaxpr_matmul_flops(jaxpr) -> float:
    """2 * M * N * K summed over every dot_general, scan bodies times their length."""
    import numpy as np

    total = 0.0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "dot_general":
            (lc, _), (lb, _) = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval.shape
            out = eqn.outvars[0].aval.shape
            contracted = float(np.prod([lhs[d] for d in lc])) if lc else 1.0
            total += 2.0 * float(np.prod(out)) * contracted
            continue
        subs = []
        for value in eqn.params.values():
            for v in (value if isinstance(value, (tuple, list)) else (value,)):
                if hasattr(v, "jaxpr") and hasattr(v.jaxpr, "eqns"):  # ClosedJaxpr
                    subs.append(v.jaxpr)
                elif hasattr(v, "eqns"):
                    subs.append(v)
        if name == "cond":  # an epoch's branches: the work is the largest one
            total += max((jaxpr_matmul_flops(s) for s in subs), default=0.0)
            continue
        inner = sum(jaxpr_matmul_flops(s) for s in subs)
        total += inner * (eqn.params["length"] if name == "scan" else 1)
    return total


def bench_in_process(epochs: int, work: Path, depth: int = 5) -> dict:
    """Every phase of one run, timed in this process (no checkpoints)."""
    t0 = time.perf_counter()
    import jax
    import jax.numpy as jnp
    import numpy as np

    from crystalgan_jax.core import encoding
    from crystalgan_jax.pipeline import outputs
    from crystalgan_jax.pipeline.prepare import load_domains
    from crystalgan_jax.pipeline.spec import RunSpec
    from crystalgan_jax import train

    result: dict = {"import_in_process_s": time.perf_counter() - t0}
    cfg = train.TrainConfig(epochs=epochs, depth=depth)
    spec = RunSpec(data_ah=str(REPO / "data" / "PdH"), data_bh=str(REPO / "data" / "NiH"),
                          element_a="Pd", element_b="Ni", output_dir=str(work), train=cfg,
                          overwrite=True)
    t = time.perf_counter()
    ah, bh = load_domains(spec)
    layout = encoding.Layout.fit("Pd", "Ni", ah.structures + bh.structures)

    def encode(domain):
        batch = encoding.encode_batch(domain.structures, layout, sources=domain.sources,
                                      dtype=np.float32)
        return jax.tree_util.tree_map(jnp.asarray, batch)

    x, y = encode(ah), encode(bh)
    jax.block_until_ready((x, y))
    result["data_load_s"] = time.perf_counter() - t
    result["layout_rows"] = list(layout.rows)
    result["structures"] = [len(ah), len(bh)]

    lattices = np.concatenate([np.asarray(x.lattice), np.asarray(y.lattice)])
    nets = train.Networks.build(layout.rows, train.length_scale(lattices), cfg)
    state = train.init_state(jax.random.PRNGKey(0), nets, cfg)
    shifts = train.penalty_shifts(lattices, cfg)
    result["penalty_shifts"] = int(shifts.shape[0])
    chunk = max(1, min(cfg.chunk_epochs, spec.checkpoint_every, cfg.epochs))
    stages = {}
    for stage_name in cfg.stages:
        stage = train.STAGES[stage_name]
        data = train.stage_data(stage_name, state, nets, x, y)
        sizes = [d.lattice.shape[0] for d in data]
        epoch_fn = train.make_epoch(stage, nets, cfg, shifts, sizes)
        flops = jaxpr_matmul_flops(jax.make_jaxpr(epoch_fn)(state, data).jaxpr)
        run_chunk = train.make_chunk_runner(stage, nets, cfg, shifts, sizes)
        active = jnp.arange(chunk) < chunk
        t = time.perf_counter()
        compiled = run_chunk.lower(state, data, active).compile()
        compile_s = time.perf_counter() - t
        times, done = [], 0
        while done < cfg.epochs:
            n = min(chunk, cfg.epochs - done)
            t = time.perf_counter()
            out = compiled(state, data, jnp.arange(chunk) < n)
            jax.block_until_ready(out)
            times.append((n, time.perf_counter() - t))
            state = out[0]
            done += n
        rates = [n / dt for n, dt in times]
        total = sum(dt for _, dt in times)
        stages[stage_name] = {
            "compile_s": compile_s, "epochs": cfg.epochs, "chunk_epochs": chunk,
            "train_s": total, "epochs_per_s": statistics.median(rates),
            "chunk_rates": rates, "matmul_flops_per_epoch": flops,
            "achieved_matmul_gflops": flops * statistics.median(rates) / 1e9}
    result["stages"] = stages

    t = time.perf_counter()
    generated = train.generate(state, nets, cfg, x, y, jax.random.fold_in(state.key, 1))
    files = outputs.write_structures(generated, layout, work, lambda msg: None)
    result["generate_write_s"] = time.perf_counter() - t
    t = time.perf_counter()
    from crystalgan_jax.materials import report as report_lib

    report = report_lib.write_run_report(work, files, ah.structures + bh.structures, "Pd", "Ni",
                                         [], d1=cfg.d1, d2=cfg.d2)
    result["report_s"] = time.perf_counter() - t
    result["report_json_bytes"] = (work / "report.json").stat().st_size
    result["counts"] = report["counts"]
    return result


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    load_before = list(os.getloadavg())
    start = time.perf_counter()
    imported = measure_import()
    with tempfile.TemporaryDirectory() as tmp:
        phases = bench_in_process(args.epochs, Path(tmp) / "inprocess", args.depth)
        rate = matmul_rate(MATMUL_N, args.matmul_repeats)
        wall = wall_warm = wall_1 = wall_1_warm = None
        if not args.skip_wall:
            # cold: an empty compilation cache, as on a fresh machine; warm: run again
            env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": str(Path(tmp) / "xla_cache")}
            cmd = [sys.executable, "experiments/train.py", f"--flagfile={FLAGFILE}",
                   f"--output_dir={Path(tmp) / 'run'}", f"--epochs={args.epochs}", "--overwrite"]
            wall, _ = timed_subprocess(cmd, REPO, env)
            wall_warm, _ = timed_subprocess(cmd, REPO, env)
            # the shortest run a user can ask for, first with an empty cache again
            env1 = {**os.environ, "JAX_COMPILATION_CACHE_DIR": str(Path(tmp) / "xla_cache_1")}
            cmd1 = [a if not a.startswith("--epochs=") else "--epochs=1" for a in cmd]
            wall_1, _ = timed_subprocess(cmd1, REPO, env1)
            wall_1_warm, _ = timed_subprocess(cmd1, REPO, env1)
    report = {"command": f"python experiments/train.py --flagfile=experiments/pdni_paper.flags "
                         f"--epochs={args.epochs}",
              "environment": {"load_average_before": load_before,
                              "load_average_after": list(os.getloadavg())},
              "depth": args.depth, **imported, **phases, "matmul_1024": rate, "paper_config_wall_s": wall,
              "paper_config_wall_warm_cache_s": wall_warm,
              "epochs_1_wall_s": wall_1, "epochs_1_wall_warm_cache_s": wall_1_warm,
              "benchmark_s": time.perf_counter() - start}
    report = write_results(args.out, report)

    print(f"device {report['environment']['device']}, {os.cpu_count()} CPUs, load "
          f"{load_before[0]:.2f}; {args.epochs} epochs per stage; JSON: {args.out}")
    print(f"{'import_s':<34}{imported['import_s']:>10.2f}   heavy: "
          f"{', '.join(imported['heavy_modules_loaded']) or '-'}")
    print(f"{'data_load_s':<34}{phases['data_load_s']:>10.2f}")
    for name, st in phases["stages"].items():
        print(f"{name + ' compile_s':<34}{st['compile_s']:>10.2f}")
        print(f"{name + ' epochs_per_s (steady)':<34}{st['epochs_per_s']:>10.1f}")
        print(f"{name + ' train_s':<34}{st['train_s']:>10.2f}")
        print(f"{name + ' matmul GFLOP/epoch':<34}{st['matmul_flops_per_epoch'] / 1e9:>10.4f}"
              f"   achieved {st['achieved_matmul_gflops']:.2f} GFLOP/s")
    print(f"{'generate_write_s':<34}{phases['generate_write_s']:>10.2f}")
    print(f"{'report_s':<34}{phases['report_s']:>10.2f}   report.json "
          f"{phases['report_json_bytes'] / 1e6:.2f} MB")
    print(f"{'matmul 1024 float32 GFLOP/s':<34}{rate['gflops']:>10.1f}")
    if wall_warm is not None:
        print(f"{'wall, compilation cache warm':<34}{wall_warm:>10.2f}")
        print(f"{'wall --epochs=1 (cold / warm cache)':<34}{wall_1:>10.2f} / {wall_1_warm:.2f}")
    print(f"paper_config_wall_s: {wall:.2f}" if wall is not None else "paper_config_wall_s: nan")


if __name__ == "__main__":
    main()
