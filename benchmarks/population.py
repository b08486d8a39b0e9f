"""Benchmark: populations of S = 1, 8, 64, 256 CrystalGANs, training and what follows it.

``--method`` (default crystalgan_plus, the improved method, on the embedded Pd-H / Ni-H
prototypes; ``--method=crystalgan --data=reference`` gives the earlier rounds' paper
configuration on the reference data) with evaluation on: per S the seconds of compiling,
training, generating, the members' outputs (evaluation and writing, in the member
processes together: ``outputs.write_members``), and pooling; peak RSS.

What is measured:

* For each S (``--sizes``), in a fresh subprocess (so that its peak memory is its own),
  :func:`crystalgan_jax.pipeline.job.run` trains S members (seeds 0..S-1) in the paper
  configuration (reference Pd-H/Ni-H data, 35 + 35 structures, minibatch 35, MLPs 5 x 100,
  one D then five G updates, Adam) for ``--epochs`` epochs per stage (default 200), no
  evaluation, chunks of ``--epochs / 2`` epochs, each device training its members in
  vmapped groups of ``--group`` (default the library's ``train_population.member_group`` of
  the platform: 4 on a CPU, all of a device's members on a GPU). Recorded: the wall time of the whole call
  (data, compilation, training, writing the structures), the training time (every chunk
  call, compilation of each stage's first chunk included), the steady-state time per epoch
  (second chunk of each stage, no compilation), and the subprocess's peak resident memory
  (``ru_maxrss``).
* FLOPs of one epoch of one member, per stage, from XLA's cost analysis of the compiled
  value-and-gradient of the discriminator loss and of the generator loss on one minibatch:
  ``steps_per_epoch x (D + generator_steps x G)`` (Adam's elementwise updates left out).
  Achieved GFLOP/s = S x FLOPs of the epochs / steady-state time.
* The float32 matmul rate of the same machine in the same run: a jitted 1024 x 1024 @
  1024 x 1024 product, 2 x 1024^3 FLOPs, median of ``--repeats`` calls.
* The ceiling of this model's training on the same devices (``machine.layer_products_rate``,
  in a subprocess with the populations' devices): the three products of a 100-unit
  layer's forward and backward pass on a 35-row minibatch, ``--group`` independent
  problems per device (without a group, the largest population's members per device),
  and nothing else. A population's achieved rate is also given as
  a fraction of it.

Timings are wall-clock and depend on other load: the JSON records the load average.
The last line printed is ``population_64_over_1: X``, the training time of the largest S
divided by that of S = 1 (both including compilation).

Run from the repository root:  ``python benchmarks/population.py [--sizes 1,8,64]``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # common.py, run as a module too
from common import layer_products_rate, matmul_rate, write_results  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO.parent / "shared" / "data" / "crystalgan-reference"
PAPER = dict(batch_size=35, depth=5, width=100, generator_steps=5, learning_rate=1e-4,
             beta1=0.5)


SETTINGS = {"method": "crystalgan_plus", "data": "embedded", "workers": None}


def _spec(out: Path, epochs: int):
    from crystalgan_jax.pipeline.spec import RunSpec
    from crystalgan_jax import train

    cfg = train.TrainConfig(epochs=epochs, chunk_epochs=max(1, epochs // 2),
                            method=SETTINGS["method"], **PAPER)
    if SETTINGS["data"] == "reference":
        data = dict(data_ah=str(REFERENCE / "PdH_dataset.mat"),
                    data_bh=str(REFERENCE / "NiH_dataset.mat"))
    else:
        data = dict(data_ah=str(REPO / "data" / "PdH"), data_bh=str(REPO / "data" / "NiH"))
    return RunSpec(**data, element_a="Pd", element_b="Ni", output_dir=str(out), train=cfg,
                   checkpoint_every=epochs, evaluate=True,
                   output_workers=SETTINGS["workers"])


def child(size: int, epochs: int, cpu_devices: int, group: int | None) -> dict:
    """One population of ``size`` members, timed; runs in its own process."""
    import jax

    from crystalgan_jax.pipeline import cli
    from crystalgan_jax.pipeline import job
    from crystalgan_jax.pipeline.spec import PopulationSpec, make_members
    from crystalgan_jax.train import population as train_population

    cli.use_cpu_cores(min(size, cpu_devices))  # as train.py does; a lone run: one device

    calls: list[tuple[str, int, float]] = []
    make = train_population.make_population_chunk

    def timed(stage, *args, **kwargs):
        run_chunk = make(stage, *args, group=group, **kwargs)

        def wrapped(members, weights, data, active):
            tic = time.perf_counter()
            out = jax.block_until_ready(run_chunk(members, weights, data, active))
            calls.append((stage.name, int(active.sum()), time.perf_counter() - tic))
            return out
        return wrapped

    train_population.make_population_chunk = timed
    phases: dict[str, float] = {}

    def timing(name, owner, attr):
        fun = getattr(owner, attr)

        def wrapped(*args, **kwargs):
            tic = time.perf_counter()
            out = fun(*args, **kwargs)
            phases[name] = phases.get(name, 0.0) + time.perf_counter() - tic
            return out
        setattr(owner, attr, wrapped)

    from crystalgan_jax.pipeline import outputs, pooled, trainers
    timing("generate_s", trainers.PopulationTrainer, "generate")
    timing("generate_s", trainers.SingleTrainer, "generate")
    timing("outputs_s", outputs, "write_members")  # a population's members
    timing("outputs_s", outputs, "write_member_outputs")  # a single run (same writer)
    timing("pool_s", pooled, "write_pooled_report")
    with tempfile.TemporaryDirectory() as tmp:
        base = _spec(Path(tmp) / "pop", epochs)
        spec = PopulationSpec(
            base, make_members(list(range(size)), base.train.weights))
        tic = time.perf_counter()
        job.run(spec, log=lambda m: None)
        wall = time.perf_counter() - tic
        files = sum(1 for p in Path(tmp).rglob("*") if p.is_file())
        pooled_counts = (json.loads((Path(tmp) / "pop" / "report.json").read_text())["counts"]
                         if (Path(tmp) / "pop" / "report.json").exists() else None)
    steady = {}
    for stage in dict.fromkeys(name for name, _, _ in calls):
        chunks = [(n, t) for name, n, t in calls if name == stage]
        n, t = chunks[-1]  # the last chunk of the stage: compiled already
        steady[stage] = t / n
    train_s = sum(t for _, _, t in calls)
    compile_s = sum(t - n * steady[name] for name, n, t in
                    [next(c for c in calls if c[0] == stage) for stage in steady])
    return {"members": size, "wall_s": wall, "train_s": train_s,
            "compile_s": compile_s, **phases,
            "after_training_s": sum(phases.values()), "files": files,
            "pooled_counts": pooled_counts,
            "chunks": calls, "steady_s_per_epoch": steady,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            # the largest member-writing process (outputs.write_members' pool)
            "peak_rss_worker_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
            "devices": [str(d) for d in jax.devices()]}


def epoch_flops(epochs: int) -> dict[str, float]:
    """XLA's FLOP count of one epoch of one member, per stage (see the module docstring)."""
    import jax
    import jax.numpy as jnp
    from crystalgan_jax import train

    from crystalgan_jax.pipeline.prepare import prepare, with_clash_radii
    from crystalgan_jax.pipeline.spec import PopulationSpec

    spec = with_clash_radii(PopulationSpec.single(_spec(Path("unused"), epochs))).base
    prepared = prepare(spec, lambda m: None)  # the learned windows of crystalgan_plus
    cfg = prepared.spec.train
    nets, shifts = prepared.nets, prepared.shifts
    x, y = (jax.tree_util.tree_map(jnp.asarray, c) for c in (prepared.x, prepared.y))
    state = train.init_state(jax.random.PRNGKey(0), nets, cfg)
    out = {}
    for name in cfg.stages:
        stage = train.STAGES[name]
        data = train.stage_data(name, state, nets, x, y)
        steps = train.steps_per_epoch([d.lattice.shape[0] for d in data], cfg.batch_size)
        batch = tuple(jax.tree_util.tree_map(lambda a: a[:cfg.batch_size], d) for d in data)
        g_loss, d_loss = train.stage_losses(stage, nets, cfg, shifts)
        gp = {k: state.params[k] for k in stage.generators}
        dp = {k: state.params[k] for k in stage.discriminators}
        key = jax.random.PRNGKey(1)

        def flops(fn, *args):
            cost = jax.jit(fn).lower(*args).compile().cost_analysis()
            cost = cost[0] if isinstance(cost, list) else cost
            return float(cost["flops"])

        d = flops(jax.value_and_grad(d_loss), dp, gp, batch, key)
        g = flops(jax.value_and_grad(g_loss, has_aux=True), gp, dp, batch, key)
        out[name] = steps * (d + cfg.generator_steps * g)
    return out



def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1,8,64,256")
    parser.add_argument("--method", default="crystalgan_plus")
    parser.add_argument("--data", default="embedded", choices=("embedded", "reference"))
    parser.add_argument("--workers", type=int, default=None,
                        help="RunSpec.output_workers (default: one per core)")
    parser.add_argument("--epochs", type=int, default=200, help="epochs per stage")
    parser.add_argument("--repeats", type=int, default=20, help="matmul repeats")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "population.json"))
    parser.add_argument("--cpu_devices", type=int, default=os.cpu_count() or 1,
                        help="CPU devices (threads) a population is split over, as train.py's "
                             "--cpu_devices (default: one per core; S = 1 uses one)")
    parser.add_argument("--group", type=int, default=None,
                        help="members vmapped together per device (default: the library's "
                             "train_population.member_group of the platform)")
    parser.add_argument("--depth", type=int, default=PAPER["depth"],
                        help="hidden layers per network (default the paper's 5; fewer for a "
                             "quick check)")
    parser.add_argument("--width", type=int, default=PAPER["width"],
                        help="units per hidden layer (default the paper's 100)")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--ceiling_child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    PAPER.update(depth=args.depth, width=args.width)  # the children get the same flags
    SETTINGS.update(method=args.method, data=args.data, workers=args.workers)
    network_args = [f"--depth={args.depth}", f"--width={args.width}",
                    f"--method={args.method}", f"--data={args.data}",
                    *([f"--workers={args.workers}"] if args.workers else [])]
    if args.child is not None:
        print(json.dumps(child(args.child, args.epochs, args.cpu_devices, args.group)))
        return 0
    if args.ceiling_child:
        from crystalgan_jax.pipeline import cli

        cli.use_cpu_cores(args.cpu_devices)  # the devices the populations train on
        print(json.dumps(layer_products_rate(batch=PAPER["batch_size"], width=PAPER["width"],
                                             group=args.group, repeats=args.repeats)))
        return 0
    if args.data == "reference" and not REFERENCE.exists():
        print(f"reference data not found: {REFERENCE}", file=sys.stderr)
        return 1
    import jax

    from crystalgan_jax.train import population as train_population

    sizes = [int(s) for s in args.sizes.split(",")]
    # the children take the library's default unless --group is given; the ceiling needs
    # a number: the default's, or all of the largest population's members per device
    group_args = [] if args.group is None else [f"--group={args.group}"]
    ceiling_group = (args.group or train_population.member_group(jax.devices()[0].platform)
                     or math.ceil(max(sizes) / len(jax.devices())))
    load_before = os.getloadavg()
    flops = epoch_flops(args.epochs)
    member_flops = sum(flops.values()) * args.epochs  # one member, all stages
    results, failed = [], []
    for size in sizes:
        proc = subprocess.run([sys.executable, __file__, f"--child={size}",
                               f"--epochs={args.epochs}", f"--cpu_devices={args.cpu_devices}",
                               *group_args, *network_args],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            why = (f"killed by signal {-proc.returncode} (SIGKILL: most likely out of memory)"
                   if proc.returncode < 0 else f"exit status {proc.returncode}")
            print(f"S = {size:3d}: failed, {why}", flush=True)
            print(proc.stderr[-3000:], file=sys.stderr)
            failed.append({"members": size, "failed": why})
            continue
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        steady = sum(r["steady_s_per_epoch"][s] for s in flops) * args.epochs
        r["steady_train_s"] = steady
        r["achieved_gflops"] = size * member_flops / steady / 1e9
        results.append(r)
        print(f"S = {size:3d}: wall {r['wall_s']:.1f} s, training {r['train_s']:.1f} s "
              f"(compile {r['compile_s']:.1f}, steady state {steady:.1f} s), generate "
              f"{r.get('generate_s', 0):.1f} s, evaluate + write {r.get('outputs_s', 0):.1f} s, "
              f"pool {r.get('pool_s', 0):.1f} s, after training "
              f"{r['after_training_s']:.1f} s, {r['files']} files, peak RSS "
              f"{r['peak_rss_mib']:.0f} MiB, {r['achieved_gflops']:.2f} GFLOP/s", flush=True)
    mm = matmul_rate(repeats=args.repeats)
    ceiling = json.loads(subprocess.run(
        [sys.executable, __file__, "--ceiling_child", *network_args,
         f"--cpu_devices={args.cpu_devices}",
         f"--group={ceiling_group}", f"--repeats={args.repeats}"],
        capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1])
    ceiling["fraction_of_matmul_rate"] = ceiling["gflops"] / mm["gflops"]
    for r in results:
        r["fraction_of_matmul_rate"] = r["achieved_gflops"] / mm["gflops"]
        r["fraction_of_layer_products"] = r["achieved_gflops"] / ceiling["gflops"]
    print(f"matmul 1024 x 1024 float32: {mm['gflops']:.2f} GFLOP/s (median of "
          f"{mm['repeats']})")
    print(f"layer products alone ({ceiling['group']} x [{ceiling['batch']}, {ceiling['width']}] "
          f"per device, {ceiling['devices']} devices): {ceiling['gflops']:.2f} GFLOP/s "
          f"({100 * ceiling['fraction_of_matmul_rate']:.0f} % of the matmul rate)")
    print("| S | wall | compile | training | generate | evaluate + write | pool | after "
          "training | files | peak RSS (MiB) | GFLOP/s | of matmul | of layer products |")
    print("| ---: " * 13 + "|")
    for r in results:
        print(f"| {r['members']} | {r['wall_s']:.1f} | {r['compile_s']:.1f} | "
              f"{r['train_s']:.1f} | {r.get('generate_s', 0):.1f} | "
              f"{r.get('outputs_s', 0):.1f} | {r.get('pool_s', 0):.1f} | "
              f"{r['after_training_s']:.1f} | {r['files']} | {r['peak_rss_mib']:.0f} | "
              f"{r['achieved_gflops']:.1f} | {100 * r['fraction_of_matmul_rate']:.0f} % | "
              f"{100 * r['fraction_of_layer_products']:.0f} % |")
    if not results:
        return 1
    ratio = results[-1]["train_s"] / results[0]["train_s"]
    report = {
        "measured": f"job.run, {args.method} (paper network sizes) on the {args.data} "
                    "data, with evaluation; training time includes compilation; "
                    "after training = generate + members' outputs + pool; steady state = last "
                    "chunk of each stage; FLOPs from XLA cost analysis of D and G "
                    "value_and_grad per minibatch",
        "epochs_per_stage": args.epochs,
        "method": args.method, "data": args.data, "output_workers": args.workers,
        "network": {"depth": args.depth, "width": args.width},
        "cpu_devices": args.cpu_devices,
        "member_group": args.group if args.group is not None else "library default",
        "platform": jax.devices()[0].platform,
        "epoch_flops_per_member": flops,
        "matmul": mm,
        "layer_products": ceiling,
        "results": results,
        "failed": failed,
        "ratio": {"sizes": [results[0]["members"], results[-1]["members"]],
                  "train_time_ratio": ratio},
        "environment": {"load_average_before": load_before,
                        "load_average_after": os.getloadavg()},
    }
    write_results(args.out, report)
    print(f"population_{results[-1]['members']}_over_{results[0]['members']}: {ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
