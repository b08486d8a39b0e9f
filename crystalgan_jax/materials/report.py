"""Evaluation report of generated structures: report.json, report.md and figures.

:func:`write_report` evaluates every generated structure with
:mod:`crystalgan_jax.materials.evaluation`, counts the verdicts (generated, ternary, good (paper),
good (strict), unique), and writes

- ``report.json``: criteria, ``counts`` over all final structures, counts per group
  (e.g. the AHB and BHA directions), and one entry per structure file;
- ``report.md``: the same as tables, with the figures embedded;
- ``distances.png``: nearest-neighbour distance histograms, generated vs training, with
  d1 and d2 marked (:func:`plot_distance_histograms`);
- ``losses.png``: loss curves from a metrics list, where one is given (:func:`plot_losses`).

:func:`write_run_report` does the same for the structure files a training run wrote.
"""

from __future__ import annotations

import functools
import json
import math
import os
import threading
from pathlib import Path
from typing import Any, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from pymatgen.core import Structure  # noqa: E402

from crystalgan_jax.materials import evaluation, io  # noqa: E402
from crystalgan_jax.materials.evaluation import StructureEvaluation  # noqa: E402
from crystalgan_jax.materials.io import HYDROGEN  # noqa: E402

DISTANCES_PNG = "distances.png"
LOSSES_PNG = "losses.png"
# Histogram x range: at least up to twice d2, at most this far (Angstrom); farther values
# are drawn in the last bin so that one exploded cell does not squash the plot.
HISTOGRAM_MAX = 8.0

Named = Sequence[tuple[str, Structure]]


def pair_type_distances(evaluations: Sequence[StructureEvaluation], element_a: str,
                        element_b: str) -> dict[str, np.ndarray]:
    """Nearest-neighbour distances (Angstrom) per pair type, pooled over structures.

    - metal-metal: each metal atom's nearest metal (A or B);
    - H-H: each H atom's nearest H;
    - metal-H: each H atom's nearest metal (the size of its interstitial site).
    Own periodic images count, as in the evaluation; absent partners give no entry.
    """
    metals = {element_a, element_b}
    groups: dict[str, list[float]] = {"metal-metal": [], "H-H": [], "metal-H": []}
    for ev in evaluations:
        for symbol, row in zip(ev.symbols, ev.site_nearest):
            to_metal = min((d for s, d in row.items() if s in metals), default=math.inf)
            if symbol in metals:
                groups["metal-metal"].append(to_metal)
            elif symbol == HYDROGEN:
                groups["H-H"].append(row.get(HYDROGEN, math.inf))
                groups["metal-H"].append(to_metal)
    return {k: np.asarray([d for d in v if math.isfinite(d)]) for k, v in groups.items()}


# pyplot keeps global state (its figures, the mathtext parser's caches) and is not
# thread-safe; experiments/table2.py writes the reports of two methods from two threads
# (a run there failed in mathtext's parser without this lock).
PYPLOT = threading.Lock()  # pyplot is not thread-safe: every figure is drawn under it


def _one_at_a_time(plot):
    """``plot`` under :data:`PYPLOT`."""
    @functools.wraps(plot)
    def locked(*args, **kwargs):
        with PYPLOT:
            return plot(*args, **kwargs)
    return locked


@_one_at_a_time
def plot_distance_histograms(generated: Sequence[StructureEvaluation],
                             training: Sequence[StructureEvaluation], element_a: str,
                             element_b: str, path: str | os.PathLike,
                             d1: float, d2: float, bins: int = 40) -> Path:
    """Histograms of :func:`pair_type_distances`, generated vs training, one panel each.

    Each histogram is normalised to fractions of its own atoms so that sets of different
    sizes compare; d1 and d2 are dashed vertical lines. Saved as PNG at ``path``.
    """
    gen = pair_type_distances(generated, element_a, element_b)
    train = pair_type_distances(training, element_a, element_b)
    titles = {"metal-metal": f"metal-metal ({element_a}, {element_b}): constrained",
              "H-H": "H-H: constrained", "metal-H": "metal-H (H to nearest metal): free"}
    fig, axes = plt.subplots(1, len(gen), figsize=(5.2 * len(gen), 4.2), squeeze=False)
    for ax, name in zip(axes[0], gen):
        pooled = np.concatenate([gen[name], train[name]])
        top = max(2.0 * d2, float(np.max(pooled)) if pooled.size else 0.0)
        edges = np.linspace(0.0, min(top, HISTOGRAM_MAX), bins + 1)
        # training filled, generated as a thick outline: both stay visible where they overlap
        for values, label, style in (
                (train[name], "training", dict(histtype="stepfilled", alpha=0.35,
                                               color="tab:blue")),
                (gen[name], "generated", dict(histtype="step", linewidth=2.0,
                                              color="tab:red"))):
            if values.size == 0:
                continue
            ax.hist(np.clip(values, edges[0], edges[-1]), bins=edges,
                    weights=np.full(values.size, 1.0 / values.size),
                    label=f"{label} ({values.size} atoms)", **style)
        ax.axvline(d1, color="k", linestyle="--", linewidth=1.0, label=f"d1 = {d1:g} A")
        ax.axvline(d2, color="k", linestyle=":", linewidth=1.4, label=f"d2 = {d2:g} A")
        ax.set_title(titles.get(name, name))
        xlabel = "nearest-neighbour distance (A)"
        if pooled.size and float(np.max(pooled)) > edges[-1]:
            xlabel += f"; last bin also holds > {edges[-1]:.1f} A"
        ax.set_xlabel(xlabel)
        ax.set_ylabel("fraction of atoms")
        ax.legend(fontsize=8)
    fig.suptitle("Nearest-neighbour distances: generated vs training")
    return save_figure(fig, path)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.floating, np.integer)) and not isinstance(value, bool)


@_one_at_a_time
def plot_losses(metrics: Sequence[Mapping[str, Any]], path: str | os.PathLike) -> Path | None:
    """Loss curves: one panel per ``"stage"``, one line per numeric key (epoch counters aside).

    Args:
      metrics: dicts like ``{"stage": "step1", "epoch": 3, "L_G1": 1.2, "L_D1": 0.7}``; a
        dict without ``"epoch"`` is placed at its running index within its stage.
      path: where the PNG goes.
    Returns:
      ``path``, or ``None`` (nothing written) when there is no numeric value to plot.
    The y axis of a panel is logarithmic when all its values are positive, and symmetric
    logarithmic (linear within 1e-3 of zero) otherwise, so that a loss that reaches 0
    (a satisfied hinge) or goes negative (the paper's L_geo2) still shows.
    """
    stages: dict[str, list[Mapping[str, Any]]] = {}
    for row in metrics:
        stages.setdefault(str(row.get("stage", "")), []).append(row)
    curves: dict[str, dict[str, tuple[list[float], list[float]]]] = {}
    for stage, rows in stages.items():
        for k, row in enumerate(rows):
            x = float(row["epoch"]) if _is_number(row.get("epoch")) else float(k)
            for name, value in row.items():
                if (name == "stage" or "epoch" in name or not _is_number(value)
                        or not math.isfinite(value)):
                    continue
                xs, ys = curves.setdefault(stage, {}).setdefault(name, ([], []))
                xs.append(x)
                ys.append(float(value))
    if not curves:
        return None
    fig, axes = plt.subplots(1, len(curves), figsize=(5.5 * len(curves), 4.0), squeeze=False)
    for ax, (stage, lines) in zip(axes[0], curves.items()):
        for name, (xs, ys) in lines.items():
            ax.plot(xs, ys, label=name, linewidth=1.2, marker="." if len(xs) < 30 else None)
        if all(y > 0 for _, ys in lines.values() for y in ys):
            ax.set_yscale("log")
        else:
            ax.set_yscale("symlog", linthresh=1e-3)
        ax.set_title(stage if stage.lower().startswith("stage") else
                     f"stage {stage}" if stage else "losses")
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, ncol=2 if len(lines) > 5 else 1)
    return save_figure(fig, path)


# Figure margins in inches, for a row of panels: room for tick labels and a rotated y
# label on the left, the x label below, a title (and the suptitle, where there is one)
# above. Fixed rather than fig.tight_layout(), which measures every text on a throwaway
# draw: half of the report figures' time.
_MARGINS_IN = {"left": 0.85, "right": 0.2, "bottom": 0.62, "top": 0.42, "between": 0.85,
               "suptitle": 0.3}


def _fixed_layout(fig) -> None:
    width, height = fig.get_size_inches()
    m = _MARGINS_IN
    top = m["top"] + (m["suptitle"] if fig.get_suptitle() else 0.0)
    panels = len(fig.axes)
    panel = (width - m["left"] - m["right"] - (panels - 1) * m["between"]) / panels
    fig.subplots_adjust(left=m["left"] / width, right=1 - m["right"] / width,
                        bottom=m["bottom"] / height, top=1 - top / height,
                        wspace=m["between"] / panel)


def save_figure(fig, path: str | os.PathLike) -> Path:
    """Saves ``fig`` as ``path`` (folders made) with the fixed margins, and closes it."""
    _fixed_layout(fig)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _display_path(path: str, output_dir: Path) -> str:
    """``path`` relative to the report folder, so that report.md links work."""
    try:
        return os.path.relpath(path, output_dir)
    except ValueError:  # another drive on Windows
        return str(path)


def _fmt(x: float | None, digits: int = 3) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{x:.{digits}f}"


def _candidates(structures: Sequence[Mapping[str, Any]]) -> list[str]:
    """Markdown lines: one row per StructureMatcher group of the strictly good structures."""
    groups: dict[int, list[Mapping[str, Any]]] = {}
    for s in structures:
        if s["good_strict"]:
            groups.setdefault(s["unique_group"], []).append(s)
    if not groups:
        return ["No structure passes the strict criterion; see the reasons below."]
    lines = ["Strictly good structures, one per StructureMatcher group (the first file of the "
             "group; the others are the same structure).", "",
             "| file | formula | space group | V/atom (A^3) | min distances (A) | same as |",
             "| --- | --- | --- | ---: | --- | --- |"]
    for members in groups.values():
        s = members[0]
        group = s["spacegroup_symbol"]
        sg = "-" if group is None else f"{group} ({s['spacegroup_number']})"
        dists = ", ".join(f"{k} {_fmt(v, 2)}" for k, v in s["min_distances_A"].items())
        same = ", ".join(m["file"] for m in members[1:]) or "-"
        lines.append(f"| {s['file']} | {s['formula']} | {sg} | "
                     f"{_fmt(s['volume_per_atom_A3'], 2)} | {dists} | {same} |")
    return lines


def _markdown(report: Mapping[str, Any], figures: Mapping[str, str | None]) -> str:
    c = report["criteria"]
    lines = [f"# CrystalGAN evaluation: {report['system']}", "",
             f"Constrained classes {', '.join(c['classes'])}: nearest same-class distance in "
             f"[{c['d1_A']:g}, {c['d2_A']:g}] A (good, paper). Strict also needs no pair "
             f"closer than {c['covalent_factor']:g} x sum of covalent radii and "
             f"{c['volume_per_atom_range_A3'][0]:g}..{c['volume_per_atom_range_A3'][1]:g} A^3 "
             "per atom; unique: StructureMatcher groups among the strict ones.", "",
             "## Counts", "",
             "| set | generated | ternary | good (paper) | good (strict) | unique |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    keys = ("generated", "ternary", "good_paper", "good_strict", "unique")
    rows = [("**all**", report["counts"])] + list(report["counts_by_group"].items())
    for name, counts in rows:
        lines.append(f"| {name} | " + " | ".join(str(counts[k]) for k in keys) + " |")
    if "novel" in report["counts"]:
        lines += ["", f"Novel: {report['counts']['novel']} of the unique strictly good "
                  "structures match (StructureMatcher) no substitution-baseline and no "
                  "training structure."]
    lines += ["", "## Candidates for DFT", ""] + _candidates(report["structures"])
    lines += ["", "## Structures", "",
              "| file | set | formula | space group | V/atom (A^3) | min distances (A) | "
              "ternary | good (paper) | good (strict) | why not |",
              "| --- | --- | --- | --- | ---: | --- | :-: | :-: | :-: | --- |"]
    for s in report["structures"]:
        group = s["spacegroup_symbol"]
        sg = "-" if group is None else f"{group} ({s['spacegroup_number']})"
        dists = ", ".join(f"{k} {_fmt(v, 2)}" for k, v in s["min_distances_A"].items())
        why = next((r for r in (s["reasons"]["ternary"], s["reasons"]["good_paper"],
                                s["reasons"]["good_strict"]) if r), "")
        yes = {True: "yes", False: "no"}
        lines.append(f"| {s['file']} | {s['group']} | {s['formula']} | {sg} | "
                     f"{_fmt(s['volume_per_atom_A3'], 2)} | {dists} | {yes[s['ternary']]} | "
                     f"{yes[s['good_paper']]} | {yes[s['good_strict']]} | "
                     f"{why.replace('|', '/')} |")
    lines += ["", "## Figures", ""]
    if figures.get("distance_histograms"):
        lines += [f"![Nearest-neighbour distances, generated vs training]"
                  f"({figures['distance_histograms']})", ""]
    if figures.get("loss_curves"):
        lines += [f"![Loss curves]({figures['loss_curves']})", ""]
    return "\n".join(lines) + "\n"


def evaluate_training(training_structures: Sequence[Structure], element_a: str,
                      element_b: str, **options: Any) -> list[StructureEvaluation]:
    """The training structures' evaluations that :func:`write_report`'s histograms use.

    Their distances only, no space groups (spglib's is most of an evaluation's time). ``options``: those of
    :func:`crystalgan_jax.materials.evaluation.evaluate_structure`, as given to :func:`write_report`.
    Nothing here depends on the generated structures, so a run computes it while it trains.
    """
    return evaluation.evaluate_structures(training_structures, element_a, element_b,
                                          **{**options, "symprec": None})


def write_report(output_dir: str | os.PathLike,
                 generated: Mapping[str, Named] | Named,
                 training_structures: Sequence[Structure], element_a: str, element_b: str,
                 metrics: Sequence[Mapping[str, Any]] | None = None, *,
                 d1: float, d2: float,
                 cutoff: float = evaluation.CUTOFF, symprec: float = evaluation.SYMPREC,
                 classes: evaluation.Classes | None = None,
                 covalent_factor: float = evaluation.COVALENT_FACTOR,
                 volume_per_atom_range: tuple[float, float] = evaluation.VOLUME_PER_ATOM_RANGE,
                 references: Sequence[Structure] | None = None,
                 training_evaluations: Sequence[StructureEvaluation] | None = None,
                 evaluations: Sequence[StructureEvaluation] | None = None,
                 entries: str = "all", figures: bool = True,
                 ) -> dict[str, Any]:
    """Evaluates the final structures and writes report.json, report.md and the figures.

    Args:
      output_dir: folder for the report (created).
      generated: ``{group: [(file path, Structure), ...]}`` (e.g. groups "AHB" and "BHA",
        the two directions), or one such list (group "generated"). The counts cover all
        groups together, as the spec counts both directions.
      training_structures: the binary training structures (both domains), for the
        histograms.
      element_a, element_b: the system's metals.
      metrics: optional loss records for :func:`plot_losses`.
      d1, d2, cutoff, symprec, classes, covalent_factor, volume_per_atom_range: as in
        :func:`crystalgan_jax.materials.evaluation.evaluate_structure`.
      references: structures a candidate must not match to be new (substitution baseline
        and training; :func:`crystalgan_jax.materials.candidates.reference_structures`); where
        given, ``counts["novel"]`` counts the unique strictly good ones that match none.
      training_evaluations: :func:`evaluate_training` of ``training_structures`` with the
        same criteria, computed ahead (a run does it while it trains); computed here
        where None.
      evaluations: the evaluation of each generated structure in ``generated`` order,
        computed ahead (:func:`crystalgan_jax.materials.batch_evaluation.evaluate_batch`);
        evaluated here where None. A structure may then be None where it is not
        strictly good (only those are matched).
      entries: "all" (one ``structures`` entry per generated structure) or "strict" (the
        strictly good ones only: a population member's report, whose every sample is in
        its structures.extxyz and run.db instead).
      figures: draw distances.png and losses.png.
    Returns:
      The report dict written to report.json.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if not isinstance(generated, Mapping):
        generated = {"generated": generated}
    options = dict(d1=d1, d2=d2, cutoff=cutoff, symprec=symprec, classes=classes,
                   covalent_factor=covalent_factor, volume_per_atom_range=volume_per_atom_range)
    if entries not in ("all", "strict"):
        raise ValueError(f"entries must be 'all' or 'strict', got {entries!r}")
    named = [(group, str(path), structure)
             for group, items in generated.items() for path, structure in items]
    structures = [s for _, _, s in named]
    if evaluations is None:
        evaluations = evaluation.evaluate_structures(structures, element_a, element_b,
                                                     **options)
    elif len(evaluations) != len(structures):
        raise ValueError(f"{len(evaluations)} evaluations given for {len(structures)} "
                         "structures")
    if not figures:
        training = []
    elif training_evaluations is None:
        training = evaluate_training(training_structures, element_a, element_b, **options)
    elif len(training_evaluations) != len(training_structures):
        raise ValueError(f"{len(training_evaluations)} training evaluations given for "
                         f"{len(training_structures)} training structures")
    else:
        training = list(training_evaluations)

    # StructureMatcher's groups of the strictly good ones, matched once: the unique and
    # the novel counts both take them (matching is most of a report's time)
    strict = [k for k, e in enumerate(evaluations) if e.good_strict]
    strict_labels = evaluation.unique_groups([structures[k] for k in strict])
    labels = dict(zip(strict, strict_labels))
    counts = {"generated": len(evaluations),
              "ternary": sum(e.ternary for e in evaluations),
              "good_paper": sum(e.good_paper for e in evaluations),
              "good_strict": len(strict), "unique": len(set(strict_labels))}
    if references is not None:
        from crystalgan_jax.materials import candidates

        counts["novel"] = candidates.count_novel(structures, evaluations, references,
                                                 labels=strict_labels)
    by_group = {}
    for group in generated:
        members = [k for k, (g, _, _) in enumerate(named) if g == group]
        by_group[group] = evaluation.count_verdicts([structures[k] for k in members],
                                                    [evaluations[k] for k in members])

    drawn = {"distance_histograms": None, "loss_curves": None}
    if figures:
        drawn["distance_histograms"] = plot_distance_histograms(
            evaluations, training, element_a, element_b, output_dir / DISTANCES_PNG, d1,
            d2).name
    if figures and metrics:
        written = plot_losses(metrics, output_dir / LOSSES_PNG)
        drawn["loss_curves"] = written.name if written else None

    used_classes = classes or evaluation.default_classes(element_a, element_b)
    report = {
        "system": f"{element_a}-{element_b}-H",
        "element_a": element_a,
        "element_b": element_b,
        "criteria": {"d1_A": d1, "d2_A": d2, "cutoff_A": cutoff, "symprec_A": symprec,
                     "classes": [evaluation.class_name(c) for c in used_classes],
                     "covalent_factor": covalent_factor,
                     "volume_per_atom_range_A3": list(volume_per_atom_range)},
        "counts": counts,
        "counts_by_group": by_group,
        "n_training_structures": len(training_structures),
        "figures": drawn,
        "entries": entries,
        "structures": [{"file": _display_path(path, output_dir), "group": group,
                        "unique_group": labels.get(k), **ev.to_json()}
                       for k, ((group, path, _), ev) in enumerate(zip(named, evaluations))
                       if entries == "all" or ev.good_strict],
    }
    (output_dir / "report.json").write_text(json.dumps(report, indent=1))
    (output_dir / "report.md").write_text(_markdown(report, drawn))
    return report


def write_run_report(output_dir: str | os.PathLike,
                     files: Mapping[str, Mapping[str, Sequence[str | os.PathLike]]],
                     training_structures: Sequence[Structure], element_a: str, element_b: str,
                     metrics: Sequence[Mapping[str, Any]] | None = None, kind: str = "final",
                     **options: Any) -> dict[str, Any]:
    """:func:`write_report` for the structure files of a run.

    Args:
      files: ``{kind: {direction: [structure file, ...]}}`` as a run writes them (kinds
        such as "stage1" and "final"; directions such as "AHB" and "BHA").
      kind: which kind is evaluated and counted; the spec counts the final structures.
      options: keyword options of :func:`write_report`.
    """
    if kind not in files:
        raise ValueError(f"no {kind!r} structures among {sorted(files)}")
    generated = {direction: [(str(p), io.read_structure(p)) for p in paths]
                 for direction, paths in files[kind].items()}
    return write_report(output_dir, generated, training_structures, element_a, element_b,
                        metrics, **options)
