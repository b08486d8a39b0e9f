"""Reproduces the paper's Table 2: every method on one system over several seeds.

    python experiments/table2.py --flagfile=experiments/pdni_reference.flags \
        --seeds=0,1,2 --output_dir=runs/table2_pdni

Trains GAN, DiscoGAN, CrystalGAN without and with constraints (the same training code,
``--method`` of train.py) for each seed, evaluates the final structures of each run, and
adds the non-learned substitution baseline. Prints one row per method with
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
import time
from pathlib import Path

import numpy as np
from absl import app, flags, logging

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train  # noqa: E402  (train.py's flags and their parsing)

from crystalgan_jax import encoding, evaluation, substitution  # noqa: E402
from crystalgan_jax.io import StructureFileError  # noqa: E402
from crystalgan_jax.runner import ResumeMismatchError, load_domains, run  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds; every method is trained once per seed.")
flags.DEFINE_list("methods", ["gan", "discogan", "nocons", "crystalgan"],
                  "Methods to train: train.py's --method values, and crystalgan+clash "
                  "(CrystalGAN with the clash term, weight --clash_weight).")
flags.DEFINE_float("clash_weight", 1.0, "l7 of the crystalgan+clash row.")
flags.DEFINE_bool("with_substitution", True, "Add the substitution baseline.")

LABELS = {"gan": "GAN (noise input)", "discogan": "DiscoGAN (step 1 only)",
          "nocons": "CrystalGAN, no constraints", "crystalgan": "CrystalGAN, constraints",
          "crystalgan+clash": "CrystalGAN, constraints + clash (this project)",
          "crystalgan_plus": "crystalgan_plus (this project; see the ablation)",
          "substitution": "Substitution + Vegard (not learned)"}
# The paper's Table 2: good-quality ternary compositions per method.
PAPER = {("Pd", "Ni"): {"gan": 0, "discogan": 0, "nocons": 4, "crystalgan": 9},
         ("Mg", "Ti"): {"gan": 0, "discogan": 0, "nocons": 2, "crystalgan": 8}}
COLUMNS = ("ternary", "good_paper", "good_strict", "unique")


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
    for key in ("generated",) + COLUMNS:
        values = np.array([c[key] for c in per_seed], float)
        out[key] = {"mean": float(values.mean()), "std": float(values.std()),
                    "min": float(values.min()), "max": float(values.max())}
    return out


def markdown(table: dict, element_a: str, element_b: str, seeds: list[int],
             epochs: int) -> str:
    paper = PAPER.get((element_a, element_b), {})
    lines = [f"# Table 2: {element_a}-{element_b}-H",
             "",
             f"Seeds {', '.join(map(str, seeds))}; {epochs} epochs per stage. Counts over the "
             "final structures of both directions; mean +- std over seeds "
             "(substitution is deterministic). 'paper' is the paper's count of good-quality "
             "ternary compositions.",
             "",
             "| method | generated | ternary | good (paper) | good (strict) | unique | paper |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for method, row in table.items():
        s = row["summary"]
        cells = [f"{s[k]['mean']:.1f} +- {s[k]['std']:.1f}" for k in ("generated",) + COLUMNS]
        lines.append(f"| {LABELS[method]} | " + " | ".join(cells)
                     + f" | {paper.get(method, '-')} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)
    if not FLAGS.evaluate:
        raise app.UsageError("--noevaluate: the table is made of the runs' evaluations")
    try:
        base = train.spec_from_flags()
    except ValueError as err:  # a hyperparameter out of range
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        table = make_table(base)
    except (StructureFileError, FileExistsError, ResumeMismatchError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out = Path(FLAGS.output_dir)
    seeds = [int(s) for s in FLAGS.seeds]
    out.mkdir(parents=True, exist_ok=True)
    text = markdown(table, base.element_a, base.element_b, seeds, base.train.epochs)
    (out / "table2.md").write_text(text)
    (out / "table2.json").write_text(json.dumps(
        {"system": [base.element_a, base.element_b], "seeds": seeds,
         "epochs": base.train.epochs, "data": [base.data_ah, base.data_bh],
         "paper": PAPER.get((base.element_a, base.element_b)), "methods": table}, indent=2))
    print(text)
    return 0


def make_table(base) -> dict[str, dict]:
    """Every method of --methods for every seed, then substitution: counts and summaries."""
    out = Path(FLAGS.output_dir)
    table: dict[str, dict] = {}
    for method in FLAGS.methods:
        runs = []
        for seed in (int(s) for s in FLAGS.seeds):
            spec = dataclasses.replace(
                base, seed=seed, output_dir=str(out / method / f"seed{seed}"),
                train=method_config(base.train, method))
            print(f"== {method}, seed {seed}", file=sys.stderr, flush=True)
            tic = time.perf_counter()
            result = run(spec)
            runs.append({"seed": seed, "output_dir": spec.output_dir,
                         "wall_s": round(time.perf_counter() - tic, 1),
                         "counts": result.report["counts"]})
        table[method] = {"runs": runs, "summary": summarize([r["counts"] for r in runs])}
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
    return table


if __name__ == "__main__":
    app.run(main, argv=train._resolve_flagfiles(sys.argv))
