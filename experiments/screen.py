"""Screens candidates with CHGNet: relaxation, energy above the hull, S.U.N. counts.

    python experiments/screen.py --run_dir=runs/pdni
    python experiments/screen.py --run_dir=runs/pdni --potentials=chgnet,sevennet
    python experiments/screen.py --structures=some/folder --flagfile=experiments/pdni.flags

Needs the ``screen`` extra (``pip install -e '.[screen]'``). With ``--run_dir`` the
system (elements, training data, d1, d2, classes) comes from the run's ``config.json``
and the candidates are its final structures; with ``--structures`` any folder of
POSCAR/CIF files is screened, the system coming from train.py's flags (``--element_a``,
``--data_ah``, ... or a flagfile).

Writes into ``--output`` (default ``RUN_DIR/screening`` or ``FOLDER/screening``):
``screening.json``, ``screening.md`` (every candidate ranked by E_hull), ``relaxed/``
(the relaxed structures, POSCAR and CIF), and journals ``relaxations.jsonl`` /
``training_relaxations.jsonl`` of every relaxation as it ends: an interrupted screening
run again with the same settings picks up where it stopped. A run's ``report.md`` gets a
"Screening" section linking ``screening.md``.

Array jobs: ``--shard=i/N`` screens every N-th candidate into ``OUTPUT/shards/i-of-N``
(its own journals and lock); ``--collect=N`` merges the N shards into one screening in
``OUTPUT`` (see :mod:`crystalgan_jax.screening.shards`). One screening per folder: a
second one into the same folder is refused, naming the first (exit status 3).

The hull holds the elements, the relaxed training binaries and the relaxed ordered A-B
alloys (``--hull_substitution`` adds the relaxed substitution baseline, and with it the
"beats substitution" verdict); it is cached per system under ``$CRYSTALGAN_CACHE`` or
``~/.cache/crystalgan_jax/hulls``.

Two potentials (``--potentials=chgnet,sevennet``, the ``sevennet`` extra): the first
relaxes every candidate as above; the second gets its own hull (the same phases relaxed by
it, journal ``training_relaxations_<potential>.jsonl``, cached likewise) and judges every
relaxed candidate by a single point or its own relaxation (``--second_opinion``, see
:mod:`crystalgan_jax.screening.second_opinion`); screening.json and screening.md get both
E_hull, their difference and the consensus verdict. ``experiments/verify.py`` checks the
top candidates with DFT.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from absl import app, flags

from crystalgan_jax.pipeline import cli
from crystalgan_jax.materials import io
from crystalgan_jax import locking
from crystalgan_jax.screening import (potentials, runs as screen_runs,
                                      second_opinion, shards)

HERE = Path(__file__).resolve().parent
FLAGS = flags.FLAGS
# the system's flags (elements, data, d1, d2, classes), as train.py; needed only with
# --structures (a run folder's config.json says what its system is)
cli.define_flags(FLAGS, required=False)
flags.adopt_module_key_flags(cli)
cli.define_screen_flags(FLAGS)
# The system comes from the run flags; their --output_dir (a training run's folder) has no
# use here, where --output says where the screening goes.
FLAGS.set_default("output_dir", ".")
flags.DEFINE_string("run_dir", None, "A training run's output folder: screen its final "
                    "structures, with the system of its config.json.")
flags.DEFINE_string("structures", None, "Any folder of POSCAR/CIF files to screen "
                    "(searched recursively); the system from train.py's flags.")
flags.DEFINE_string("output", None, "Where the screening goes (default: RUN_DIR/screening "
                    "or STRUCTURES/screening).")
flags.DEFINE_string("hull_journal", None, "Journal of the training structures' relaxations "
                    "(default OUTPUT/training_relaxations.jsonl); share one between "
                    "screenings of the same system to relax the training set once.")

flags.DEFINE_string("shard", None, "i/N: screen every N-th candidate from the i-th "
                    "(0 <= i < N) into OUTPUT/shards/i-of-N, for the tasks of an array job.")
flags.DEFINE_integer("collect", None, "N: merge the N shards' relaxations into one "
                     "screening in OUTPUT (after every --shard=i/N has run).")
flags.DEFINE_bool("hull_substitution", False, "Also relax the substitution baseline into "
                  "the hull and judge whether each candidate beats substitution.")
flags.DEFINE_enum("potential", "chgnet", list(potentials.POTENTIALS), "The potential "
                  "(chgnet; sevennet: SevenNet-l3i5; emt: ASE's EMT, Pd, Ni, Cu, Ag, Au, Pt, "
                  "Al, H, ..., a fast stand-in for tests); --potentials overrides it.")
flags.DEFINE_string("potentials", None, "Two potentials, primary first, e.g. chgnet,sevennet: "
                    "the primary relaxes every candidate, the second judges each against its "
                    "own hull (--second_opinion) and a consensus verdict is reported.")
flags.DEFINE_enum("second_opinion", "relax", list(second_opinion.MODES), "How the "
                  "second potential judges a candidate: relax (its own relaxation from the "
                  "primary's relaxed structure; the verdicts need it, see "
                  "crystalgan_jax.screening.second_opinion), or single_point on that "
                  "structure (faster).")
flags.DEFINE_bool("hull_cache", True, "Read and write the system's relaxed hull in the "
                  "cache.")

_log = screen_runs.log_line


def load_potential(name: str, threads: int):
    """(calculator, potential name with version) of one of potentials.POTENTIALS."""
    tic = time.perf_counter()
    calculator, potential = potentials.load(name, threads)
    _log(f"{potential} loaded in {time.perf_counter() - tic:.1f}s ({threads} thread(s))")
    return calculator, potential


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    cli.configure_logging(FLAGS, HERE)
    if (FLAGS.run_dir is None) == (FLAGS.structures is None):
        raise app.UsageError("give exactly one of --run_dir and --structures")
    run_dir = Path(FLAGS.run_dir) if FLAGS.run_dir else None
    folder = run_dir / "structures" / "final" if run_dir else Path(FLAGS.structures)
    if not folder.is_dir():
        raise app.UsageError(f"{folder} is not a folder of structures")
    missing = cli.missing_required(FLAGS)
    if run_dir is None and missing:
        raise app.UsageError(f"--structures needs the system: give {', '.join(missing)} (or "
                             "a flagfile such as --flagfile=experiments/pdni.flags)")
    out = Path(FLAGS.output) if FLAGS.output else (run_dir or folder) / "screening"
    try:
        names = potentials.parse_names(FLAGS.potentials or FLAGS.potential)
    except ValueError as err:
        raise app.UsageError(f"--potentials: {err}") from None
    if len(names) > 2:
        raise app.UsageError(f"--potentials takes one or two potentials, got {len(names)}")
    try:
        system = (screen_runs.run_system(run_dir) if run_dir is not None else
                  screen_runs.spec_system(cli.spec_from_flags(FLAGS, data_root=HERE.parent)))
        files = screen_runs.structure_files(folder)
        named = [(str(p.relative_to(folder)), io.read_structure(p)) for p in files]
    except cli.UsageError as err:
        raise app.UsageError(str(err)) from None
    except (io.StructureFileError, ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    candidates = screen_runs.select(named, system["element_a"], system["element_b"], FLAGS.only,
                                    system["options"])
    _log(f"{len(candidates)} of {len(named)} structures in {folder} pass --only={FLAGS.only}")
    try:
        shard = shards.parse_shard(FLAGS.shard) if FLAGS.shard is not None else None
        if shard and FLAGS.collect:
            raise shards.ShardError("give --shard or --collect, not both")
        dest, hull_journal = out, out / "training_relaxations.jsonl"
        if shard:
            candidates = shards.shard_of(candidates, *shard)
            dest = shards.shard_dir(out, *shard)
            hull_journal = dest / "training_relaxations.jsonl"
            _log(f"shard {shard[0]}/{shard[1]}: {len(candidates)} candidates into {dest}")
        if FLAGS.collect:
            with locking.lock_folder(out, _log):
                shards.merge_journals(out, FLAGS.collect, [n for n, _ in candidates])
            _log(f"{FLAGS.collect} shards merged into {out / 'relaxations.jsonl'}")
    except shards.ShardError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except locking.FolderLockedError as err:
        print(f"error: {err}", file=sys.stderr)
        return 3
    try:
        loaded = [load_potential(name, FLAGS.threads) for name in names]
    except potentials.MissingExtraError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    (calculator, potential), *others = loaded
    try:
        sys_ = screen_runs.System(system["element_a"], system["element_b"], system["data_ah"],
                                  system["data_bh"], system["options"], calculator, FLAGS.fmax,
                                  FLAGS.max_steps, Path(FLAGS.hull_journal or hull_journal),
                                  substitution_in_hull=FLAGS.hull_substitution,
                                  use_cache=FLAGS.hull_cache, potential=potential)
        result = sys_.screen(candidates, dest, str(run_dir or folder),
                             FLAGS.stability_threshold)
        for calculator2, potential2 in others:  # the second opinion, with its own hull
            journal2 = dest / f"training_relaxations_{second_opinion.slug(potential2)}.jsonl"
            sys2 = screen_runs.System(system["element_a"], system["element_b"],
                                      system["data_ah"], system["data_bh"], system["options"],
                                      calculator2, FLAGS.fmax, FLAGS.max_steps, journal2,
                                      use_cache=FLAGS.hull_cache, potential=potential2)
            with locking.lock_folder(dest, _log):
                result = second_opinion.judge(result, dest, sys2, FLAGS.second_opinion, _log)
    except locking.FolderLockedError as err:
        print(f"error: {err}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        _log(f"interrupted: finished relaxations are in {dest}/*.jsonl; run the same "
             "command again to continue")
        return 130
    if shard:
        print(json.dumps(result["counts"]))
        return 0
    if run_dir is not None:
        screen_runs.link_from_report(run_dir / "report.md", out / "screening.md", result["counts"])
    print(json.dumps(result["counts"]))
    return 0


if __name__ == "__main__":
    app.run(main, argv=cli.resolve_flagfiles(sys.argv, HERE))
