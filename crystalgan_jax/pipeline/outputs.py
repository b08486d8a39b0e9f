"""What a run writes after training, for a single run and every member of a population
alike: the structure files, symmetry snapping, the report with its novelty count, and the
ASE exports.

Into a run's (or member's) folder, with ``write_files="all"`` (a single run's default):

* ``structures/stage1/{AHB,BHA}/NNN.vasp`` and ``.cif`` (step-1 outputs) and
  ``structures/final/{AHB,BHA}/NNN.vasp`` and ``.cif`` (the generated ternaries; the GAN
  baseline writes ``final/GAN``), real element symbols;
* the report of :mod:`crystalgan_jax.materials.report` (``report.json``, ``report.md``,
  plots) and ``structures.extxyz`` / ``run.db`` (:mod:`crystalgan_jax.materials.export`).

With ``write_files="candidates"`` (a population member's default) no file per sample: every
final sample is evaluated from the generated arrays at once
(:mod:`crystalgan_jax.materials.batch_evaluation`) and kept, with its verdicts, as one frame
of ``structures.extxyz`` and one row of ``run.db``; ``report.json`` has the counts and an
entry for each strictly good structure only, whose ``file`` names its frame
(``structures.extxyz@K``, as ``ase.io.read`` takes it). The counts are the same as
``"all"`` gives (tested). The figures only where asked (``member_figures``).
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import shutil
from pathlib import Path
from typing import Callable, NamedTuple

import jax
import numpy as np
from absl import logging

from crystalgan_jax.core import cells, encoding
from crystalgan_jax.materials import io
from crystalgan_jax.pipeline.prepare import Prepared
from crystalgan_jax.pipeline.spec import RunSpec
from crystalgan_jax import train


class ReportInputs(NamedTuple):
    """What a run's report needs besides its generated structures: nothing of it depends on
    training (:func:`report_inputs`)."""

    options: dict  # the criteria, keyword options of report.write_report
    references: list  # structures a new candidate must not match
    training: list  # the training structures' evaluations (report.evaluate_training)


def report_criteria(spec: RunSpec) -> dict:
    """The criteria a run's report judges by, as keyword options of
    :func:`crystalgan_jax.materials.report.write_report`: the run's d1, d2 and constrained classes."""
    cfg = spec.train
    return {"d1": cfg.d1, "d2": cfg.d2,
            "classes": encoding.class_symbols(cfg.classes, spec.element_a, spec.element_b)}


def report_inputs(spec: RunSpec, ah: io.Domain, bh: io.Domain) -> ReportInputs:
    """The report's criteria, its reference structures
    (:func:`crystalgan_jax.materials.candidates.reference_structures`) and the training structures'
    evaluations. Importing what the report needs (matplotlib, pymatgen's structure matcher)
    is most of it, which is why runs compute it beside training."""
    from crystalgan_jax.materials import candidates
    from crystalgan_jax.materials import report as report_lib

    options = report_criteria(spec)
    references = candidates.reference_structures(ah.structures, bh.structures,
                                                 spec.element_a, spec.element_b)
    training = report_lib.evaluate_training(ah.structures + bh.structures, spec.element_a,
                                            spec.element_b, **options)
    return ReportInputs(options, references, training)


def write_outputs(spec: RunSpec, state: train.TrainState, prepared: Prepared,
                  out: Path, metrics: list[dict], log: Callable[[str], None],
                  inputs: ReportInputs | concurrent.futures.Future | None = None
                  ) -> tuple[dict, dict | None]:
    """Generates from a trained ``state`` with ``spec.train``'s sampling settings and writes
    :func:`write_member_outputs` into ``out``. Returns (files, report).

    Separate from training so that sampling-only variants (experiments/ablation.py) reuse
    one trained state.
    """
    generated = train.generate(state, prepared.nets, spec.train, prepared.x, prepared.y,
                                  jax.random.fold_in(state.key, 1))
    return write_member_outputs(spec, jax.tree_util.tree_map(np.asarray, generated),
                                prepared.layout, prepared.ah, prepared.bh, out, metrics, log,
                                inputs)


def files_to_write(spec: RunSpec, member: bool) -> str:
    """``spec.write_files`` with "auto" resolved: "all" for a single run, "candidates" for
    a member of a population."""
    if spec.write_files != "auto":
        return spec.write_files
    return "candidates" if member else "all"


def write_member_outputs(spec: RunSpec, generated: dict, layout: encoding.Layout,
                         ah: io.Domain, bh: io.Domain, out: Path, metrics: list[dict],
                         log: Callable[[str], None],
                         inputs: ReportInputs | concurrent.futures.Future | None = None,
                         member: bool = False) -> tuple[dict, dict | None]:
    """Everything a run (or one member of a population) writes after training, into
    ``out``: the generated structures (snapped where ``snap_symprec`` > 0), if
    ``spec.evaluate`` the report with the novelty count, and the exports
    (``structures.extxyz``, ``run.db``). Returns (files, report); files is empty where no
    file per sample is written (:func:`files_to_write`).

    ``generated``: :func:`crystalgan_jax.train.generate`'s output for this run, as
    host arrays. ``inputs``: :func:`report_inputs` for ``spec``, or its future, computed
    ahead; computed here where None. ``member``: ``out`` is a population member's folder
    (what "auto" and ``member_figures`` decide by).
    """
    cfg = spec.train
    figures = not member or spec.member_figures
    if spec.evaluate:
        if inputs is None:
            inputs = report_inputs(spec, ah, bh)
        elif isinstance(inputs, concurrent.futures.Future):
            inputs = inputs.result()
    provenance = {"seed": spec.seed, "method": cfg.method,
                  "system": f"{spec.element_a}-{spec.element_b}-H"}
    if files_to_write(spec, member) == "candidates":
        report, (extxyz, database) = write_samples_file(
            spec, generated, layout, ah, bh, out, metrics, log,
            inputs if spec.evaluate else None, figures, provenance)
        log(f"final structures in {extxyz} and {database} "
            f"(e.g. `ase db {database} good_strict=True`)")
        return {}, report
    files = write_structures(generated, layout, out, log)
    if cfg.snap_symprec > 0:
        snap_files(files.get("final", {}), cfg.snap_symprec, log)
    report = None
    if spec.evaluate:
        from crystalgan_jax.materials import report as report_lib

        report = report_lib.write_run_report(out, files, ah.structures + bh.structures,
                                             spec.element_a, spec.element_b, metrics,
                                             references=inputs.references,
                                             training_evaluations=inputs.training,
                                             figures=figures, **inputs.options)
    from crystalgan_jax.materials import export

    extxyz, database = export.write_exports(out, files.get("final", {}), report, provenance)
    log(f"final structures also in {extxyz} and {database} "
        f"(e.g. `ase db {database} good_strict=True`)")
    return files, report


def write_members(jobs: list[tuple[RunSpec, dict, Path, list[dict]]],
                  layout: encoding.Layout, ah: io.Domain, bh: io.Domain,
                  log: Callable[[str], None],
                  inputs: ReportInputs | concurrent.futures.Future | None,
                  workers: int | None = None) -> list[tuple[dict, dict | None]]:
    """:func:`write_member_outputs` for each population member ``(spec, generated, folder,
    metrics)``, in ``workers`` processes (None: one per core, at most one per member).

    The members' host work (decoding, snapping, StructureMatcher, the files) is Python
    that holds the GIL, so processes rather than threads; each is started once
    (``spawn``: the parent runs JAX's threads, which ``fork`` would copy mid-flight) and
    given the report's inputs once. A member's log lines come back with its result.
    Returns (files, report) per job, in order.
    """
    if isinstance(inputs, concurrent.futures.Future):
        inputs = inputs.result()
    workers = min(len(jobs), workers or os.cpu_count() or 1)
    if workers <= 1:
        return [write_member_outputs(spec, generated, layout, ah, bh, out, metrics, log,
                                     inputs, member=True)
                for spec, generated, out, metrics in jobs]
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(
            workers, mp_context=context, initializer=_start_worker,
            initargs=(layout, ah, bh, inputs)) as pool:
        futures = [pool.submit(_member_in_worker, *job) for job in jobs]
        results = []
        for future in futures:  # in member order, so that the log reads in order
            files, report, lines = future.result()
            for line in lines:
                log(line)
            results.append((files, report))
    return results


_WORKER: dict = {}  # what every member of a worker process shares: set by _start_worker


def _start_worker(layout, ah, bh, inputs) -> None:
    _WORKER.update(layout=layout, ah=ah, bh=bh, inputs=inputs)


def _member_in_worker(spec: RunSpec, generated: dict, out: Path, metrics: list[dict]):
    lines: list[str] = []
    files, report = write_member_outputs(spec, generated, _WORKER["layout"], _WORKER["ah"],
                                         _WORKER["bh"], out, metrics, lines.append,
                                         _WORKER["inputs"], member=True)
    return files, report, lines


def write_samples_file(spec: RunSpec, generated: dict, layout: encoding.Layout,
                       ah: io.Domain, bh: io.Domain, out: Path, metrics: list[dict],
                       log: Callable[[str], None], inputs: ReportInputs | None,
                       figures: bool, provenance: dict) -> tuple[dict | None, tuple[Path, Path]]:
    """``write_files="candidates"``: the final samples evaluated in batches and written as
    the frames of ``structures.extxyz`` and rows of ``run.db``, and the report (counts,
    the strictly good structures) where ``inputs`` is given. Returns (report or None, the
    two file paths).

    Samples that do not decode are skipped as :func:`write_structures` skips them; where
    ``snap_symprec`` > 0 each sample is snapped as :func:`snap_files` snaps a file, and
    a snapped one is evaluated on its own. Only the strictly good ones get a space group
    and StructureMatcher's groups.
    """
    import ase

    from crystalgan_jax.materials import batch_evaluation, candidates, evaluation, export
    from crystalgan_jax.materials import report as report_lib

    cfg = spec.train
    shutil.rmtree(out / "structures", ignore_errors=True)  # an earlier pass's files
    out.mkdir(parents=True, exist_ok=True)
    options = report_criteria(spec) if inputs is None else inputs.options
    named: dict[str, list] = {}
    evaluations, frames = [], []
    snapped = total = 0
    for direction, crystals in generated["final"].items():
        crystals = jax.tree_util.tree_map(np.asarray, crystals)
        kept, skipped = [], {}
        for i in range(crystals.lattice.shape[0]):
            reason = _undecodable(encoding.index(crystals, i))
            if reason:
                skipped.setdefault(_reason_kind(reason), []).append(f"{direction}/{i:03d}")
            else:
                kept.append(i)
        if skipped:
            log(f"skipped {sum(map(len, skipped.values()))} of {crystals.lattice.shape[0]} "
                f"final {direction} samples: " + "; ".join(
                    f"{len(v)} {k} ({_first_few(v)})" for k, v in skipped.items()))
        batch = encoding.index(crystals, np.asarray(kept, int))
        evs = batch_evaluation.evaluate_batch(batch, layout, spec.element_a, spec.element_b,
                                              **options)
        structures: list = [None] * len(kept)
        if cfg.snap_symprec > 0:  # spglib needs each structure; most stay P1
            for k in range(len(kept)):
                total += 1
                structure = encoding.decode(encoding.index(batch, k), layout)
                new, number = candidates.snap_to_symmetry(structure, cfg.snap_symprec)
                structures[k] = new
                if number > 1:
                    snapped += 1
                    evs[k] = evaluation.evaluate_structure(
                        new, spec.element_a, spec.element_b, **{**options, "symprec": None,
                                                                "max_neighbours": 0})
        symbols = np.concatenate([[s] * n for s, n in zip(layout.symbols, layout.rows)])
        for k, i in enumerate(kept):
            if evs[k].good_strict:  # space group and matching: the strictly good only
                if structures[k] is None:
                    structures[k] = encoding.decode(encoding.index(batch, k), layout)
                evs[k] = batch_evaluation.with_spacegroup(
                    evs[k], structures[k], options.get("symprec", evaluation.SYMPREC))
            if structures[k] is not None:
                from pymatgen.io.ase import AseAtomsAdaptor

                atoms = AseAtomsAdaptor.get_atoms(structures[k])
            else:  # from the arrays: no pymatgen structure for a sample nothing else needs
                one = encoding.index(batch, k)
                rows = np.concatenate([np.asarray(m) > 0.5 for m in one.masks])
                cart = np.concatenate([np.asarray(p, np.float64) for p in one.positions])
                lattice = np.asarray(one.lattice, np.float64)
                if one.fractional:
                    cart = cart @ lattice
                atoms = ase.Atoms(symbols=list(symbols[rows]), positions=cart[rows],
                                  cell=lattice, pbc=True)
            name = f"{export.EXTXYZ}@{len(frames)}"
            frames.append((atoms, {**provenance, "direction": str(direction), "sample": int(i),
                                   "file": name,
                                   "reduced_formula": batch_evaluation.reduced_formula(
                                       evs[k].symbols)}))
            named.setdefault(direction, []).append((str(out / name), structures[k]))
            evaluations.append(evs[k])
    if cfg.snap_symprec > 0:
        log(f"symmetry: {snapped} of {total} final structures snapped "
            f"(symprec {cfg.snap_symprec} A)")
    report = None
    if inputs is not None:
        report = report_lib.write_report(
            out, named, ah.structures + bh.structures, spec.element_a, spec.element_b,
            metrics, references=inputs.references, training_evaluations=inputs.training,
            evaluations=evaluations, entries="strict", figures=figures, **inputs.options)
        by_name = {s["file"]: s for s in report["structures"]}
        for atoms_keys, ev in zip(frames, evaluations):
            entry = by_name.get(atoms_keys[1]["file"]) or ev.to_json()
            atoms_keys[1].update(export.structure_keys(entry))
    return report, export.write_frames(out, frames)


def write_structures(generated: dict[str, dict[str, encoding.Crystal]], layout: encoding.Layout,
                     out: Path, log: Callable[[str], None]) -> dict[str, dict[str, list[Path]]]:
    """Decodes and writes every generated crystal as POSCAR (.vasp) and CIF.

    A sample that does not decode (no atoms, or a degenerate cell) is skipped; file
    numbers keep the sample index, so gaps show which. The skipped samples are summarised
    in one ``log`` line per kind (count per reason, the first few named) and listed one by
    one at ``--verbosity=1``. Files of an earlier pass (a resumed run) are removed first,
    so none of them can be mistaken for this run's.
    """
    shutil.rmtree(out / "structures", ignore_errors=True)
    files: dict[str, dict[str, list[Path]]] = {}
    skipped: dict[str, dict[str, list[str]]] = {}  # kind -> reason -> samples
    for kind, directions in generated.items():
        files[kind] = {}
        for direction, crystals in directions.items():
            folder = out / "structures" / kind / direction
            folder.mkdir(parents=True, exist_ok=True)
            paths = []
            crystals = jax.tree_util.tree_map(np.asarray, crystals)
            for i in range(crystals.lattice.shape[0]):
                one = encoding.index(crystals, i)
                reason = _undecodable(one)
                if reason:
                    logging.vlog(1, "skipped %s/%s/%03d: %s", kind, direction, i, reason)
                    skipped.setdefault(kind, {}).setdefault(_reason_kind(reason), []).append(
                        f"{direction}/{i:03d}")
                    continue
                structure = encoding.decode(one, layout)
                path = folder / f"{i:03d}.vasp"
                io.write_poscar(structure, path, comment=f"{kind} {direction} {i:03d}")
                io.write_cif(structure, path.with_suffix(".cif"))
                paths.append(path)
            files[kind][direction] = paths
    for kind, reasons in skipped.items():
        total = sum(len(v) for v in files[kind].values()) + sum(map(len, reasons.values()))
        log(f"skipped {sum(map(len, reasons.values()))} of {total} {kind} samples: "
            + "; ".join(f"{len(names)} {reason} ({_first_few(names)})"
                        for reason, names in reasons.items()))
    return files


def _reason_kind(reason: str) -> str:
    """The reason without its numbers, so that like failures are counted together."""
    return reason.split(" (")[0]


def _first_few(names: list[str], shown: int = 3) -> str:
    return ", ".join(names[:shown]) + (f", ... {len(names) - shown} more" if len(names) > shown else "")


# Below this spacing of lattice planes (Angstrom) a generated cell is no crystal, and
# pymatgen's CIF reader refuses it; such samples are logged and not written.
MIN_PLANE_SPACING = 0.1


def _undecodable(crystal: encoding.Crystal) -> str | None:
    if not any(np.any(np.asarray(m) > 0.5) for m in crystal.masks):
        return "no atom has occupancy > 0.5"
    lattice = np.asarray(crystal.lattice, np.float64)
    if abs(np.linalg.det(lattice)) < io.MIN_CELL_VOLUME:
        return "degenerate cell (zero volume)"
    spacing = float(cells.plane_spacings(lattice).min())
    if spacing < MIN_PLANE_SPACING:
        return f"degenerate cell (lattice planes {spacing:.3g} A apart)"
    return None


def snap_files(files: dict[str, list[Path]], symprec: float,
                log: Callable[[str], None]) -> None:
    """Rewrites each structure file that has a space group above P1 at ``symprec`` as its
    idealised primitive standard cell (:func:`crystalgan_jax.materials.candidates.snap_to_symmetry`)."""
    from crystalgan_jax.materials import candidates

    snapped = total = 0
    for paths in files.values():
        for path in paths:
            total += 1
            structure = io.read_structure(path)
            new, number = candidates.snap_to_symmetry(structure, symprec)
            if number > 1:
                snapped += 1
                io.write_poscar(new, path, comment=f"{path.stem} snapped to space group {number}")
                io.write_cif(new, path.with_suffix(".cif"))
    log(f"symmetry: {snapped} of {total} final structures snapped (symprec {symprec} A)")


