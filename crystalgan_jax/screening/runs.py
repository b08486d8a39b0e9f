"""Screening of whole runs and folders with CHGNet: journals, one system's hull, tables.

:mod:`crystalgan_jax.screening.relax` (relaxation), :mod:`~crystalgan_jax.screening.hull`
(references, hull) and :mod:`~crystalgan_jax.screening.verdicts` hold the physics; this module applies it to what the scripts hand over: a run folder, any
folder of structures, or every run of a Table 2 (``experiments/screen.py`` and
``experiments/table2.py --screen``). Each relaxation is appended to a journal as it ends,
so an interrupted screening run again with the same settings continues where it stopped.
Importing it loads no torch; :func:`crystalgan_jax.screening.relax.load_calculator` does.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from pymatgen.core import Structure

from crystalgan_jax.core import encoding
from crystalgan_jax.materials import evaluation, io, substitution
from crystalgan_jax.materials.candidates import hydrogen_fraction
from crystalgan_jax import locking
from crystalgan_jax.screening import (compare, plots, relax as screening,
                                      second_opinion as opinions, system_hull, verdicts)
from crystalgan_jax.screening import symmetry_pass
from crystalgan_jax.screening.journal import JsonlJournal
from crystalgan_jax.screening.workers import Job, Relaxer

Log = Callable[[str], None]
SECTION = "## Screening (CHGNet)"
HULL_JOURNAL = "hull_relaxations.jsonl"  # beside relaxations.jsonl in a screening folder
# Counts table2.py --screen adds per run, with their column titles.
COLUMNS = {"screened": "screened", "stable": "stable", "sun": "S.U.N."}


def log_line(msg: str) -> None:
    """A screening's progress line: stderr, flushed."""
    print(msg, file=sys.stderr, flush=True)


def structure_files(folder: Path) -> list[Path]:
    """Every structure file under ``folder`` (recursive, sorted; ``screening/`` skipped)."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and io.is_structure_file(p)
                  and "screening" not in p.relative_to(folder).parts
                  and not (p.suffix == ".cif" and p.with_suffix(".vasp").exists()))


def select(named: Sequence[tuple[str, Structure]], element_a: str, element_b: str, only: str,
           options: dict[str, Any]) -> list[tuple[str, Structure]]:
    """The candidates ``--only`` keeps, by their verdicts before relaxation.

    ``unique``: the strictly good ones, one per StructureMatcher group (its first member
    in ``named`` order), the set a run's ``unique`` count counts.
    """
    if only == "all":
        return list(named)
    key = {"ternary": "ternary", "paper": "good_paper", "strict": "good_strict",
           "unique": "good_strict"}[only]
    kept = [(n, s) for n, s in named
            if getattr(evaluation.evaluate_structure(s, element_a, element_b, **options), key)]
    if only == "unique":
        groups = evaluation.unique_groups([s for _, s in kept])
        kept = [kept[groups.index(g)] for g in dict.fromkeys(groups)]
    return kept


# --h_fraction=data: the hydrogen fractions the training structures span
H_FRACTION_DATA = "data"


def resolve_h_fraction(h_fraction: tuple[float, float] | str, training: Sequence[Structure]
                       ) -> tuple[float, float]:
    """``h_fraction`` as (lo, hi): itself, or for :data:`H_FRACTION_DATA` the lowest and
    highest hydrogen fraction n_H / n_atoms of the ``training`` structures (a candidate
    outside it has a hydrogen content no training structure shows)."""
    if h_fraction == H_FRACTION_DATA:
        fractions = [hydrogen_fraction(s) for s in training]
        if not fractions:
            raise ValueError("--h_fraction=data needs training structures")
        return min(fractions), max(fractions)
    if isinstance(h_fraction, str):
        raise ValueError(f"h_fraction is (lo, hi) or {H_FRACTION_DATA!r}, got {h_fraction!r}")
    return h_fraction


def within_h_fraction(named: Sequence[tuple[str, Structure]], h_fraction: tuple[float, float]
                      ) -> list[tuple[str, Structure]]:
    """The structures whose hydrogen fraction n_H / n_atoms lies in [lo, hi] (inclusive):
    how a user asks the screening for a composition range (``--h_fraction``)."""
    lo, hi = h_fraction
    return [(n, s) for n, s in named
            if lo - 1e-9 <= hydrogen_fraction(s) <= hi + 1e-9]


class Journal(JsonlJournal):
    """Relaxations saved one JSON line each as they end, read back by an identical rerun
    (:class:`~crystalgan_jax.screening.journal.JsonlJournal`)."""

    def __init__(self, path: Path, settings: dict[str, Any], log: Log):
        super().__init__(path, settings, log, "relaxations")

    def done(self, named: Sequence[tuple[str, Structure]]) -> dict[str, screening.Relaxation]:
        """Relaxations of ``named`` already in the journal (same name and same structure)."""
        out = {}
        for name, structure in named:
            entry = self.entries.get(name)
            if entry is None or Structure.from_dict(entry["initial"]) != structure:
                continue
            final = Structure.from_dict(entry["final"]) if entry["final"] else None
            out[name] = screening.relaxation_from_json(entry["relaxation"], structure, final)
        return out

    def add(self, name: str, r: screening.Relaxation) -> None:
        self.append({"name": name, "relaxation": screening.relaxation_json(r),
                     "initial": r.initial.as_dict(),
                     "final": r.final.as_dict() if r.final is not None else None})


def journaled(relaxer: Relaxer, journal: Journal, jobs: Sequence[Job], log: Log, tag: str,
              on_done: Callable[[str, screening.Relaxation], None] | None = None,
              optimizer: str | None = None) -> list[screening.Relaxation]:
    """The relaxation of every ``(name, structure, relax_cell)``: from the journal where it
    holds the same structure under the same name, the others by ``relaxer`` (all its
    workers at once; ``optimizer``, default the relaxer's), each journaled as it ends.
    Names must be distinct."""
    done = journal.done([(name, structure) for name, structure, _ in jobs])
    todo = [job for job in jobs if job[0] not in done]

    def save(name: str, r: screening.Relaxation) -> None:
        journal.add(name, r)
        if on_done:
            on_done(name, r)

    new = dict(zip((name for name, _, _ in todo),
                   relaxer.relax(todo, on_done=save, progress=log, tag=tag,
                                 optimizer=optimizer)))
    return [done[name] if name in done else new[name] for name, _, _ in jobs]


class System:
    """One chemical system's references for screening: elements, training data, hull.

    Built once and reused for every set of candidates of the system (table2.py screens
    several runs against one hull). The hull (:mod:`crystalgan_jax.screening.system_hull`)
    holds the elements, the relaxed training binaries and ordered A-B alloys, and with
    ``substitution_in_hull`` the relaxed substitution baseline too: its unique strictly
    good structures (the baseline's candidates, :func:`substitution_candidates`). E_hull
    is then reported against that full hull, and each candidate is also judged on whether
    it beats substitution. The hull is cached per system, and each relaxation of it is
    journaled in ``hull_journal`` as it ends.
    """

    def __init__(self, element_a: str, element_b: str, data_ah: str, data_bh: str,
                 options: dict[str, Any], relaxer: Relaxer, hull_journal: Path,
                 log: Log = log_line, substitution_in_hull: bool = False,
                 use_cache: bool = True, start_from: "System | None" = None):
        self.element_a, self.element_b, self.options = element_a, element_b, options
        self.relaxer, self.log = relaxer, log
        self.potential = relaxer.label
        self.settings = relaxer.settings
        ah = io.read_domain(data_ah, element_a, mat_block=encoding.A_BLOCK + 1)
        bh = io.read_domain(data_bh, element_b, mat_block=encoding.B_BLOCK + 1)
        self.training = ah.structures + bh.structures
        self.substitution = substitution.substitution(ah.structures, bh.structures,
                                                      element_a, element_b)
        self.substitution_named = substitution_candidates(self.substitution, element_a,
                                                          element_b, options)
        tic = time.perf_counter()
        named = [(f"{d.sources[i] if i < len(d.sources) else i}", s)
                 for d in (ah, bh) for i, s in enumerate(d.structures)]
        named = [(f"{k:03d} {n}", s) for k, (n, s) in enumerate(named)]
        journal = Journal(hull_journal, {**relaxer.hull_settings, "hull": "v3"}, log)
        def relax_hull(jobs):
            # H2 in its box (positions only) with the candidates' optimizer: its bond is
            # stiffer than a soft initial Hessian, whose first BFGS step would overshoot it
            molecule = [job for job in jobs if not job[2]]
            solids = [job for job in jobs if job[2]]
            done = dict(zip((job[0] for job in molecule),
                            journaled(relaxer, journal, molecule, log, "hull")))
            done.update(zip((job[0] for job in solids),
                            journaled(relaxer, journal, solids, log, "hull",
                                      optimizer=relaxer.hull_optimizer)))
            return [done[job[0]] for job in jobs]

        self.system_hull = system_hull.build_system_hull(
            element_a, element_b, named, relax_hull,
            potential=self.potential, settings=relaxer.hull_settings,
            substitution=self.substitution_named if substitution_in_hull else None,
            use_cache=use_cache, log=log,
            start_from=start_from.system_hull if start_from is not None else None)
        self.substitution_in_hull, self.use_cache = substitution_in_hull, use_cache
        self.references = self.system_hull.references
        self.training_relaxed = self.system_hull.structures("training")
        self.base_hull = self.system_hull.hull(system_hull.BASE_KINDS)
        self.hull = (self.system_hull.hull(system_hull.KINDS) if substitution_in_hull
                     else self.base_hull)
        self.timing = {"hull": time.perf_counter() - tic}
        self.data = [str(data_ah), str(data_bh)]

    @property
    def hull_phases(self) -> str:
        """What the hull E_hull is reported against holds, in words."""
        return ("the elements, the relaxed training binaries, the relaxed ordered A-B alloys "
                "(L1_2, L1_0, B2)" + (" and the relaxed substitution baseline (its unique "
                                      "strictly good structures)"
                                      if self.substitution_in_hull else ""))

    def novelty_references(self, with_substitution: bool = True) -> dict[str, list[Structure]]:
        refs = {"training": self.training, "training (relaxed)": self.training_relaxed}
        if with_substitution:
            refs["substitution"] = self.substitution
            if self.substitution_in_hull:
                refs["substitution (relaxed)"] = self.system_hull.structures("substitution")
        return refs

    def screen(self, named: Sequence[tuple[str, Structure]], out: Path, title: str,
               stability_threshold: float, log: Log | None = None,
               with_substitution: bool = True, symmetrize: float = 0.0) -> dict[str, Any]:
        """Relaxes ``named``, judges them, writes everything into ``out``; the result dict.

        ``symmetrize`` > 0 (Angstrom): each converged candidate that gains a space group
        when symmetrised at this tolerance is relaxed again from the symmetric cell, and
        the lower of the two is reported (:mod:`crystalgan_jax.screening.symmetry_pass`;
        its row says what the pass did). Holds ``out``'s lock
        (:func:`crystalgan_jax.locking.lock_folder`) throughout: a second screening into
        the same folder is refused, naming the first.

        Raises:
          locking.FolderLockedError: another process is screening into ``out``.
        """
        log = log or self.log
        with locking.lock_folder(out, log):
            tic = time.perf_counter()
            journal = Journal(out / "relaxations.jsonl", self.settings, log)
            log(f"screening {len(named)} structures into {out}")
            relaxations = journaled(self.relaxer, journal,
                                    [(name, s, True) for name, s in named], log, "screen",
                                    on_done=lambda name, r: self._write_relaxed(out, name, r))
            passes = None  # the pass off: no symmetry_pass in the rows or settings
            if symmetrize > 0:
                relaxations, passes = self._symmetry_pass(named, relaxations, out, journal,
                                                          symmetrize, log)
            return self._judge(named, relaxations, out, title, stability_threshold, log,
                               with_substitution, time.perf_counter() - tic, passes)

    def _symmetry_pass(self, named, relaxations, out, journal, symprec, log):
        todo = symmetry_pass.jobs(named, relaxations, symprec)
        log(f"{len(todo)} of {len(named)} relaxed candidates gain a space group at symprec "
            f"{symprec:g} A: relaxing them again from the symmetric cell")
        again = journaled(self.relaxer, journal, [(j.name, j.structure, True) for j in todo],
                          log, "symmetrize")
        relaxations, passes = list(relaxations), {}
        for job, second in zip(todo, again):
            name = named[job.index][0]
            relaxations[job.index], passes[name] = symmetry_pass.keep_lower(
                relaxations[job.index], second, job, symprec)
            if passes[name]["kept"]:
                self._write_relaxed(out, name, relaxations[job.index])
        kept = sum(p["kept"] for p in passes.values())
        log(f"symmetry pass: {kept} of {len(todo)} lower after the second relaxation")
        return relaxations, passes

    def screen_substitution(self, out: Path, title: str, stability_threshold: float,
                            log: Log | None = None, symmetrize: float = 0.0
                            ) -> dict[str, Any]:
        """The substitution baseline's candidates judged exactly like a generator's, into
        ``out``: relaxed with the candidates' optimizer and settings (journal
        ``out/relaxations.jsonl``) and, with ``symmetrize`` > 0, the same symmetry pass
        (:meth:`screen`). Their relaxations for the hull (``substitution_in_hull``) are made
        with the hull's optimizer and stay in the hull; reusing them here would judge the
        two sides of the formula-by-formula comparison with different optimizers, which
        end up to several meV/atom apart from the same start (docs/results.md). Novel here
        means matching no training structure.
        """
        if not self.substitution_in_hull:
            raise ValueError("screen_substitution needs substitution_in_hull=True")
        return self.screen(self.substitution_named, out, title, stability_threshold, log,
                           with_substitution=False, symmetrize=symmetrize)

    def second_opinion(self, result: dict[str, Any], out: Path, relaxer: Relaxer,
                       mode: str, log: Log | None = None) -> dict[str, Any]:
        """A second potential's verdicts on ``result`` (this system's screening into
        ``out``): the same phases relaxed by ``relaxer`` into its own hull, each from
        this system's relaxed structure (journal ``out/hull_relaxations_<potential>.jsonl``,
        cached likewise), then
        :func:`crystalgan_jax.screening.second_opinion.judge` under ``out``'s lock."""
        log = log or self.log
        other = System(self.element_a, self.element_b, *self.data, self.options,
                       relaxer, out / f"hull_relaxations_{opinions.slug(relaxer.label)}.jsonl",
                       log, substitution_in_hull=self.substitution_in_hull,
                       use_cache=self.use_cache, start_from=self)
        with locking.lock_folder(out, log):
            return opinions.judge(result, out, other, mode, log)

    def _write_relaxed(self, out: Path, name: str, r: screening.Relaxation) -> None:
        """``relaxed/<name>.vasp`` and ``.cif``, and the symmetrised CIF where there is one."""
        if r.final is None:
            return
        path = out / "relaxed" / Path(name).with_suffix(".vasp")
        io.write_poscar(r.final, path, comment=f"{name} relaxed ({self.potential}, {r.status})")
        io.write_cif(r.final, path.with_suffix(".cif"))
        io.write_symmetrized_cif(r.final, path.with_name(path.stem + "_symmetrized.cif"),
                                 evaluation.SYMPREC)

    def _judge(self, named, relaxations, out, title, stability_threshold, log,
               with_substitution, relax_s, passes=None) -> dict[str, Any]:
        for (name, _), r in zip(named, relaxations):  # journaled ones too: files complete
            if r.final is not None and not (out / "relaxed" / name).with_suffix(".vasp").exists():
                self._write_relaxed(out, name, r)
        judge_substitution = with_substitution and self.substitution_in_hull
        result = verdicts.screen(named, relaxations, self.hull, self.element_a,
                                  self.element_b,
                                  novelty_references=self.novelty_references(with_substitution),
                                  stability_threshold=stability_threshold,
                                  evaluation_options=self.options,
                                  substitution_hull=self.hull if judge_substitution else None,
                                  substitution_structures=(
                                      self.substitution + self.system_hull.structures(
                                          "substitution") if judge_substitution else ()))
        timing = {"relaxation": round(relax_s, 2),
                  "relaxation_process_s": round(sum(r.seconds for r in relaxations), 2),
                  **result["timing_s"], **{f"system_{k}": round(v, 2)
                                           for k, v in self.timing.items()}}
        for row in result["structures"]:
            if passes is not None:
                row["symmetry_pass"] = passes.get(row["name"])
            path = (out / "relaxed" / row["name"]).with_suffix(".vasp")
            if path.exists():
                row["relaxed_file"] = str(path.relative_to(out))
                sym = path.with_name(path.stem + "_symmetrized.cif")
                row["symmetrized_cif"] = str(sym.relative_to(out)) if sym.exists() else None
        settings = {**self.settings, "hull_optimizer": self.relaxer.hull_optimizer,
                    "model_version": self.settings["model"],
                    "data": self.data, "novelty_references":
                    list(self.novelty_references(with_substitution)),
                    "elemental_references": {s: screening.relaxation_json(r)
                                             for s, r in self.references.items()},
                    "hull": self.hull.to_json(), "timing_s": timing,
                    "hull_phases": self.hull_phases,
                    "hull_cache": self.system_hull.key,
                    "potential": self.potential,
                    "symprec_A": evaluation.SYMPREC}
        if passes is not None:
            settings["symmetry_pass"] = {
                "symprec_A": next((p["symprec_A"] for p in passes.values()), None),
                "restarted": len(passes), "kept": sum(p["kept"] for p in passes.values())}
        result = {"system": f"{self.element_a}-{self.element_b}-H", "settings": settings,
                  **result, "timing_s": timing}
        (out / "screening.json").write_text(json.dumps(result, indent=1))
        (out / "screening.md").write_text(verdicts.markdown(result, title, settings))
        write_pictures(result, self.hull, out, title)
        c = result["counts"]
        log(f"screened {c['screened']}: {c['converged']} converged, {c['failed']} failed, "
            f"{c['stable']} stable (E_hull <= {stability_threshold:g}), "
            f"{c['sun']} S.U.N.; {out / 'screening.md'}")
        return result


def substitution_candidates(structures: Sequence[Structure], element_a: str, element_b: str,
                            options: dict[str, Any]) -> list[tuple[str, Structure]]:
    """The substitution baseline's candidates: its strictly good structures, one per
    StructureMatcher group (``--only=unique``), named ``NNN.vasp`` by baseline index."""
    named = [(f"{k:03d}.vasp", s) for k, s in enumerate(structures)]
    return select(named, element_a, element_b, "unique", options)


def _points(result: dict[str, Any]) -> list[tuple[str, float]]:
    return [(row["formula"], row["e_hull_eV_per_atom"]) for row in result["structures"]
            if row["e_hull_eV_per_atom"] is not None]


def write_pictures(result: dict[str, Any], hull, out: Path, title: str,
                   substitution: dict[str, Any] | None = None) -> list[Path]:
    """``phase_diagram.png`` and ``e_hull_histogram.png`` of a screening into ``out``.

    Args:
      result: a screening result (:meth:`System.screen`).
      hull: the :class:`~crystalgan_jax.screening.hull.Hull` E_hull was computed against.
      substitution: the substitution baseline's screening result, drawn apart.
    """
    sub = _points(substitution) if substitution else []
    threshold = result.get("stability_threshold_eV_per_atom")
    return [plots.phase_diagram_png(hull, out / "phase_diagram.png",
                                    candidates=_points(result), substitution=sub,
                                    title=title),
            plots.e_hull_histogram_png([e for _, e in _points(result)], [e for _, e in sub],
                                       out / "e_hull_histogram.png", threshold=threshold,
                                       title=title)]


def write_comparison(result: dict[str, Any], substitution: dict[str, Any], hull, out: Path,
                     title: str) -> dict[str, Any]:
    """Generator against substitution (:mod:`~crystalgan_jax.screening.compare`) into ``out``.

    Writes ``comparison.json``, ``comparison.md`` and the pictures of
    :func:`write_pictures` with substitution's structures drawn apart; returns the
    comparison.
    """
    cmp = compare.compare_formulas(result["structures"], substitution["structures"])
    out.mkdir(parents=True, exist_ok=True)
    (out / "comparison.json").write_text(json.dumps(cmp, indent=1))
    (out / "comparison.md").write_text(f"# {title}\n\n" + compare.markdown(cmp))
    write_pictures(result, hull, out, title, substitution)
    return cmp


def link_from_report(report_md: Path, screening_md: Path, counts: dict[str, int]) -> None:
    """Adds (or replaces) the "Screening" section of a run's report.md."""
    if not report_md.exists():
        return
    text = report_md.read_text()
    if SECTION in text:
        text = text[:text.index(SECTION)].rstrip() + "\n"
    rel = screening_md.relative_to(report_md.parent)
    text += (f"\n{SECTION}\n\n[{rel}]({rel}): {counts['screened']} screened, "
             f"{counts['converged']} converged, {counts['stable']} stable, "
             f"{counts['unique']} unique, {counts['novel']} novel, "
             f"{counts['sun']} S.U.N.\n")
    report_md.write_text(text)


def run_system(run_dir: Path) -> dict[str, Any]:
    """A run's element_a, element_b, data_ah, data_bh and evaluation options (config.json).

    Raises:
      FileNotFoundError: ``run_dir`` holds no config.json.
    """
    path = run_dir / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: --run_dir must be a training run's folder")
    spec = json.loads(path.read_text())["spec"]
    a, b, cfg = spec["element_a"], spec["element_b"], spec["train"]
    classes = encoding.class_symbols(cfg["classes"], a, b)
    return {"element_a": a, "element_b": b, "data_ah": spec["data_ah"],
            "data_bh": spec["data_bh"],
            "options": {"d1": cfg["d1"], "d2": cfg["d2"], "classes": classes}}


def spec_system(base) -> dict[str, Any]:
    """The same from a :class:`crystalgan_jax.pipeline.spec.RunSpec` (flags or a flagfile)."""
    classes = encoding.class_symbols(base.train.classes, base.element_a, base.element_b)
    return {"element_a": base.element_a, "element_b": base.element_b,
            "data_ah": base.data_ah, "data_bh": base.data_bh,
            "options": {"d1": base.train.d1, "d2": base.train.d2, "classes": classes}}


def screen_table(table: dict[str, dict], base, out: Path, *, relaxer: Relaxer, only: str,
                 stability_threshold: float, log: Log = log_line) -> None:
    """table2.py --screen: every run's final structures and the substitution baseline.

    One potential and one hull (journal ``out/screening/hull_relaxations.jsonl``)
    for all; each run's screening goes into ``RUN/screening`` (linked from its report.md),
    the baseline's into ``out/substitution/screening``, where novelty is judged against
    the training set only. Adds ``screened``, ``stable``, ``sun`` to each run's counts
    and the screening's wall time as ``screen_s``.
    """
    a, b = base.element_a, base.element_b
    options = {"d1": base.train.d1, "d2": base.train.d2,
               "classes": encoding.class_symbols(base.train.classes, a, b)}
    system = System(a, b, base.data_ah, base.data_bh, options, relaxer,
                    out / "screening" / HULL_JOURNAL, log)
    screened: list[tuple[dict, Path, str, dict]] = []
    sub_result = None
    for method, row in table.items():
        for run in row["runs"]:
            tic = time.perf_counter()
            if method == "substitution":
                named = [(f"{k:03d}.vasp", s) for k, s in enumerate(system.substitution)]
                dest, run_dir, title = out / "substitution" / "screening", None, "substitution"
            else:
                run_dir = Path(run["output_dir"])
                folder = run_dir / "structures" / "final"
                named = [(str(p.relative_to(folder)), io.read_structure(p))
                         for p in structure_files(folder)]
                dest, title = run_dir / "screening", f"{method}, seed {run['seed']}"
            candidates = select(named, a, b, only, options)
            log(f"== screening {title}: {len(candidates)} of {len(named)} pass "
                f"--only={only}")
            result = system.screen(candidates, dest, title, stability_threshold, log,
                                   with_substitution=method != "substitution")
            if run_dir is not None:
                link_from_report(run_dir / "report.md", dest / "screening.md",
                                 result["counts"])
            if method == "substitution":
                sub_result = result
            else:
                screened.append((run, dest, title, result))
            run["counts"].update({k: result["counts"][k] for k in COLUMNS})
            run["screen_s"] = round(time.perf_counter() - tic, 1)
            run["screening"] = str(dest / "screening.json")
    if sub_result is not None:  # each run against the baseline, formula by formula
        for run, dest, title, result in screened:
            cmp = write_comparison(result, sub_result, system.hull, dest, title)
            run["comparison"] = {"file": str(dest / "comparison.md"), **cmp["counts"]}
