"""Reproduces the paper's Table 2: every method on one system over several seeds.

    python experiments/table2.py --flagfile=experiments/pdni_reference.flags \
        --seeds=0,1,2 --output_dir=runs/table2_pdni

Trains GAN, DiscoGAN, CrystalGAN without and with constraints (the same training code,
``--method`` of train.py) for each seed (train.py's ``--seeds``, default 0,1,2, or
``--num_seeds``), each method's seeds as one population (one compiled program;
``<output_dir>/<method>/members/seed_N/`` per run), evaluates the final structures of
each run, and adds the non-learned substitution baseline. A population is split over the
devices where its seeds divide evenly over them; otherwise the methods train side by side,
one device each (:func:`train_methods`). CrystalGAN with and without constraints (and
with the clash term) share one stage-1 training (:func:`stage1_group`). Prints one row per method with
ternary / good (paper) / good (strict) / unique as mean +- standard deviation over seeds,
next to the paper's figure where the system is one of the paper's; writes
``table2.json`` (every count of every run) and ``table2.md``.

Flags of train.py (data, elements, hyperparameters) are accepted, so the system's
flagfile can be reused; ``--output_dir`` is the folder of the whole table.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Callable

from crystalgan_jax.pipeline import startup

startup.collect_less()  # before the heavy imports below

import jax  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags, logging  # noqa: E402

from crystalgan_jax.pipeline import cli, population, runner  # noqa: E402
from crystalgan_jax.core import encoding  # noqa: E402
from crystalgan_jax.materials import evaluation, substitution  # noqa: E402
from crystalgan_jax.screening import runs as screen_runs  # noqa: E402
from crystalgan_jax.materials.io import StructureFileError  # noqa: E402
from crystalgan_jax.pipeline.runner import (  # noqa: E402
    CheckpointError, DivergenceError, RunError, check_output, load_domains)
from crystalgan_jax.train import METHODS  # noqa: E402

HERE = Path(__file__).resolve().parent
FLAGS = flags.FLAGS
cli.define_flags(FLAGS)  # train.py's flags: one per RunSpec / TrainConfig / Weights field
flags.adopt_module_key_flags(cli)  # so that --help lists them
flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds; every method's seeds train as one population.")
cli.define_population_flags(FLAGS, members=False)  # --num_processes etc.
flags.DEFINE_list("methods", ["gan", "discogan", "nocons", "crystalgan"],
                  "Methods to train: train.py's --method values, and crystalgan+clash "
                  "(CrystalGAN with the clash term, weight --clash_weight).")
flags.DEFINE_float("clash_weight", 1.0, "l7 of the crystalgan+clash row.")
flags.DEFINE_bool("with_substitution", True, "Add the substitution baseline.")
flags.DEFINE_bool("screen", False, "Screen each run's final structures and the substitution "
                  "baseline with CHGNet (screen.py's --only, --fmax, --max_steps, --threads, "
                  "--stability_threshold); adds the columns stable and S.U.N. Needs the "
                  "screen extra.")
cli.define_screen_flags(FLAGS)  # --only, --fmax, --max_steps, --threads, ...

LABELS = {"gan": "GAN (noise input)", "discogan": "DiscoGAN (step 1 only)",
          "nocons": "CrystalGAN, no constraints", "crystalgan": "CrystalGAN, constraints",
          "crystalgan+clash": "CrystalGAN, constraints + clash (this project)",
          "crystalgan_plus": "crystalgan_plus (this project; see the ablation)",
          "substitution": "Substitution + Vegard (not learned)"}
# The paper's Table 2: good-quality ternary compositions per method.
PAPER = {("Pd", "Ni"): {"gan": 0, "discogan": 0, "nocons": 4, "crystalgan": 9},
         ("Mg", "Ti"): {"gan": 0, "discogan": 0, "nocons": 2, "crystalgan": 8}}
COLUMNS = ("ternary", "good_paper", "good_strict", "unique")
TABLE_METHODS = METHODS + ("crystalgan+clash",)


def parse_seeds(items: list[str]) -> list[int]:
    """--seeds values as integers; raises ValueError naming the bad item."""
    if not items:
        raise ValueError("--seeds: give at least one seed, e.g. --seeds=0,1,2")
    seeds = []
    for item in items:
        try:
            seeds.append(int(item))
        except ValueError:
            raise ValueError(f"--seeds: {item!r} is not an integer") from None
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds: a seed is given twice in {seeds}")
    return seeds


def check_methods(methods: list[str]) -> list[str]:
    """--methods values, all known and none twice; raises ValueError naming the bad one."""
    if not methods:
        raise ValueError(f"--methods: give at least one of {', '.join(TABLE_METHODS)}")
    for method in methods:
        if method not in TABLE_METHODS:
            raise ValueError(f"--methods: {method!r} is not one of {', '.join(TABLE_METHODS)}")
    if len(set(methods)) != len(methods):
        raise ValueError(f"--methods: a method is given twice in {methods}")
    return methods


def method_config(base, method: str):
    """train.py's configuration for one row: its method, and l7 for crystalgan+clash."""
    if method == "crystalgan+clash":
        weights = dataclasses.replace(base.weights, l7=FLAGS.clash_weight)
        return dataclasses.replace(base, method="crystalgan", weights=weights)
    if method == "crystalgan_plus":  # its ingredients at their defaults unless flags set them
        from crystalgan_jax.train import PLUS_DEFAULTS

        return dataclasses.replace(base, method=method,
                                   **{k: getattr(FLAGS, k) for k in PLUS_DEFAULTS})
    return dataclasses.replace(base, method=method)


def summarize(per_seed: list[dict[str, int]]) -> dict[str, dict[str, float]]:
    """Mean, standard deviation (population), min and max of each count over seeds."""
    out = {}
    for key in ("generated",) + COLUMNS + tuple(k for k in screen_runs.COLUMNS if k in per_seed[0]):
        values = np.array([c[key] for c in per_seed], float)
        out[key] = {"mean": float(values.mean()), "std": float(values.std()),
                    "min": float(values.min()), "max": float(values.max())}
    return out


def markdown(table: dict, element_a: str, element_b: str, seeds: list[int],
             epochs: int) -> str:
    paper = PAPER.get((element_a, element_b), {})
    screened = [k for k in screen_runs.COLUMNS if all(k in r["summary"] for r in table.values())]
    lines = [f"# Table 2: {element_a}-{element_b}-H",
             "",
             f"Seeds {', '.join(map(str, seeds))}; {epochs} epochs per stage. Counts over the "
             "final structures of both directions; mean +- std over seeds "
             "(substitution is deterministic). 'paper' is the paper's count of good-quality "
             "ternary compositions.",
             "",
             "| method | generated | ternary | good (paper) | good (strict) | unique | paper |"
             + "".join(f" {screen_runs.COLUMNS[k]} |" for k in screened),
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |" + " ---: |" * len(screened)]
    for method, row in table.items():
        s = row["summary"]
        cells = [f"{s[k]['mean']:.1f} +- {s[k]['std']:.1f}" for k in ("generated",) + COLUMNS]
        lines.append(f"| {LABELS[method]} | " + " | ".join(cells)
                     + f" | {paper.get(method, '-')} |"
                     + "".join(f" {s[k]['mean']:.1f} +- {s[k]['std']:.1f} |" for k in screened))
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    cli.start_script(argv, FLAGS, HERE)
    if not FLAGS.evaluate:
        raise app.UsageError("--noevaluate: the table is made of the runs' evaluations")
    try:
        base = cli.spec_from_flags(FLAGS, data_root=HERE.parent)
        seeds = parse_seeds(FLAGS.seeds)
        specs = run_specs(base, check_methods(FLAGS.methods), seeds)  # all checked up front
    except cli.UsageError as err:
        raise app.UsageError(str(err)) from None
    except ValueError as err:  # a hyperparameter, seed or method out of range
        print(f"error: {err}", file=sys.stderr)
        return 2
    cli.initialize_distributed(FLAGS)
    try:
        for spec in specs.values():
            check_output(spec.base)  # every method's folder, before the first one trains
        load_domains(base)  # the data, likewise
        table = make_table(base, specs)
    except (StructureFileError, FileExistsError, RunError, CheckpointError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 3 if isinstance(err, DivergenceError) else 2
    except KeyboardInterrupt as err:  # SIGINT or SIGTERM: the current run saved its state
        return 128 + getattr(err, "signum", 2)
    if table is None:  # not process 0
        return 0
    out = Path(FLAGS.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    text = markdown(table, base.element_a, base.element_b, seeds, base.train.epochs)
    (out / "table2.md").write_text(text)
    (out / "table2.json").write_text(json.dumps(
        {"system": [base.element_a, base.element_b], "seeds": seeds,
         "epochs": base.train.epochs, "data": [base.data_ah, base.data_bh],
         "paper": PAPER.get((base.element_a, base.element_b)), "methods": table}, indent=2))
    print(text)
    return 0


def run_specs(base, methods: list[str], seeds: list[int]) -> dict[str, "population.PopulationSpec"]:
    """Method -> the population of its seeds (one compiled program per method); building
    them checks every seed and method."""
    out = Path(FLAGS.output_dir)
    specs = {}
    for method in methods:
        train_cfg = method_config(base.train, method)
        specs[method] = population.PopulationSpec(
            dataclasses.replace(base, output_dir=str(out / method), train=train_cfg),
            population.make_members(seeds, train_cfg.weights))
    return specs


# Relative cost of one method's population, for sharing the work out over devices
# (wall times of Table 2's rows on the 2-core machine, one device each: README), and of
# the stage 1 that several methods share (:func:`stage1_group`).
COST = {"gan": 1.0, "discogan": 1.5, "nocons": 3.5, "crystalgan": 3.5,
        "crystalgan+clash": 6.5, "crystalgan_plus": 7.0}
STAGE1_COST = 1.4


@dataclasses.dataclass
class Job:
    """One population run of :func:`train_methods`: a method, or the stage 1 it shares."""

    name: str
    cost: float
    run: Callable  # (device or None, stop event) -> population.run's result
    after: tuple[str, ...] = ()  # jobs that must be done first
    priority: float = 0.0  # cost of the longest chain from here: the order jobs start in


def stage1_group(specs: dict) -> list[str]:
    """The methods whose stage 1 is one and the same training, in ``specs`` order.

    CrystalGAN with or without the constraints or the clash term differ only in l5, l6,
    l7 (and the clash radii), none of which stage 1 uses: with the same seeds their
    stage-1 runs are identical, so one is trained and the others start from its
    checkpoint (tests/test_population.py checks that this equals training each). With
    several processes nothing is shared: the checkpoint copy is not coordinated.
    """
    if jax.process_count() > 1:
        return []

    def key(spec):
        cfg = spec.base.train
        if cfg.method not in ("crystalgan", "nocons"):
            return None
        weights = dataclasses.replace(cfg.weights, l5=0.0, l6=0.0, l7=0.0)
        return (dataclasses.replace(cfg, method="crystalgan", weights=weights,
                                    clash_radii=(0.0, 0.0, 0.0)),
                tuple(m.seed for m in spec.members))

    keys = {m: key(spec) for m, spec in specs.items()}
    first = next((k for k in keys.values() if k is not None), None)
    group = [m for m, k in keys.items() if k is not None and k == first]
    return group if len(group) > 1 else []


def _resumed(spec):
    return dataclasses.replace(spec, base=dataclasses.replace(spec.base, resume=True,
                                                              overwrite=False))


def _start_from_stage1(leader: Path, follower, epochs: int) -> None:
    """``follower``'s folder set up to resume from ``leader``'s stage-1 checkpoint (and
    its members' metrics), unless it holds a checkpoint of its own (``--resume``)."""
    out = Path(follower.base.output_dir)
    if follower.base.resume and any((out / "checkpoints").glob("[0-9]*")):
        return
    if out.exists():  # --overwrite (check_output refused a run otherwise)
        runner.clear_run(out)
    shutil.copytree(leader / "checkpoints" / str(epochs), out / "checkpoints" / str(epochs))
    for member in follower.members:
        (out / "members" / member.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(leader / "members" / member.name / "metrics.jsonl",
                    out / "members" / member.name / "metrics.jsonl")


def make_jobs(specs: dict) -> list[Job]:
    """One job per method; where methods share stage 1, a job for it that they wait for."""
    group = stage1_group(specs)
    jobs = []
    if group:
        leader = specs[group[0]]
        epochs = leader.base.train.epochs
        jobs.append(Job("stage1", STAGE1_COST,
                        lambda device, stop: _train(f"stage 1 of {', '.join(group)}", leader,
                                                    device, stop, until_epoch=epochs)))
    for method, spec in specs.items():
        if method not in group:
            jobs.append(Job(method, COST[method],
                            lambda device, stop, m=method, sp=spec: _train(m, sp, device, stop)))
            continue

        def follow(device, stop, m=method, sp=spec):
            leader_dir = Path(specs[group[0]].base.output_dir)
            if m != group[0]:
                _start_from_stage1(leader_dir, sp, sp.base.train.epochs)
            logging.info("[%s] stage 1 from %s (the same training)", m, leader_dir)
            return _train(m, _resumed(sp), device, stop)
        jobs.append(Job(method, COST[method] - STAGE1_COST, follow, after=("stage1",)))
    for job in jobs:
        job.priority = job.cost + max((j.cost for j in jobs if job.name in j.after), default=0)
    return jobs


def train_methods(specs: dict) -> dict[str, tuple["population.PopulationResult", float]]:
    """Job name (each method, and "stage1" where some share it) -> (its trained
    population, or None for the shared stage 1; wall seconds of the job).

    A method's seeds are split over all devices when they divide evenly. Otherwise
    (3 seeds on a 2-core machine) a device would train padding, and the jobs run side by
    side instead, one device each, longest chain first; the device in the main thread,
    the others in threads. Ctrl-C or an error in one stops the others before their next
    chunk, each saving its state as on Ctrl-C. Methods that share stage 1 wait for it.
    """
    devices = jax.devices()
    n_seeds = len(next(iter(specs.values())).members)
    side_by_side = not (jax.process_count() > 1 or len(devices) == 1 or len(specs) == 1
                        or n_seeds % len(devices) == 0)
    jobs = make_jobs(specs)
    pending, done, results, errors = list(jobs), set(), {}, []
    stop, changed = threading.Event(), threading.Condition()

    def next_job() -> Job | None:
        with changed:
            while pending and not stop.is_set():
                ready = [j for j in pending if set(j.after) <= done]
                if ready:
                    job = max(ready, key=lambda j: j.priority)
                    pending.remove(job)
                    return job
                changed.wait()
            return None

    def work(device) -> None:
        try:
            while (job := next_job()) is not None:
                results[job.name] = job.run(device, stop)
                with changed:
                    done.add(job.name)
                    changed.notify_all()
        except BaseException as err:  # Ctrl-C included: the others stop and save
            errors.append(err)
            stop.set()
            with changed:
                changed.notify_all()

    workers = devices if side_by_side else [None]
    threads = [threading.Thread(target=work, args=(d,), name=f"table2-{d}") for d in workers[1:]]
    for thread in threads:
        thread.start()
    work(workers[0])  # signals reach the main thread
    for thread in threads:
        thread.join()
    if errors:  # an interrupt first: the exit code says which signal
        raise next((e for e in errors if isinstance(e, KeyboardInterrupt)), errors[0])
    return results


def _train(name: str, spec, device=None, stop=None, until_epoch=None):
    seeds = [m.seed for m in spec.members]
    where = f" on {device}" if device is not None else ""
    logging.info("== %s, seeds %s%s", name, ", ".join(map(str, seeds)), where)
    tic = time.perf_counter()
    prefix = f"[process {jax.process_index()}] " if jax.process_count() > 1 else ""
    result = population.run(spec, devices=None if device is None else [device], stop=stop,
                            until_epoch=until_epoch,
                            log=lambda msg: logging.info("%s[%s] %s", prefix, name, msg))
    return result, round(time.perf_counter() - tic, 1)


def make_table(base, specs: dict) -> dict[str, dict] | None:
    """Every method's population (``specs``: method -> PopulationSpec), then substitution.

    With several processes only process 0 returns the table (the others None).
    """
    table: dict[str, dict] = {}
    trained = train_methods(specs)
    group = stage1_group(specs)
    for method in specs:
        result, wall = trained[method]
        if jax.process_index() != 0:
            continue
        runs = []
        for m in result.members:
            folder = result.output_dir / "members" / m.name
            runs.append({"seed": m.seed, "output_dir": str(folder), "counts": json.loads(
                (folder / "report.json").read_text())["counts"]})
        table[method] = {"runs": runs, "wall_s": wall,
                         "summary": summarize([r["counts"] for r in runs])}
        if method in group:  # its wall time is stage 3 and the outputs
            table[method]["stage1"] = {"trained_in": group[0], "wall_s": trained["stage1"][1]}
    if jax.process_index() != 0:
        return None
    if FLAGS.with_substitution:
        ah, bh = load_domains(base)
        structures = substitution.substitution(ah.structures, bh.structures,
                                               base.element_a, base.element_b)
        classes = encoding.class_symbols(base.train.classes, base.element_a, base.element_b)
        evals = evaluation.evaluate_structures(structures, base.element_a, base.element_b,
                                               d1=base.train.d1, d2=base.train.d2,
                                               classes=classes)
        counts = evaluation.count_verdicts(structures, evals)
        table["substitution"] = {"runs": [{"seed": None, "counts": counts}],
                                 "summary": summarize([counts])}
    if FLAGS.screen:
        screen_runs.screen_table(table, base, Path(FLAGS.output_dir), threads=FLAGS.threads,
                                 fmax=FLAGS.fmax,
                                 max_steps=FLAGS.max_steps, only=FLAGS.only,
                                 stability_threshold=FLAGS.stability_threshold)
        for row in table.values():
            row["summary"] = summarize([r["counts"] for r in row["runs"]])
    return table


if __name__ == "__main__":
    app.run(main, argv=cli.resolve_flagfiles(sys.argv, HERE))
