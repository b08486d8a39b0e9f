"""crystalgan_plus against the paper's method, each ingredient switched off in turn.

    python experiments/ablation.py --flagfile=experiments/pdni_reference.flags \
        --seeds=0,1,2 --output_dir=runs/ablation_pdni

For each seed: the paper's CrystalGAN, crystalgan_plus with everything on, then
crystalgan_plus with one ingredient off per row (--variants). Rows that only change how
samples are drawn (-sampling, -pairings, -snap) reuse the state trained for the full
crystalgan_plus row of the same seed, so their wall time is sampling + evaluation only.
The substitution baseline is added once. Prints and writes ``ablation.md`` and
``ablation.json`` (every count and wall time of every run): generated / ternary /
good (paper) / good (strict) / unique / novel (unique strictly good ones that match no
substitution-baseline and no training structure under StructureMatcher).

Flags of train.py are accepted, so the system's flagfile is reused; crystalgan_plus's
ingredient flags given here (e.g. --input_noise=0.2) set the full row and every row that
does not switch that ingredient off.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from crystalgan_jax.pipeline import startup

startup.collect_less()  # before the heavy imports below

from absl import app, flags  # noqa: E402

from crystalgan_jax.pipeline import cli, tables  # noqa: E402
from crystalgan_jax.pipeline.spec import RunSpec  # noqa: E402
from crystalgan_jax import train  # noqa: E402

HERE = Path(__file__).resolve().parent
FLAGS = flags.FLAGS
cli.define_flags(FLAGS)  # train.py's flags: one per RunSpec / TrainConfig / Weights field
flags.adopt_module_key_flags(cli)
flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds; every training row runs once per seed.")
flags.DEFINE_list("variants", ["crystalgan", "plus", "-clash", "-windows", "-spacing",
                               "-noise", "-sampling", "-pairings", "-snapshots", "-snap"],
                  "Rows: crystalgan (the paper's method), plus (everything on), and -X "
                  "(crystalgan_plus with ingredient X off).")
flags.DEFINE_bool("with_substitution", True, "Add the substitution baseline row.")
flags.DEFINE_list("collect", [], "Instead of training: merge the ablation.json files of these "
                  "folders (e.g. one per seed, run side by side) into --output_dir.")


def main(argv: list[str]) -> int:
    cli.start_script(argv, FLAGS, HERE)
    try:
        variants = tables.check_variants(FLAGS.variants)
    except ValueError as err:
        raise app.UsageError(str(err)) from None
    try:
        base = cli.spec_from_flags(FLAGS, data_root=HERE.parent)
        seeds = tables.parse_seeds(FLAGS.seeds)
    except cli.UsageError as err:
        raise app.UsageError(str(err)) from None
    except ValueError as err:
        return tables.report_error(err)
    out = Path(FLAGS.output_dir)
    if FLAGS.collect:
        return collect([Path(p) for p in FLAGS.collect], out, base)
    plus = {k: getattr(FLAGS, k) for k in train.PLUS_DEFAULTS}  # None = plus default
    table: dict[str, dict] = {}
    trained: dict[int, tables.Trained] = {}
    try:
        for variant in variants:
            runs = tables.ablation_rows(base, variant, seeds, out, trained, plus)
            table[variant] = {"runs": runs,
                              "summary": tables.summarize_ablation([r["counts"] for r in runs])}
            _write(out, table, base, seeds)  # after each row: nothing lost if cut short
        if FLAGS.with_substitution:
            table["substitution"] = tables.substitution_row(
                tables.substitution_counts(base, novel=True))
    except (Exception, KeyboardInterrupt) as err:
        return tables.report_error(err)  # re-raised where no exit code is expected
    print(_write(out, table, base, seeds))
    return 0


def collect(folders: list[Path], out: Path, base: RunSpec) -> int:
    """Merges several ablation.json files (same system, other seeds) into one table."""
    datas = []
    for folder in folders:
        path = folder / "ablation.json"
        if not path.exists():
            print(f"error: {path} not found", file=sys.stderr)
            return 2
        data = json.loads(path.read_text())
        if data["system"] != [base.element_a, base.element_b]:
            print(f"error: {path} holds {data['system']}, not "
                  f"{[base.element_a, base.element_b]}", file=sys.stderr)
            return 2
        datas.append(data)
    table, seeds = tables.merge_ablations(datas)
    print(_write(out, table, base, seeds))
    return 0


def _write(out: Path, table: dict, base: RunSpec, seeds: list[int]) -> str:
    text = tables.ablation_markdown(table, base.element_a, base.element_b, seeds,
                                    base.train.epochs, base.train.d1, base.train.d2)
    return tables.write_table(out, "ablation", text, {
        "system": [base.element_a, base.element_b], "seeds": seeds,
        "epochs": base.train.epochs, "d1": base.train.d1, "d2": base.train.d2,
        "data": [base.data_ah, base.data_bh], "rows": table})


if __name__ == "__main__":
    app.run(main, argv=cli.resolve_flagfiles(sys.argv, HERE))
