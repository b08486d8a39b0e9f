"""Reproduces the paper's Table 2: every method on one system over several seeds.

    python experiments/table2.py --flagfile=experiments/pdni_reference.flags \
        --seeds=0,1,2 --output_dir=runs/table2_pdni

Trains GAN, DiscoGAN, CrystalGAN without and with constraints (the same training code,
``--method`` of train.py) for each seed (train.py's ``--seeds``, default 0,1,2, or
``--num_seeds``), each method's seeds as one population (one compiled program, sharded over
the devices; ``<output_dir>/<method>/members/seed_N/`` per run), evaluates the final
structures of each run, and adds the non-learned substitution baseline. Prints one row per method with
ternary / good (paper) / good (strict) / unique as mean +- standard deviation over seeds,
next to the paper's figure where the system is one of the paper's; writes
``table2.json`` (every count of every run) and ``table2.md``.

Flags of train.py (data, elements, hyperparameters) are accepted, so the system's
flagfile can be reused; ``--output_dir`` is the folder of the whole table.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import threading
import time
from pathlib import Path

import jax
import numpy as np
from absl import app, flags, logging

from crystalgan_jax import cli, encoding, evaluation, population, screen_runs, substitution
from crystalgan_jax.io import StructureFileError
from crystalgan_jax.runner import (CheckpointError, DivergenceError, RunError, check_output,
                                   load_domains)
from crystalgan_jax.training import METHODS

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
        from crystalgan_jax.training import PLUS_DEFAULTS

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


# Relative cost of one method's population, for sharing the methods out over devices
# (wall times of the rows of Table 2 on the 2-core machine, runs/table2_v5).
COST = {"gan": 1.0, "discogan": 1.5, "nocons": 3.5, "crystalgan": 3.5,
        "crystalgan+clash": 6.0, "crystalgan_plus": 7.0}


def device_queues(methods: list[str], n_devices: int) -> list[list[str]]:
    """The methods shared out over ``n_devices``: costliest first, each to the device
    with the least work so far (longest processing time first)."""
    queues: list[list[str]] = [[] for _ in range(n_devices)]
    load = [0.0] * n_devices
    for method in sorted(methods, key=lambda m: -COST[m]):
        i = load.index(min(load))
        queues[i].append(method)
        load[i] += COST[method]
    return queues


def train_methods(specs: dict) -> dict[str, tuple["population.PopulationResult", float]]:
    """Method -> (its trained population, wall seconds).

    A method's seeds are split over all devices when they divide evenly. Otherwise
    (3 seeds on a 2-core machine) a device would train padding, and the methods run
    side by side instead, one device each (:func:`device_queues`); the device in the
    main thread, the others in threads. Ctrl-C or an error in one stops the others
    before their next chunk, each saving its state as on Ctrl-C.
    """
    devices = jax.devices()
    n_seeds = len(next(iter(specs.values())).members)
    if (jax.process_count() > 1 or len(devices) == 1 or len(specs) == 1
            or n_seeds % len(devices) == 0):
        return {method: _train(method, spec) for method, spec in specs.items()}
    queues = device_queues(list(specs), len(devices))
    stop, results, errors = threading.Event(), {}, []

    def work(queue: list[str], device) -> None:
        try:
            for method in queue:
                if stop.is_set():
                    return
                results[method] = _train(method, specs[method], device, stop)
        except BaseException as err:  # Ctrl-C included: the others stop and save
            errors.append(err)
            stop.set()

    threads = [threading.Thread(target=work, args=(q, d), name=f"table2-{d}")
               for q, d in zip(queues[1:], devices[1:]) if q]
    for thread in threads:
        thread.start()
    work(queues[0], devices[0])  # signals reach the main thread
    for thread in threads:
        thread.join()
    if errors:  # an interrupt first: the exit code says which signal
        raise next((e for e in errors if isinstance(e, KeyboardInterrupt)), errors[0])
    return results


def _train(method: str, spec, device=None, stop=None):
    seeds = [m.seed for m in spec.members]
    where = f" on {device}" if device is not None else ""
    logging.info("== %s, seeds %s%s", method, ", ".join(map(str, seeds)), where)
    tic = time.perf_counter()
    if device is None:
        result = population.run(spec)
    else:  # side by side: which method each line is about
        result = population.run(spec, devices=[device], stop=stop,
                                log=lambda msg: logging.info("[%s] %s", method, msg))
    return result, round(time.perf_counter() - tic, 1)


def make_table(base, specs: dict) -> dict[str, dict] | None:
    """Every method's population (``specs``: method -> PopulationSpec), then substitution.

    With several processes only process 0 returns the table (the others None).
    """
    table: dict[str, dict] = {}
    trained = train_methods(specs)
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
