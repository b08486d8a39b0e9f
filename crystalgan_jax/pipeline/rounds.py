"""Rounds of learning from the screen: a screened run's relaxed, low-E_hull candidates
become real examples for its stage 3, which is fine-tuned on them and screened again.

Round 0 is the discovery job as it is (train, pool, screen). Round k (k >= 1) is a run
of its own in ``RUN/rounds/k``: it starts from round k-1's trained state
(``RunSpec.refine_from``), trains stage 3 only for the round's epochs, with the guide
``RUN/rounds/k_guide`` joining both stage-3 domains (``RunSpec.guide``,
:func:`crystalgan_jax.train.stage_data`), and is then written, pooled and screened like
any run (the system's hull is cached, so it is relaxed once). The guide of round k holds
every earlier round's selected candidates: the converged relaxed structures that are
still strictly good, within ``max_e_hull`` of the hull, one per StructureMatcher group
after relaxation (its lowest E_hull).

- :func:`select_guide`: the guide of the next round from a screened run;
- :func:`round_spec`: the spec of round k;
- :func:`start_from`: a run's starting state from the run it refines;
- :func:`rounds_table`: each round's counts, and its S.U.N. structures that no earlier
  round found (:func:`new_sun`), written as ``RUN/rounds.md`` / ``.json``;
- :func:`run_rounds`: the rounds after a screened round 0, one after the other.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any, Callable, Sequence

from crystalgan_jax.pipeline.spec import PopulationSpec, RunSpec
from crystalgan_jax.train.checkpoints import CheckpointError, Checkpoints

ROUNDS = "rounds"
DEFAULT_MAX_E_HULL = 0.1  # eV/atom: the screening's "stable"


def round_dir(run_dir: str | Path, k: int) -> Path:
    """Round k's run folder (round 0 is the run itself)."""
    return Path(run_dir) if k == 0 else Path(run_dir) / ROUNDS / str(k)


def guide_dir(run_dir: str | Path, k: int) -> Path:
    """The folder of round k's guide structures (k >= 1)."""
    return Path(run_dir) / ROUNDS / f"{k}_guide"


def selected(screening: dict, max_e_hull: float) -> list[dict]:
    """The rows of a ``screening.json`` a next round learns from, lowest E_hull first.

    Converged, strictly good and ternary after relaxation, E_hull <= ``max_e_hull``
    (eV/atom); of each StructureMatcher group after relaxation (``unique_group``) the
    lowest one.
    """
    best: dict[Any, dict] = {}
    for row in screening["structures"]:
        e = row.get("e_hull_eV_per_atom")
        after = row.get("after") or {}
        if (e is None or e > max_e_hull or not row["relaxation"]["converged"]
                or not after.get("good_strict") or not after.get("ternary")
                or not row.get("relaxed_file")):
            continue
        group = row.get("unique_group", row["name"])
        if group not in best or e < best[group]["e_hull_eV_per_atom"]:
            best[group] = row
    return sorted(best.values(), key=lambda r: (r["e_hull_eV_per_atom"], r["name"]))


def select_guide(run_dir: str | Path, k: int, max_e_hull: float = DEFAULT_MAX_E_HULL
                 ) -> tuple[Path, int, int]:
    """Writes round k's guide folder (:func:`guide_dir`) from the screened round k-1.

    Args:
      run_dir: the discovery run's folder (round 0's).
      k: the round the guide is for (>= 1). Round k-1's screening gives the new
        structures (``relaxed/`` files, named ``r<k-1>_<candidate>.vasp``); round k-1's
        guide (k >= 2) is kept.
      max_e_hull: eV/atom above the hull at most.
    Returns:
      (the guide folder, structures in it, of them new).
    Raises:
      FileNotFoundError: round k-1 is not screened.
    """
    if k < 1:
        raise ValueError(f"guides are for rounds from 1 on, got {k}")
    screened = round_dir(run_dir, k - 1) / "screening"
    if not (screened / "screening.json").exists():
        raise FileNotFoundError(f"{screened / 'screening.json'}: round {k - 1} is not "
                                "screened; a round learns from its screening (--screen)")
    rows = selected(json.loads((screened / "screening.json").read_text()), max_e_hull)
    out = guide_dir(run_dir, k)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    kept = 0
    if k > 1:
        for f in sorted(guide_dir(run_dir, k - 1).glob("*.vasp")):
            shutil.copy(f, out / f.name)
            kept += 1
    for row in rows:
        shutil.copy(screened / row["relaxed_file"],
                    out / f"r{k - 1}_{Path(row['name']).stem}.vasp")
    return out, kept + len(rows), len(rows)


def round_spec(spec: RunSpec, k: int, epochs: int) -> RunSpec:
    """Round k's spec (k >= 1): ``spec`` (round 0's, as the flags give it) in its round
    folder, from round k-1's trained state, stage 3 for ``epochs`` epochs with the guide."""
    if k < 1:
        raise ValueError(f"rounds after round 0 are numbered from 1, got {k}")
    cfg = dataclasses.replace(spec.train, epochs=epochs, refine=True,
                              chunk_epochs=min(spec.train.chunk_epochs, epochs),
                              snapshots=min(spec.train.snapshots, epochs))
    return dataclasses.replace(spec, output_dir=str(round_dir(spec.output_dir, k)),
                               refine_from=str(round_dir(spec.output_dir, k - 1)),
                               guide=str(guide_dir(spec.output_dir, k)), train=cfg,
                               overwrite=False)


def start_from(pop: PopulationSpec, trainer, template, log: Callable[[str], None]):
    """The state a refining run starts from: its parent's final trained state (parameters,
    optimizer moments, key and generator snapshots), with the epoch count at 0.

    Raises:
      CheckpointError: the parent is not a finished run with the same members.
    """
    parent = Path(pop.base.refine_from)
    config_path = parent / "config.json"
    if not config_path.exists():
        raise CheckpointError(f"{parent}: not a run folder (no config.json) to refine")
    config = json.loads(config_path.read_text())
    names = [m["name"] for m in config.get("members", [])] or None
    ours = None if pop.single_run else [m.name for m in pop.members]
    if names != ours:
        raise CheckpointError(
            f"{parent} trained {'members ' + ', '.join(names) if names else 'a single run'}"
            f"; this run has {'members ' + ', '.join(ours) if ours else 'one'}: "
            "a refining run keeps its parent's members")
    trained = config["spec"]["train"]
    cfg = pop.base.train
    if trained["snapshots"] != cfg.snapshots:
        raise CheckpointError(f"{parent} keeps {trained['snapshots']} stage-3 generator "
                              f"snapshots, this run {cfg.snapshots}: pass "
                              f"--snapshots={trained['snapshots']}")
    # the same method as ours (the state fits): its stages, or stage 3 alone if it refined
    end = trained["epochs"] * len(("stage3",) if trained.get("refine") else cfg.stages)
    ckpt = Checkpoints(parent / "checkpoints")
    try:
        if end not in ckpt.steps():
            raise CheckpointError(f"{parent} has not finished training: no checkpoint of "
                                  f"epoch {end} in {ckpt.directory}")
        try:
            state = ckpt.read(end, template)
        except CheckpointError as err:
            raise CheckpointError(f"{err} (does {parent} have other networks or "
                                  "settings than this run?)") from None
    finally:
        ckpt.close()
    log(f"refining {parent} from its epoch {end}")
    return trainer.restart(state)


def sun_structures(run_dir: str | Path) -> list:
    """The relaxed S.U.N. structures of a screened run: stable and novel, one per
    StructureMatcher group after relaxation."""
    from crystalgan_jax.materials import io

    screened = Path(run_dir) / "screening"
    rows = json.loads((screened / "screening.json").read_text())["structures"]
    groups = {}
    for row in rows:
        if row.get("stable") and row.get("novel") and row.get("relaxed_file"):
            groups.setdefault(row.get("unique_group", row["name"]), row)
    return [io.read_structure(screened / r["relaxed_file"]) for r in groups.values()]


def new_sun(run_dir: str | Path, k: int) -> int:
    """Round k's S.U.N. structures that match none of the earlier rounds' (StructureMatcher,
    default tolerances, relaxed against relaxed): what round k adds."""
    from crystalgan_jax.materials import evaluation

    earlier = [s for j in range(k) for s in sun_structures(round_dir(run_dir, j))]
    ours = sun_structures(round_dir(run_dir, k))
    labels = evaluation.unique_groups(earlier + ours)
    seen = set(labels[:len(earlier)])
    return len({g for g in labels[len(earlier):] if g not in seen})


def rounds_table(run_dir: str | Path, rounds: int, guides: Sequence[tuple[int, int]],
                 summarise: Callable[[Path], dict]) -> dict[str, Any]:
    """Each round's screened counts, side by side: ``RUN/rounds.json`` and ``rounds.md``.

    Args:
      guides: per round k >= 1, (guide structures, of them new).
      summarise: a run folder -> its row (:func:`crystalgan_jax.pipeline.discovery.summarise`).
    """
    run_dir = Path(run_dir)
    rows = []
    for k in range(rounds + 1):
        row = {"round": k, **summarise(round_dir(run_dir, k))}
        row["guide"], row["guide_new"] = guides[k - 1] if k else (0, 0)
        row["new_sun"] = new_sun(run_dir, k)
        rows.append(row)
    table = {"rounds": rows}
    (run_dir / "rounds.json").write_text(json.dumps(table, indent=1) + "\n")
    head = ("| round | guide (new) | screened | unique after relaxation | S.U.N. | S.U.N. no "
            "earlier round found | on hull | "
            "lowest / median E_hull | formulas gen lower / sub lower / only gen | median "
            "steps | median abs dV/V | H/M median |")
    lines = ["# Rounds of learning from the screen", "",
             "Round 0 is the discovery job; round k fine-tunes round k-1's stage 3 with the "
             "guide (every earlier round's relaxed candidates within the stated E_hull) as "
             "real examples, and is screened against the same hull.", "", head,
             "|" + " --- |" * 12]
    for r in rows:
        f = r["formulas"]
        lines.append(
            f"| {r['round']} | {r['guide']} ({r['guide_new']}) | {r['screened']} | "
            f"{r['unique_after_relaxation']} | {r['sun']} | {r['new_sun']} | {r['on_hull']} | "
            f"{r['lowest_e_hull']} / {r['median_e_hull']} | {f['generator']} / "
            f"{f['substitution']} / {f['only generator']} | {r['median_steps']} | "
            f"{r['median_abs_volume_change']} | {r['h_per_metal'].get('median')} |")
    (run_dir / "rounds.md").write_text("\n".join(lines) + "\n")
    return table


def run_rounds(spec: RunSpec, count: int, epochs: int, max_e_hull: float,
               train_round: Callable[[RunSpec], dict | None],
               screen_round: Callable[[Path], dict | None],
               summarise: Callable[[Path], dict],
               log: Callable[[str], None]) -> dict[str, Any] | None:
    """Rounds 1..``count`` after round 0 (``spec``'s run, trained and screened).

    Each round: its guide from the previous round's screening (:func:`select_guide`;
    no candidate within ``max_e_hull``: the rounds stop there), its spec
    (:func:`round_spec`, ``epochs`` of stage 3), ``train_round(spec)`` (the run's timing
    by phase, or None where it failed) and ``screen_round(folder)`` (the screening's
    summary, or None). The timing of both goes to the round's ``timing.json``.

    Returns:
      :func:`rounds_table` of the rounds made (round 0 alone where none was), or None
      where a round failed.
    """
    guides = []
    for k in range(1, count + 1):
        guide, total, new = select_guide(spec.output_dir, k, max_e_hull)
        if total == 0:
            log(f"round {k}: no screened candidate within {max_e_hull:g} eV/atom of the "
                "hull to learn from; no more rounds")
            break
        log(f"round {k}: learning from {total} relaxed candidates ({new} new) in {guide}")
        this = round_spec(spec, k, epochs)
        timing = train_round(this)
        if timing is None:
            return None
        summary = screen_round(Path(this.output_dir))
        if summary is None:
            return None
        timing.update({f"screening_{name}": s for name, s in summary["timing_s"].items()})
        (Path(this.output_dir) / "timing.json").write_text(json.dumps(timing, indent=1) + "\n")
        guides.append((total, new))
    return rounds_table(spec.output_dir, len(guides), guides, summarise)
