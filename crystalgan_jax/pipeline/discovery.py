"""The discovery job's last phase: a run's candidates screened against an honest hull, and
the "Candidates for DFT" that open its report.

:func:`screen_run` takes a run folder (a population's or a single run's), relaxes its
candidates (a population's pooled ``candidates/``; a single run's unique strictly good
final structures) with a :class:`~crystalgan_jax.screening.workers.Relaxer`, and judges
them against the system's hull of elements, relaxed training binaries, relaxed A-B alloy
orderings and the relaxed substitution baseline
(:class:`~crystalgan_jax.screening.runs.System` with ``substitution_in_hull``). The
baseline's own candidates are judged on the same hull, from the same relaxations. Into
``RUN/screening/``::

    screening.json, .md       every candidate: relaxation, E_form, E_hull, verdicts
    relaxed/                  relaxed POSCAR and CIF, and NAME_symmetrized.cif where the
                              relaxed structure has symmetry above P1 at 0.1 A
    substitution/             the same for the substitution baseline's candidates
    comparison.json, .md      generator against substitution, formula by formula
    phase_diagram.png, e_hull_histogram.png
    offspring/, offspring.json   with ``heredity`` or ``permutations``: new candidates bred
                              from the screened ones (:func:`breed`), screened with them
    candidates_for_dft.json   the candidates grouped (StructureMatcher after relaxation)
                              and ranked by E_hull
    summary.json              the counts of both sides, the comparison, the timing
    relaxations.jsonl, hull_relaxations.jsonl   journals: an interrupted screening
                              continues where it stopped

and the "Candidates for DFT" section at the top of ``RUN/report.md``.
"""

from __future__ import annotations

import json
import shutil
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from pymatgen.core import Composition, Structure

from crystalgan_jax.materials import evaluation, io, offspring
from crystalgan_jax.materials.candidates import hydrogen_per_metal
from crystalgan_jax.screening import compare, runs
from crystalgan_jax.screening.consensus import VERDICTS
from crystalgan_jax.screening.hull import energetics
from crystalgan_jax.screening.verdicts import ON_HULL_TOLERANCE
from crystalgan_jax.screening.workers import Relaxer

Log = Callable[[str], None]
SCREENING = "screening"
OFFSPRING = "offspring"  # RUN/screening/offspring/ and offspring.json (:func:`breed`)
# report.md's screened section lies between these (replaced by a later screening)
START, END = "<!-- candidates-for-dft -->", "<!-- /candidates-for-dft -->"
# counts of a screening in the summary: (key in verdicts' counts, column title)
COUNTS = (("screened", "screened"), ("converged", "converged"),
          ("unique", "unique after relaxation"), ("novel_unique", "novel"),
          ("stable_unique", "stable"), ("sun", "S.U.N."), ("on_hull", "on or below the hull"))
TABLE_ROWS = 40  # candidates listed in report.md (all of them in candidates_for_dft.json)


def run_candidates(run_dir: Path, system: Mapping[str, Any]) -> list[tuple[str, Structure]]:
    """What a run proposes: a population's pooled ``candidates/`` (unique strictly good
    across members), else a single run's unique strictly good final structures."""
    pooled = run_dir / "candidates"
    if (run_dir / "members").is_dir():
        return [(p.name, io.read_structure(p)) for p in sorted(pooled.glob("*.vasp"))]
    folder = run_dir / "structures" / "final"
    named = [(str(p.relative_to(folder)), io.read_structure(p))
             for p in runs.structure_files(folder)]
    return runs.select(named, system["element_a"], system["element_b"], "unique",
                       system["options"])


def found_by(run_dir: Path) -> dict[str, list[str]]:
    """Pooled candidate file name -> the members that generated it (population runs)."""
    path = run_dir / "report.json"
    if not (run_dir / "members").is_dir() or not path.exists():
        return {}
    return {Path(c["file"]).name: c["found_by"]
            for c in json.loads(path.read_text()).get("candidates", [])}


def screen_run(run_dir: Path, relaxer: Relaxer, *, stability_threshold: float,
               use_cache: bool = True, log: Log = runs.log_line,
               candidates: Sequence[tuple[str, Structure]] | None = None,
               second: Relaxer | None = None, second_mode: str = "relax",
               h_fraction: tuple[float, float] | str = (0.0, 1.0), symmetrize: float = 0.0,
               heredity: int = 0, permutations: int = 0) -> dict[str, Any]:
    """Screens ``run_dir``'s candidates and the substitution baseline on one hull.

    Args:
      run_dir: a training run's folder (its ``config.json`` says the system).
      relaxer: the potential and relaxation settings (and its worker processes).
      stability_threshold: stable means converged and E_hull <= this (eV/atom).
      candidates: instead of :func:`run_candidates` (a collected array job's).
      second: a second potential's relaxer: it judges every relaxed candidate against its
        own hull of the same phases (:mod:`crystalgan_jax.screening.second_opinion`,
        ``second_mode``), and the candidates are ranked by the consensus.
      h_fraction: (lo, hi): only candidates with n_H / n_atoms in [lo, hi] are screened
        (:func:`crystalgan_jax.screening.runs.within_h_fraction`); ``"data"``: the range
        of the training structures (:func:`crystalgan_jax.screening.runs.resolve_h_fraction`).
      symmetrize: the symmetry pass's tolerance (A; 0: off), :meth:`runs.System.screen`.
      heredity, permutations: offspring of the screened candidates (:func:`breed`),
        relaxed and judged with them; 0 and 0: none.
    Returns:
      The summary (also ``RUN/screening/summary.json``).
    Raises:
      FileNotFoundError: no config.json in ``run_dir``.
      locking.FolderLockedError: another screening holds ``RUN/screening``.
    """
    tic = time.perf_counter()
    system = runs.run_system(run_dir)
    a, b = system["element_a"], system["element_b"]
    out = run_dir / SCREENING
    offered = list(candidates) if candidates is not None else run_candidates(run_dir, system)
    sys_ = runs.System(a, b, system["data_ah"], system["data_bh"], system["options"], relaxer,
                       out / runs.HULL_JOURNAL, log, substitution_in_hull=True,
                       use_cache=use_cache)
    hull_s = time.perf_counter() - tic
    from_data = h_fraction == runs.H_FRACTION_DATA
    h_fraction = runs.resolve_h_fraction(h_fraction, sys_.training)
    named = runs.within_h_fraction(offered, h_fraction)
    if len(named) < len(offered):
        log(f"{len(named)} of {len(offered)} candidates have a hydrogen fraction in "
            f"[{h_fraction[0]:.3g}, {h_fraction[1]:.3g}] (--h_fraction"
            f"{', the training range' if from_data else ''})")
    log(f"screening {len(named)} candidates of {run_dir} with {relaxer.label} "
        f"({relaxer.workers} worker(s))")
    title = f"{a}-{b}-H, {run_dir}"
    tic = time.perf_counter()
    result = sys_.screen(named, out, title, stability_threshold, log, symmetrize=symmetrize)
    before = None
    if heredity > 0 or permutations > 0:
        before = result
        bred = breed(result, named, (a, b), out / OFFSPRING, heredity=heredity,
                     permutations=permutations, log=log)
        if bred:  # journaled: only the offspring are relaxed this time
            result = sys_.screen(named + bred, out, title, stability_threshold, log,
                                 symmetrize=symmetrize)
    if second is not None:
        result = sys_.second_opinion(result, out, second, second_mode, log)
    screen_s = time.perf_counter() - tic
    tic = time.perf_counter()
    sub = sys_.screen_substitution(out / "substitution", f"{a}-{b}-H substitution baseline",
                                   stability_threshold, log, symmetrize=symmetrize)
    sub_s = time.perf_counter() - tic
    cmp = runs.write_comparison(result, sub, sys_.hull, out, title)
    members = found_by(run_dir)
    for name, info in (bred_from(out) if before is not None else {}).items():
        members[name] = sorted({m for p in info["parents"] for m in members.get(p, [])})
    grouped = grouped_candidates(result, members)
    (out / "candidates_for_dft.json").write_text(json.dumps(grouped, indent=1))
    summary = {"system": f"{a}-{b}-H", "potential": sys_.potential,
               "settings": {**relaxer.settings, "hull_optimizer": relaxer.hull_optimizer,
                            "workers": relaxer.workers,
                            "stability_threshold_eV_per_atom": stability_threshold},
               "hull_phases": sys_.hull_phases, "hull_cached": sys_.system_hull.cached,
               "generator": {k: result["counts"][k] for k, _ in COUNTS},
               "substitution": {k: sub["counts"][k] for k, _ in COUNTS},
               "comparison": cmp["counts"],
               "offspring": None if before is None else {
                   "heredity_per_formula": heredity, "permutation_parents": permutations,
                   "screened": len(result["structures"]) - len(before["structures"]),
                   "comparison_without": compare.compare_formulas(
                       before["structures"], sub["structures"])["counts"]},
               "shared_formulas": compare.shared_formulas(cmp),
               "mixing": mixing(sys_),
               "composition": composition(offered, named, h_fraction, sys_.training,
                                          from_data=from_data),
               "second_opinion": (None if second is None else {
                   "potential": second.label, "mode": second_mode,
                   "agreement": result["second_opinion"]["agreement"]}),
               "timing_s": {"hull": round(hull_s, 1), "screening": round(screen_s, 1),
                            "substitution": round(sub_s, 1)}}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    write_report_section(run_dir / "report.md", dft_markdown(summary, grouped, run_dir))
    g = summary["generator"]
    log(f"{g['screened']} candidates screened: {g['unique']} unique after relaxation, "
        f"{g['stable_unique']} stable, {g['sun']} S.U.N., {g['on_hull']} on or below the "
        f"hull (substitution: {summary['substitution']['sun']} S.U.N.); "
        f"{run_dir / 'report.md'}")
    return summary


def breed(result: Mapping[str, Any], named: Sequence[tuple[str, Structure]],
          metals: tuple[str, str], out: Path, *, heredity: int, permutations: int,
          log: Log = runs.log_line) -> list[tuple[str, Structure]]:
    """Offspring of a screening's candidates (:mod:`crystalgan_jax.materials.offspring`):
    new candidates where the screening says the search pays.

    The parents are the converged candidates, ranked by E_hull, as they were offered
    (unrelaxed: two decorations of one cell share a framework only before relaxation).
    Heredity: in each reduced formula, the ``heredity`` children of lowest parent score
    (the mean of the two parents' E_hull) of any two parents that share a framework
    (at most four lowest per framework). Permutation: every distinct one-pair metal swap
    of the ``permutations`` lowest candidates of each formula; these keep the formula and
    so look for a lower ordering of it. Children alike (StructureMatcher) are kept once,
    as are a parent's swaps. The same screening gives the same offspring under the same
    names, so an interrupted screening continues from its journal.

    Writes each offspring's POSCAR into ``out`` and ``out.with_suffix(".json")`` (name ->
    operator, parents' names, the stacking axis of a heredity child, parent score,
    formula); an earlier call's files are replaced. Returns
    (name, structure) pairs named ``offspring_NNN.vasp``.
    """
    offered = dict(named)
    rows = sorted((r for r in result["structures"]
                   if r["relaxation"]["converged"] and r.get(compare.E_HULL) is not None
                   and r["name"] in offered), key=lambda r: r[compare.E_HULL])
    parents = [(r["name"], offered[r["name"]], float(r[compare.E_HULL])) for r in rows]
    made: list[tuple[Structure, dict[str, Any]]] = []
    if heredity > 0:
        taken: dict[str, int] = {}
        for child in offspring.heredity(parents, metals):
            formula = child.structure.composition.reduced_formula
            if taken.get(formula, 0) < heredity:
                taken[formula] = taken.get(formula, 0) + 1
                made.append((child.structure, {"operator": "heredity",
                                               "parents": list(child.parents),
                                               "axis": child.axis,
                                               "parent_score": child.score}))
    if permutations > 0:
        taken = {}
        for name, structure, score in parents:
            formula = structure.composition.reduced_formula
            if taken.get(formula, 0) < permutations:
                taken[formula] = taken.get(formula, 0) + 1
                made += [(child, {"operator": "permutation", "parents": [name],
                                  "parent_score": score})
                         for child in offspring.permutations(structure, metals)]
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    manifest, kids = {}, []
    for k, (child, info) in enumerate(made):
        name = f"offspring_{k:03d}.vasp"
        io.write_poscar(child, out / name,
                        comment=f"{info['operator']} of {' and '.join(info['parents'])}")
        manifest[name] = {**info, "formula": child.composition.reduced_formula}
        kids.append((name, child))
    out.with_suffix(".json").write_text(json.dumps(manifest, indent=1))
    counts = {op: sum(m["operator"] == op for m in manifest.values())
              for op in ("heredity", "permutation")}
    log(f"offspring of {len(parents)} screened candidates: {counts['heredity']} by heredity, "
        f"{counts['permutation']} by permutation ({out})")
    return kids


def bred_from(screening: Path) -> dict[str, dict[str, Any]]:
    """A screening folder's offspring (:func:`breed`'s ``offspring.json``): name ->
    operator, parents, formula; empty where it bred none."""
    path = screening / f"{OFFSPRING}.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def summarise(run: Path) -> dict:
    """A screened run's figures in one row (a variant of ``benchmarks/discovery.py``, a
    round of :mod:`crystalgan_jax.pipeline.rounds`).

    Returns:
      pooled unique candidates, screened, unique after relaxation, S.U.N., on or below
      the hull, the lowest and median E_hull (eV/atom), the per-formula comparison with
      substitution, how far relaxation moved the converged candidates (median FIRE
      steps, median |dV/V|, median normalised RMS displacement over the pairs that still
      match, and how many match), H/M of the candidates offered and of the training
      structures, relaxed candidates above P1 (0.1 A), training and screening seconds.
    """
    screening = json.loads((run / "screening" / "screening.json").read_text())
    summary = json.loads((run / "screening" / "summary.json").read_text())
    timing = (json.loads((run / "timing.json").read_text())
              if (run / "timing.json").exists() else {})
    pooled = json.loads((run / "report.json").read_text()).get("counts", {})
    rows = [r for r in screening["structures"] if r["relaxation"]["converged"]]
    e_hull = [r["e_hull_eV_per_atom"] for r in rows if r["e_hull_eV_per_atom"] is not None]
    disp = [r["displacement"] for r in rows if r.get("displacement")]
    composition = summary["composition"]  # H/M of the pooled candidates and the training
    c = screening["counts"]
    return {
        "pooled_unique": pooled.get("unique", composition["offered"]), "screened": c["screened"],
        "unique_after_relaxation": c["unique"], "sun": c["sun"], "on_hull": c["on_hull"],
        "lowest_e_hull": round(min(e_hull), 4) if e_hull else None,
        "median_e_hull": round(statistics.median(e_hull), 4) if e_hull else None,
        "formulas": summary["comparison"],
        "median_steps": statistics.median(r["relaxation"]["steps"] for r in rows) if rows else None,
        "median_abs_volume_change": round(statistics.median(
            abs(d["volume_change"]) for d in disp), 3) if disp else None,
        "median_rms": round(statistics.median(
            d["rms"] for d in disp if d["rms"] is not None), 3)
        if any(d["rms"] is not None for d in disp) else None,
        "rms_matched": sum(d["rms"] is not None for d in disp),
        "h_per_metal": composition["h_per_metal_offered"] or {},
        "h_per_metal_training": composition["h_per_metal_training"] or {},
        "above_p1": sum(d["spacegroup_after"][1] > 1 for d in disp),
        "training_s": timing.get("training"), "screening_s": timing.get("screening_screening"),
    }


def spread(values: Sequence[float]) -> dict[str, float] | None:
    """min, median and max of ``values`` (rounded to 1e-3); None where there are none."""
    if not values:
        return None
    return {"min": round(min(values), 3), "median": round(float(statistics.median(values)), 3),
            "max": round(max(values), 3)}


def composition(offered: Sequence[tuple[str, Structure]], screened: Sequence[tuple[str, Structure]],
                h_fraction: tuple[float, float], training: Sequence[Structure],
                from_data: bool = False) -> dict[str, Any]:
    """Hydrogen per metal atom (H/M) of the candidates offered and screened, and of the
    training structures, with the ``--h_fraction`` range asked for (``from_data``: the
    training structures' range, ``--h_fraction=data``)."""
    def h_per_metal(structures):
        values = (hydrogen_per_metal(s) for s in structures)
        return spread([v for v in values if v is not None])
    return {"h_fraction": [round(x, 6) for x in h_fraction], "h_fraction_from_data": from_data,
            "offered": len(offered), "screened": len(screened),
            "h_per_metal_offered": h_per_metal(s for _, s in offered),
            "h_per_metal_screened": h_per_metal(s for _, s in screened),
            "h_per_metal_training": h_per_metal(training)}


def grouped_candidates(result: Mapping[str, Any], members: Mapping[str, list[str]]
                       ) -> list[dict[str, Any]]:
    """One entry per StructureMatcher group after relaxation, lowest E_hull first.

    Each group is represented by its member of lowest E_hull; ``count`` and ``names`` say
    how many candidates relaxed into it. Candidates that failed to relax are left out.
    """
    groups: dict[int, list[Mapping[str, Any]]] = {}
    for row in result["structures"]:
        if "unique_group" in row and row["e_hull_eV_per_atom"] is not None:
            groups.setdefault(row["unique_group"], []).append(row)
    out = []
    for rows in groups.values():
        best = min(rows, key=lambda r: r["e_hull_eV_per_atom"])
        after = (best.get("displacement") or {}).get("spacegroup_after") or [None, None]
        out.append({
            "formula": Composition(best["formula"]).reduced_formula,
            "spacegroup": after[0], "spacegroup_number": after[1],
            "formation_energy_eV_per_atom": best["formation_energy_eV_per_atom"],
            "e_hull_eV_per_atom": best["e_hull_eV_per_atom"],
            "stable": best["stable"], "converged": best["relaxation"]["converged"],
            "novel": best["novel"], "matches": best.get("matches"),
            "members": sorted({m for r in rows for m in members.get(Path(r["name"]).name, [])}),
            "count": len(rows), "names": [r["name"] for r in rows], "name": best["name"],
            "relaxed_file": best.get("relaxed_file"),
            "symmetrized_cif": best.get("symmetrized_cif"),
            "consensus": best.get("consensus"),
            "e_hull_second_eV_per_atom": (best.get("second_opinion") or {}).get(
                "e_hull_eV_per_atom")})

    def key(g):  # by the consensus of two potentials where there are two, then E_hull
        verdict = VERDICTS.index(g["consensus"]) if g["consensus"] else 0
        return verdict, g["e_hull_eV_per_atom"]

    return sorted(out, key=key)


def mixing(system: runs.System) -> dict[str, Any]:
    """Whether A and B mix in the solid by the potential: the lowest formation energy of
    the relaxed A-B alloy orderings (eV/atom; > 0: none is stable against the metals)."""
    diagram = system.base_hull.phase_diagram()
    energies = [energetics(diagram, p.relaxation.final.composition,
                           p.relaxation.energy_per_atom)[0]
                for p in system.system_hull.of_kind("alloy")]
    lowest = min(energies) if energies else None
    return {"lowest_alloy_formation_eV_per_atom": lowest,
            "metals_mix": lowest is not None and lowest < -ON_HULL_TOLERANCE}


def _fmt(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def counts_table(summary: Mapping[str, Any]) -> list[str]:
    """Markdown rows: the generator's and the substitution baseline's counts."""
    lines = ["| | " + " | ".join(title for _, title in COUNTS) + " |",
             "| --- | " + "---: | " * len(COUNTS)]
    for side, label in (("generator", "generator"), ("substitution", "substitution baseline")):
        lines.append(f"| {label} | " + " | ".join(str(summary[side][k]) for k, _ in COUNTS)
                     + " |")
    return lines


def dft_markdown(summary: Mapping[str, Any], grouped: Sequence[Mapping[str, Any]],
                 run_dir: Path) -> str:
    """The "Candidates for DFT" section of report.md."""
    s = summary["settings"]
    t = s["stability_threshold_eV_per_atom"]
    c = summary["comparison"]
    mix = summary["mixing"]
    lines = [START, "## Candidates for DFT", "",
             f"Relaxed with {summary['potential']} ({s['optimizer']}, cell and positions, "
             f"fmax {s['fmax']:g} eV/A, at most {s['max_steps']} steps). E_hull (eV/atom) "
             f"against {summary['hull_phases']}, relaxed with the same potential and fmax "
             f"({s.get('hull_optimizer', s['optimizer'])}: they start near a minimum). "
             "Stable: converged "
             f"and E_hull <= {t:g}; on the hull: E_hull <= 0. Novel: matches no training or "
             "substitution structure, as given or relaxed (StructureMatcher). Space groups "
             f"after relaxation at symprec {evaluation.SYMPREC:g} A. Counts are of distinct "
             "structures after relaxation (StructureMatcher groups), except screened and "
             "converged.", ""]
    if mix["lowest_alloy_formation_eV_per_atom"] is not None and not mix["metals_mix"]:
        lines += [f"No ordered A-B alloy lies below the elements by this potential (lowest "
                  f"formation energy {mix['lowest_alloy_formation_eV_per_atom']:+.3f} "
                  "eV/atom): the metals do not form a compound on their own. A ternary is "
                  "then stable only where hydrogen binds the two metals together better than "
                  "the binary hydrides and the elements do: E_hull is its distance above "
                  "that mixture of A-H and B-H phases, and a stable ternary claims a new "
                  "compound in a system whose metals separate.", ""]
    lines += counts_table(summary)
    comp = summary.get("composition")
    if comp and comp["h_per_metal_screened"] and comp["h_per_metal_training"]:
        got, ref = comp["h_per_metal_screened"], comp["h_per_metal_training"]
        whose = ", the training structures' range" if comp.get("h_fraction_from_data") else ""
        asked = ("" if comp["h_fraction"] == [0.0, 1.0] else
                 f"; {comp['screened']} of {comp['offered']} candidates have the hydrogen "
                 f"fraction asked for ({comp['h_fraction'][0]:.3g}-{comp['h_fraction'][1]:.3g}"
                 f"{whose})")
        lines += ["", f"Hydrogen per metal atom (H/M) of the screened candidates: median "
                  f"{got['median']:g} (range {got['min']:g}-{got['max']:g}), against the "
                  f"training structures' {ref['median']:g} ({ref['min']:g}-{ref['max']:g})"
                  f"{asked}."]
    lines += ["", f"Formula by formula (lowest E_hull each side reaches; "
              f"[screening/comparison.md](screening/comparison.md)): the generator is lower "
              f"in {c.get('generator', 0)}, substitution in {c.get('substitution', 0)}, "
              f"{c.get('tie', 0)} ties; {c.get('only generator', 0)} formulas only the "
              f"generator reaches, {c.get('only substitution', 0)} only substitution.", ""]
    shared = compare.shared_table({"formulas": summary.get("shared_formulas", [])})
    if shared:
        lines += ["**The formulas both reach.** " + shared[0], *shared[1:], ""]
    lines += ["![phase diagram](screening/phase_diagram.png) "
              "![E_hull histogram](screening/e_hull_histogram.png)", ""]
    if not grouped:
        lines += ["No candidate relaxed.", END]
        return "\n".join(lines) + "\n"
    two = summary.get("second_opinion")
    if two:
        agree = two["agreement"]
        lines += [f"Second opinion: {two['potential']} ({two['mode'].replace('_', ' ')}, its "
                  f"own hull of the same phases): {agree['both stable']} both stable, "
                  f"{agree['disagree']} disagree, {agree['both unstable']} both unstable, "
                  f"{agree['unknown']} unknown; ranked by the consensus, then E_hull.", ""]
    shown = grouped[:TABLE_ROWS]
    lines += [f"{len(grouped)} distinct structures after relaxation, lowest E_hull first"
              + (f"; the first {len(shown)} here, all in "
                 "[screening/candidates_for_dft.json](screening/candidates_for_dft.json)"
                 if len(shown) < len(grouped) else "") + ".", "",
              "| # | formula | space group | E_form | E_hull | "
              + ("E_hull (2nd) | consensus | " if two else "") + "stable | novel | count | "
              "member(s) | files |",
              "| ---: | --- | --- | ---: | ---: | " + ("---: | --- | " if two else "")
              + ":-: | :-: | ---: | --- | --- |"]
    yes = {True: "yes", False: "no", None: "-"}
    for k, g in enumerate(shown, start=1):
        files = []
        for key, label in (("relaxed_file", "POSCAR"), ("symmetrized_cif", "symmetrised CIF")):
            if g.get(key):
                files.append(f"[{label}]({SCREENING}/{g[key]})")
        if g.get("relaxed_file"):
            cif = Path(g["relaxed_file"]).with_suffix(".cif")
            files.insert(1, f"[CIF]({SCREENING}/{cif})")
        sg = "-" if g["spacegroup"] is None else f"{g['spacegroup']} ({g['spacegroup_number']})"
        lines.append(f"| {k} | {g['formula']} | {sg} | "
                     f"{_fmt(g['formation_energy_eV_per_atom'])} | "
                     f"{_fmt(g['e_hull_eV_per_atom'])} | "
                     + (f"{_fmt(g['e_hull_second_eV_per_atom'])} | {g['consensus'] or '-'} | "
                        if two else "") + f"{yes[g['stable']]} | "
                     f"{yes[g['novel']]} | {g['count']} | {', '.join(g['members']) or '-'} | "
                     f"{', '.join(files)} |")
    lines.append(END)
    return "\n".join(lines) + "\n"


def not_screened_markdown(hint: str) -> str:
    """The section report.md holds where the screening could not run."""
    return f"{START}\n## Candidates for DFT\n\nNot screened yet: {hint}\n{END}\n"


def write_report_section(report_md: Path, section: str) -> None:
    """Puts ``section`` right under report.md's title, replacing an earlier one."""
    text = report_md.read_text() if report_md.exists() else ""
    if START in text and END in text:
        head, rest = text.split(START, 1)
        text = head + rest.split(END, 1)[1].lstrip("\n")
    lines = text.splitlines(keepends=True)
    if lines and lines[0].startswith("# "):
        text = lines[0] + "\n" + section + "\n" + "".join(lines[1:]).lstrip("\n")
    else:
        text = section + "\n" + text
    report_md.write_text(text)
