"""What experiments/table2.py and experiments/ablation.py share: the tables' library.

Method labels, summaries over seeds, markdown rendering, the substitution row, the
configuration of each row (crystalgan_plus's ingredients given as plain values, not
flags), the mapping of errors to exit codes, and the scheduling of Table 2's population
runs over devices. The scripts keep the flags and pass their values here.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np

from crystalgan_jax.pipeline import outputs
from crystalgan_jax.pipeline.job import run as run_job
from crystalgan_jax.pipeline.prepare import load_domains, prepare
from crystalgan_jax.pipeline.spec import PopulationSpec, make_members
from crystalgan_jax.train import population

# --- labels and columns ------------------------------------------------------------------

SUBSTITUTION_LABEL = "Substitution + Vegard (not learned)"
TABLE2_LABELS = {"gan": "GAN (noise input)", "discogan": "DiscoGAN (step 1 only)",
                 "nocons": "CrystalGAN, no constraints", "crystalgan": "CrystalGAN, constraints",
                 "crystalgan+clash": "CrystalGAN, constraints + clash (this project)",
                 "crystalgan_plus": "crystalgan_plus (this project; see the ablation)",
                 "substitution": SUBSTITUTION_LABEL}
ABLATION_LABELS = {"crystalgan": "CrystalGAN (paper's method)",
                   "plus": "crystalgan_plus (all on)",
                   "-clash": "plus, no clash term", "-windows": "plus, no learned windows",
                   "-spacing": "plus, no plane-spacing term", "-noise": "plus, no input noise",
                   "-sampling": "plus, one sample per input",
                   "-pairings": "plus, fixed pairing only",
                   "-snapshots": "plus, final generators only",
                   "-snap": "plus, no symmetry snapping",
                   "-distances": "plus, no distance matching",
                   "-composition": "plus, no composition matching",
                   "-volume": "plus, no volume rescaling",
                   "substitution": SUBSTITUTION_LABEL}
# The paper's Table 2: good-quality ternary compositions per method.
PAPER = {("Pd", "Ni"): {"gan": 0, "discogan": 0, "nocons": 4, "crystalgan": 9},
         ("Mg", "Ti"): {"gan": 0, "discogan": 0, "nocons": 2, "crystalgan": 8}}
COUNTS = ("generated", "ternary", "good_paper", "good_strict", "unique")
TABLE2_COLUMNS = COUNTS[1:]  # Table 2's counts besides "generated"
ABLATION_COLUMNS = COUNTS + ("novel",)

# Each ablation "-X" row: the crystalgan_plus fields it changes.
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
    "-distances": {"distance_weight": 0.0},
    "-composition": {"composition_weight": 0.0},
    "-volume": {"rescale_volume": False},
}
SAMPLING_ONLY = ("-sampling", "-pairings", "-snapshots", "-snap", "-volume")


def table2_methods() -> tuple[str, ...]:
    from crystalgan_jax.train import METHODS

    return METHODS + ("crystalgan+clash",)


# --- arguments ---------------------------------------------------------------------------

def parse_seeds(items: Sequence[str], flag: str = "--seeds") -> list[int]:
    """Seeds as integers; raises ValueError naming the bad item."""
    if not items:
        raise ValueError(f"{flag}: give at least one seed, e.g. {flag}=0,1,2")
    seeds = []
    for item in items:
        try:
            seeds.append(int(item))
        except ValueError:
            raise ValueError(f"{flag}: {item!r} is not an integer") from None
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"{flag}: a seed is given twice in {seeds}")
    return seeds


def check_choices(items: Sequence[str], known: Sequence[str], flag: str) -> list[str]:
    """``items`` all in ``known`` and none twice; raises ValueError naming the bad one."""
    if not items:
        raise ValueError(f"{flag}: give at least one of {', '.join(known)}")
    for item in items:
        if item not in known:
            raise ValueError(f"{flag}: {item!r} is not one of {', '.join(known)}")
    if len(set(items)) != len(items):
        raise ValueError(f"{flag}: a value is given twice in {list(items)}")
    return list(items)


def check_methods(methods: Sequence[str]) -> list[str]:
    """Table 2's --methods values (train.py's methods and crystalgan+clash)."""
    return check_choices(methods, table2_methods(), "--methods")


def check_variants(variants: Sequence[str]) -> list[str]:
    """The ablation's --variants values; the sampling-only rows need "plus" before them."""
    check_choices(variants, ("crystalgan", *VARIANTS), "--variants")
    for i, variant in enumerate(variants):
        if variant in SAMPLING_ONLY and "plus" not in variants[:i]:
            raise ValueError(f"--variants: row {variant} reuses the 'plus' row: list plus "
                             "before it")
    return list(variants)


# --- configurations ----------------------------------------------------------------------

def plus_fields(overrides: dict | None = None) -> dict:
    """crystalgan_plus's ingredient fields: ``overrides`` (e.g. flag values; None = the
    plus default) over None for every field of ``train.PLUS_DEFAULTS``."""
    from crystalgan_jax.train import PLUS_DEFAULTS

    overrides = overrides or {}
    unknown = set(overrides) - set(PLUS_DEFAULTS)
    if unknown:
        raise ValueError(f"not crystalgan_plus ingredients: {sorted(unknown)}")
    return {k: overrides.get(k) for k in PLUS_DEFAULTS}


def method_config(base, method: str, *, clash_weight: float = 1.0,
                  plus: dict | None = None):
    """Table 2's TrainConfig of one row: its method; l7 = ``clash_weight`` for
    crystalgan+clash; ``plus`` (see :func:`plus_fields`) for crystalgan_plus."""
    if method == "crystalgan+clash":
        weights = dataclasses.replace(base.weights, l7=clash_weight)
        return dataclasses.replace(base, method="crystalgan", weights=weights)
    if method == "crystalgan_plus":
        return dataclasses.replace(base, method=method, **plus_fields(plus))
    return dataclasses.replace(base, method=method)


def variant_config(base, variant: str, plus: dict | None = None):
    """The ablation's TrainConfig of one row: the paper's method ("crystalgan"), or
    crystalgan_plus with ``plus``'s ingredients and the variant's switched off."""
    if variant == "crystalgan":
        return dataclasses.replace(base, method="crystalgan",
                                   **{k: None for k in plus_fields()})
    fields = plus_fields(plus)
    fields.update(VARIANTS[variant])
    weights = base.weights
    if variant == "-clash":
        weights = dataclasses.replace(weights, l7=0.0)
    return dataclasses.replace(base, method="crystalgan_plus", weights=weights, **fields)


# --- summaries and markdown --------------------------------------------------------------

def summarize(per_seed: Sequence[dict], keys: Sequence[str]) -> dict[str, dict[str, float]]:
    """Mean, standard deviation (population), min and max over seeds of each of ``keys``
    that some run has (the others are left out)."""
    out = {}
    for key in keys:
        values = np.array([c[key] for c in per_seed if key in c], float)
        if values.size:
            out[key] = {"mean": float(values.mean()), "std": float(values.std()),
                        "min": float(values.min()), "max": float(values.max())}
    return out


def summarize_table2(per_seed: Sequence[dict]) -> dict:
    """Table 2's summary: the counts, and the screening columns the runs have."""
    from crystalgan_jax.screening import runs as screen_runs

    screened = tuple(k for k in screen_runs.COLUMNS if k in per_seed[0])
    missing = [k for k in COUNTS for c in per_seed if k not in c]
    if missing:  # every run has every count
        raise KeyError(f"a run has no count {missing[0]!r}")
    return summarize(per_seed, COUNTS + screened)


def summarize_ablation(per_seed: Sequence[dict]) -> dict:
    return summarize(per_seed, ABLATION_COLUMNS + ("wall_s",))


def cell(summary: dict, key: str) -> str:
    """``mean +- std`` of one summarized count, or ``-`` where it is absent."""
    if key not in summary:
        return "-"
    return f"{summary[key]['mean']:.1f} +- {summary[key]['std']:.1f}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Lines of a markdown table; every column but the first right-aligned."""
    lines = ["| " + " | ".join(header) + " |",
             "| --- |" + " ---: |" * (len(header) - 1)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def table2_markdown(table: dict, element_a: str, element_b: str, seeds: Sequence[int],
                    epochs: int) -> str:
    """Table 2 in markdown: one row per method (``table``: method -> {"summary": ...})."""
    from crystalgan_jax.screening import runs as screen_runs

    paper = PAPER.get((element_a, element_b), {})
    screened = [k for k in screen_runs.COLUMNS if all(k in r["summary"] for r in table.values())]
    header = ["method", "generated", "ternary", "good (paper)", "good (strict)", "unique",
              "paper", *(screen_runs.COLUMNS[k] for k in screened)]
    rows = [[TABLE2_LABELS[method], *(cell(row["summary"], k) for k in COUNTS),
             str(paper.get(method, "-")), *(cell(row["summary"], k) for k in screened)]
            for method, row in table.items()]
    lines = [f"# Table 2: {element_a}-{element_b}-H",
             "",
             f"Seeds {', '.join(map(str, seeds))}; {epochs} epochs per stage. Counts over the "
             "final structures of both directions; mean +- std over seeds "
             "(substitution is deterministic). 'paper' is the paper's count of good-quality "
             "ternary compositions.",
             "", *markdown_table(header, rows)]
    return "\n".join(lines) + "\n"


def ablation_markdown(table: dict, element_a: str, element_b: str, seeds: Sequence[int],
                      epochs: int, d1: float, d2: float) -> str:
    """The ablation in markdown: one row per variant (``table``: variant -> {"summary",
    "runs"}); sampling-only rows starred, rows missing seeds say how many they have."""
    rows = []
    for variant, row in table.items():
        s = row["summary"]
        star = " *" if variant in SAMPLING_ONLY else ""
        n_runs = len(row.get("runs", []))
        if variant != "substitution" and n_runs != len(seeds):
            star += f" ({n_runs} of {len(seeds)} seeds)"
        wall = f"{s['wall_s']['mean']:.0f}" if "wall_s" in s else "-"
        rows.append([ABLATION_LABELS[variant] + star,
                     *(cell(s, k) for k in ABLATION_COLUMNS), wall])
    header = ["method", "generated", "ternary", "good (paper)", "good (strict)", "unique",
              "novel", "wall (s)"]
    lines = [f"# Ablation: {element_a}-{element_b}-H", "",
             f"Seeds {', '.join(map(str, seeds))}; {epochs} epochs per stage; "
             f"d1 = {d1}, d2 = {d2} A. Mean +- std over seeds. Novel: "
             "unique strictly good structures that StructureMatcher matches to no "
             "substitution-baseline and no training structure (for substitution itself: "
             "to no training structure). Rows marked * re-sample the full row's trained "
             "state: their wall time is sampling + evaluation only.", "",
             *markdown_table(header, rows)]
    return "\n".join(lines) + "\n"


# --- the substitution row ----------------------------------------------------------------

def substitution_counts(base, novel: bool = False) -> dict:
    """Counts of the substitution baseline of ``base``'s data (a spec.RunSpec); with
    ``novel``, also the novel count against the training structures, and the wall time."""
    from crystalgan_jax.core import encoding
    from crystalgan_jax.materials import candidates, evaluation, substitution

    ah, bh = load_domains(base)
    tic = time.perf_counter()
    structures = substitution.substitution(ah.structures, bh.structures, base.element_a,
                                           base.element_b)
    classes = encoding.class_symbols(base.train.classes, base.element_a, base.element_b)
    evals = evaluation.evaluate_structures(structures, base.element_a, base.element_b,
                                           d1=base.train.d1, d2=base.train.d2, classes=classes)
    counts = evaluation.count_verdicts(structures, evals)
    if novel:  # against the training structures only (it is the other reference itself)
        counts["novel"] = candidates.count_novel(structures, evals,
                                                 ah.structures + bh.structures)
        counts["wall_s"] = round(time.perf_counter() - tic, 1)
    return counts


def substitution_row(counts: dict, summarize_fn: Callable = summarize_ablation) -> dict:
    """The table's row of the (deterministic) substitution baseline."""
    return {"runs": [{"seed": None, "counts": counts}], "summary": summarize_fn([counts])}


# --- errors ------------------------------------------------------------------------------

def exit_code(err: BaseException) -> int | None:
    """The scripts' exit status for ``err``: 3 for a diverged run, 128 + the signal for
    an interrupt (SIGINT or SIGTERM: the run saved its state), 2 for bad input, data or
    output folders and checkpoints; None for an error the scripts do not expect."""
    from crystalgan_jax.materials.io import StructureFileError
    from crystalgan_jax.pipeline.errors import DivergenceError, RunError
    from crystalgan_jax.train.checkpoints import CheckpointError

    if isinstance(err, KeyboardInterrupt):
        return 128 + getattr(err, "signum", 2)
    if isinstance(err, DivergenceError):
        return 3
    if isinstance(err, (StructureFileError, FileExistsError, RunError, CheckpointError,
                        ValueError)):
        return 2
    return None


def report_error(err: BaseException, file=None) -> int:
    """Prints ``error: ...`` (not for an interrupt) and returns :func:`exit_code`;
    re-raises an error that has none."""
    code = exit_code(err)
    if code is None:
        raise err
    if not isinstance(err, KeyboardInterrupt):
        print(f"error: {err}", file=file or sys.stderr)
    return code


def write_table(out: Path, name: str, text: str, data: dict) -> str:
    """``<out>/<name>.md`` and ``<out>/<name>.json``; returns ``text``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.md").write_text(text)
    (out / f"{name}.json").write_text(json.dumps(data, indent=2, default=str))
    return text


# --- ablation rows -----------------------------------------------------------------------

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


def stderr_log(msg: str) -> None:
    """The scripts' progress lines: stderr, flushed."""
    print(msg, file=sys.stderr, flush=True)


class Trained(NamedTuple):
    """A trained member a sampling-only ablation row re-samples: its spec (learned settings
    filled in), state and metrics."""

    spec: Any
    state: Any
    metrics: list


def ablation_rows(base, variant: str, seeds: Sequence[int], out: Path,
                  trained: dict[int, Trained], plus: dict | None = None,
                  log: Callable[[str], None] = stderr_log) -> list[dict]:
    """The ablation's row of ``variant``: one entry per seed.

    A training row is one population of the seeds in ``out/<variant>`` (:func:`run_job`;
    the "plus" row's members kept in ``trained``); a sampling-only row re-samples those
    trained states with its own sampling settings, in ``out/<variant>/seed<seed>``.
    """
    cfg = variant_config(base.train, variant, plus)
    log(f"== {variant}, seeds {', '.join(map(str, seeds))}")
    if variant not in SAMPLING_ONLY:
        tic = time.perf_counter()
        pop = PopulationSpec(dataclasses.replace(base, output_dir=str(out / variant), train=cfg),
                             make_members(list(seeds), cfg.weights))
        result = run_job(pop)
        wall = round(time.perf_counter() - tic, 1)
        rows = []
        for i, member in enumerate(result.members):
            spec = result.spec.member_spec(member)
            if variant == "plus":
                trained[member.seed] = Trained(
                    spec, population.member_state(result.state.members, i), result.metrics[i])
            counts = result.reports[i]["counts"]
            log(f"   {variant} seed {member.seed}: {counts}")
            rows.append({"seed": member.seed, "output_dir": spec.output_dir,
                         "wall_s": wall, "counts": {**counts, "wall_s": wall},
                         "outside_images_last50": outside_fraction(spec.output_dir)})
        log(f"   {variant}: {len(seeds)} members in {wall} s (wall_s: the population's)")
        return rows
    rows = []
    for seed in seeds:
        if seed not in trained:
            raise ValueError(f"row {variant} reuses the 'plus' row: list plus first")
        tic = time.perf_counter()
        plus_run = trained[seed]
        spec = dataclasses.replace(
            base, seed=seed, output_dir=str(out / variant / f"seed{seed}"),
            train=dataclasses.replace(plus_run.spec.train, **VARIANTS[variant]))
        prepared = prepare(spec, log)
        folder = Path(spec.output_dir)
        folder.mkdir(parents=True, exist_ok=True)
        _, report = outputs.write_outputs(prepared.spec, plus_run.state, prepared, folder,
                                          plus_run.metrics, log)
        counts = report["counts"]
        wall = round(time.perf_counter() - tic, 1)
        log(f"   {variant} seed {seed}: {counts}, {wall} s")
        rows.append({"seed": seed, "output_dir": spec.output_dir, "wall_s": wall,
                     "counts": {**counts, "wall_s": wall}})
    return rows


def merge_ablations(datas: Sequence[dict]) -> tuple[dict, list[int]]:
    """Several ablation.json contents (same system, other seeds) as one table and its
    seeds: a row keeps the runs of every file that has it; substitution is taken once
    and kept last."""
    table: dict[str, dict] = {}
    seeds: list[int] = []
    for data in datas:
        seeds += [s for s in data["seeds"] if s not in seeds]
        for variant, row in data["rows"].items():
            if variant == "substitution":
                table.setdefault(variant, row)
                continue
            for r in row["runs"]:
                if variant not in SAMPLING_ONLY:
                    r["outside_images_last50"] = outside_fraction(r["output_dir"])
            table.setdefault(variant, {"runs": []})["runs"] += row["runs"]
    for row in table.values():
        row["summary"] = summarize_ablation([r["counts"] for r in row["runs"]])
    if "substitution" in table:
        table["substitution"] = table.pop("substitution")
    return table, seeds


# --- Table 2's population runs over devices ----------------------------------------------
