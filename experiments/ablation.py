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

import dataclasses
import json
import sys
import time
from pathlib import Path

from crystalgan_jax.pipeline import startup

startup.collect_less()  # before the heavy imports below

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from crystalgan_jax.materials import candidates, evaluation  # noqa: E402
from crystalgan_jax.pipeline import cli, runner  # noqa: E402
from crystalgan_jax.core import encoding  # noqa: E402
from crystalgan_jax.materials import substitution  # noqa: E402
from crystalgan_jax import train  # noqa: E402
from crystalgan_jax.materials.io import StructureFileError  # noqa: E402

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

# Each "-X" row: the crystalgan_plus fields it changes.
VARIANTS = {
    "plus": {},
    "-clash": {"plus_clash": False},
    "-windows": {"window_weight": 0.0},
    "-spacing": {"spacing_weight": 0.0},
    "-noise": {"input_noise": 0.0},
    "-sampling": {"samples_per_input": 1, "random_pairings": False},
    "-pairings": {"random_pairings": False},
    "-snapshots": {"snapshots": 1},
    "-snap": {"snap_symprec": 0.0},
}
SAMPLING_ONLY = ("-sampling", "-pairings", "-snapshots", "-snap")
LABELS = {"crystalgan": "CrystalGAN (paper's method)", "plus": "crystalgan_plus (all on)",
          "-clash": "plus, no clash term", "-windows": "plus, no learned windows",
          "-spacing": "plus, no plane-spacing term", "-noise": "plus, no input noise",
          "-sampling": "plus, one sample per input", "-pairings": "plus, fixed pairing only",
          "-snapshots": "plus, final generators only",
          "-snap": "plus, no symmetry snapping",
          "substitution": "Substitution + Vegard (not learned)"}
COLUMNS = ("generated", "ternary", "good_paper", "good_strict", "unique", "novel")


def variant_config(base: train.TrainConfig, variant: str) -> train.TrainConfig:
    """The TrainConfig of one row, from train.py's flags (``base``)."""
    if variant == "crystalgan":
        return dataclasses.replace(base, method="crystalgan",
                                   **{k: None for k in train.PLUS_DEFAULTS})
    fields = {k: getattr(FLAGS, k) for k in train.PLUS_DEFAULTS}  # None = plus default
    fields.update(VARIANTS[variant])
    weights = base.weights
    if variant == "-clash":
        weights = dataclasses.replace(weights, l7=0.0)
    return dataclasses.replace(base, method="crystalgan_plus", weights=weights, **fields)


def outside_fraction(output_dir: str, last: int = 50) -> float | None:
    """Mean ``outside_images`` over the last ``last`` stage-3 epochs of a run's metrics:
    the fraction of generated cells needing more lattice images than the penalty had."""
    path = Path(output_dir) / "metrics.jsonl"
    if not path.exists():
        return None
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    values = [r["outside_images"] for r in rows
              if r.get("stage") == "stage3" and "outside_images" in r][-last:]
    return round(float(np.mean(values)), 4) if values else None


def summarize(per_seed: list[dict]) -> dict:
    """Mean, population std, min and max of each count (and wall time) over seeds."""
    out = {}
    for key in COLUMNS + ("wall_s",):
        values = np.array([c[key] for c in per_seed if key in c], float)
        if values.size:
            out[key] = {"mean": float(values.mean()), "std": float(values.std()),
                        "min": float(values.min()), "max": float(values.max())}
    return out


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run_row(base: runner.RunSpec, variant: str, seed: int, out: Path,
            trained: dict[int, runner.RunResult]) -> dict:
    """One run (or, for a sampling-only row, one re-sampling of the plus state)."""
    cfg = variant_config(base.train, variant)
    spec = dataclasses.replace(base, seed=seed, output_dir=str(out / variant / f"seed{seed}"),
                               train=cfg)
    print(f"== {variant}, seed {seed}", file=sys.stderr, flush=True)
    tic = time.perf_counter()
    if variant in SAMPLING_ONLY:
        if seed not in trained:
            raise app.UsageError(f"row {variant} reuses the 'plus' row: list plus first")
        plus = trained[seed]
        spec = dataclasses.replace(spec, train=dataclasses.replace(
            plus.spec.train, **VARIANTS[variant]))
        spec, ah, bh, layout, x, y, nets = runner.prepare(spec, _log)
        folder = Path(spec.output_dir)
        folder.mkdir(parents=True, exist_ok=True)
        _, report = runner.write_outputs(
            spec, plus.state, nets, x, y, layout, ah, bh, folder, plus.metrics,
            _log)
        counts = report["counts"]
    else:
        result = runner.run(spec)
        if variant == "plus":
            trained[seed] = result
        counts = result.report["counts"]
    wall = round(time.perf_counter() - tic, 1)
    print(f"   {variant} seed {seed}: {counts}, {wall} s", file=sys.stderr, flush=True)
    row = {"seed": seed, "output_dir": spec.output_dir, "wall_s": wall,
           "counts": {**counts, "wall_s": wall}}
    if variant not in SAMPLING_ONLY:
        row["outside_images_last50"] = outside_fraction(spec.output_dir)
    return row


def substitution_row(base: runner.RunSpec) -> dict:
    ah, bh = runner.load_domains(base)
    tic = time.perf_counter()
    structures = substitution.substitution(ah.structures, bh.structures, base.element_a,
                                           base.element_b)
    classes = encoding.class_symbols(base.train.classes, base.element_a, base.element_b)
    evals = evaluation.evaluate_structures(structures, base.element_a, base.element_b,
                                           d1=base.train.d1, d2=base.train.d2, classes=classes)
    counts = evaluation.count_verdicts(structures, evals)
    # against the training structures only (it is the other reference itself)
    counts["novel"] = candidates.count_novel(structures, evals, ah.structures + bh.structures)
    counts["wall_s"] = round(time.perf_counter() - tic, 1)
    return {"runs": [{"seed": None, "counts": counts}], "summary": summarize([counts])}


def markdown(table: dict, base: runner.RunSpec, seeds: list[int]) -> str:
    lines = [f"# Ablation: {base.element_a}-{base.element_b}-H", "",
             f"Seeds {', '.join(map(str, seeds))}; {base.train.epochs} epochs per stage; "
             f"d1 = {base.train.d1}, d2 = {base.train.d2} A. Mean +- std over seeds. Novel: "
             "unique strictly good structures that StructureMatcher matches to no "
             "substitution-baseline and no training structure (for substitution itself: "
             "to no training structure). Rows marked * re-sample the full row's trained "
             "state: their wall time is sampling + evaluation only.", "",
             "| method | generated | ternary | good (paper) | good (strict) | unique | novel "
             "| wall (s) |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for variant, row in table.items():
        s = row["summary"]
        cells = [f"{s[k]['mean']:.1f} +- {s[k]['std']:.1f}" if k in s else "-"
                 for k in COLUMNS]
        wall = f"{s['wall_s']['mean']:.0f}" if "wall_s" in s else "-"
        star = " *" if variant in SAMPLING_ONLY else ""
        n_runs = len(row.get("runs", []))
        if variant != "substitution" and n_runs != len(seeds):
            star += f" ({n_runs} of {len(seeds)} seeds)"
        lines.append(f"| {LABELS[variant]}{star} | " + " | ".join(cells) + f" | {wall} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    cli.start_script(argv, FLAGS, HERE)
    unknown = [v for v in FLAGS.variants if v != "crystalgan" and v not in VARIANTS]
    if unknown:
        raise app.UsageError(f"--variants: unknown {unknown}; choose from "
                             f"{['crystalgan', *VARIANTS]}")
    try:
        base = cli.spec_from_flags(FLAGS, data_root=HERE.parent)
    except cli.UsageError as err:
        raise app.UsageError(str(err)) from None
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if FLAGS.collect:
        return collect([Path(p) for p in FLAGS.collect], Path(FLAGS.output_dir), base)
    out = Path(FLAGS.output_dir)
    seeds = [int(s) for s in FLAGS.seeds]
    table: dict[str, dict] = {}
    trained: dict[int, runner.RunResult] = {}
    try:
        for variant in FLAGS.variants:
            runs = [run_row(base, variant, seed, out, trained) for seed in seeds]
            table[variant] = {"runs": runs, "summary": summarize([r["counts"] for r in runs])}
            _write(out, table, base, seeds)  # after each row: nothing lost if cut short
        if FLAGS.with_substitution:
            table["substitution"] = substitution_row(base)
    except (StructureFileError, FileExistsError, runner.RunError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    text = _write(out, table, base, seeds)
    print(text)
    return 0


def collect(folders: list[Path], out: Path, base: runner.RunSpec) -> int:
    """Merges several ablation.json files (same system, other seeds) into one table.

    A row keeps the runs of every folder that has it; the substitution row is taken once.
    """
    table: dict[str, dict] = {}
    seeds: list[int] = []
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
        seeds += [s for s in data["seeds"] if s not in seeds]
        for variant, row in data["rows"].items():
            if variant == "substitution":
                table.setdefault(variant, row)
            else:
                for r in row["runs"]:
                    if variant not in SAMPLING_ONLY:
                        r["outside_images_last50"] = outside_fraction(r["output_dir"])
                table.setdefault(variant, {"runs": []})["runs"] += row["runs"]
    for variant, row in table.items():
        row["summary"] = summarize([r["counts"] for r in row["runs"]])
    if "substitution" in table:  # keep it last, as a run writes it
        table["substitution"] = table.pop("substitution")
    text = _write(out, table, base, seeds)
    print(text)
    return 0


def _write(out: Path, table: dict, base: runner.RunSpec, seeds: list[int]) -> str:
    out.mkdir(parents=True, exist_ok=True)
    text = markdown(table, base, seeds)
    (out / "ablation.md").write_text(text)
    (out / "ablation.json").write_text(json.dumps(
        {"system": [base.element_a, base.element_b], "seeds": seeds,
         "epochs": base.train.epochs, "d1": base.train.d1, "d2": base.train.d2,
         "data": [base.data_ah, base.data_bh], "rows": table}, indent=2, default=str))
    return text


if __name__ == "__main__":
    app.run(main, argv=cli.resolve_flagfiles(sys.argv, HERE))
