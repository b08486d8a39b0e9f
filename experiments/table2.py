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

import sys
from pathlib import Path

from crystalgan_jax.pipeline import startup

startup.collect_less()  # before the heavy imports below

from absl import app, flags, logging  # noqa: E402

from crystalgan_jax.pipeline import cli, schedule, tables  # noqa: E402
from crystalgan_jax.screening import runs as screen_runs  # noqa: E402
from crystalgan_jax.pipeline.folder import check_output  # noqa: E402
from crystalgan_jax.pipeline.prepare import load_domains  # noqa: E402
from crystalgan_jax.train import PLUS_DEFAULTS  # noqa: E402

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


def main(argv: list[str]) -> int:
    cli.start_script(argv, FLAGS, HERE)
    if not FLAGS.evaluate:
        raise app.UsageError("--noevaluate: the table is made of the runs' evaluations")
    out = Path(FLAGS.output_dir)
    try:
        base = cli.spec_from_flags(FLAGS, data_root=HERE.parent)
        seeds = tables.parse_seeds(FLAGS.seeds)
        specs = schedule.table2_specs(  # all checked up front
            base, tables.check_methods(FLAGS.methods), seeds, out,
            clash_weight=FLAGS.clash_weight, plus={k: getattr(FLAGS, k) for k in PLUS_DEFAULTS})
    except cli.UsageError as err:
        raise app.UsageError(str(err)) from None
    except ValueError as err:  # a hyperparameter, seed or method out of range
        return tables.report_error(err)
    cli.initialize_distributed(FLAGS)
    try:
        for spec in specs.values():
            check_output(spec.base)  # every method's folder, before the first one trains
        load_domains(base)  # the data, likewise
        table = schedule.table2_rows(specs, schedule.train_methods(specs, logging.info))
        if table is None:  # not process 0
            return 0
        if FLAGS.with_substitution:
            table["substitution"] = tables.substitution_row(
                tables.substitution_counts(base), tables.summarize_table2)
        if FLAGS.screen:
            with cli.relaxers_from_flags(FLAGS, screen_runs.log_line)[0] as relaxer:
                screen_runs.screen_table(table, base, out, relaxer=relaxer, only=FLAGS.only,
                                         stability_threshold=FLAGS.stability_threshold)
            for row in table.values():
                row["summary"] = tables.summarize_table2([r["counts"] for r in row["runs"]])
    except (Exception, KeyboardInterrupt) as err:
        return tables.report_error(err)  # re-raised where no exit code is expected
    text = tables.table2_markdown(table, base.element_a, base.element_b, seeds,
                                  base.train.epochs)
    tables.write_table(out, "table2", text, {
        "system": [base.element_a, base.element_b], "seeds": seeds,
        "epochs": base.train.epochs, "data": [base.data_ah, base.data_bh],
        "paper": tables.PAPER.get((base.element_a, base.element_b)), "methods": table})
    print(text)
    return 0


if __name__ == "__main__":
    app.run(main, argv=cli.resolve_flagfiles(sys.argv, HERE))
