"""Screens candidates: relaxation, energy above an honest hull, S.U.N. counts.

    python experiments/screen.py --run_dir=runs/pdni
    python experiments/screen.py --structures=some/folder --flagfile=experiments/pdni_paper.flags

Needs the ``screen`` extra (``pip install 'torch==2.13.0+cpu' && pip install -e
'.[screen]'``; without it, a one-line hint). ``--run_dir`` screens a training run as
``train.py --screen`` does (:mod:`crystalgan_jax.pipeline.discovery`): a population's
pooled candidates (a single run's unique strictly good structures), judged with the
substitution baseline on the hull of elements, training binaries, A-B alloys and the
baseline's own structures, into ``RUN_DIR/screening`` and the "Candidates for DFT" at
the top of its report.md. ``--structures`` screens any folder of POSCAR/CIF files
(``--only`` chooses which), the system coming from train.py's flags (``--element_a``,
``--data_ah``, ... or a flagfile), into ``--output`` (default ``FOLDER/screening``);
``--hull_substitution`` adds the baseline to its hull.

A screening folder holds ``screening.json``, ``screening.md`` (every candidate ranked by
E_hull), ``relaxed/`` (POSCAR, CIF and the symmetrised CIF) and the journals
``relaxations.jsonl`` / ``hull_relaxations.jsonl`` of every relaxation as it ends: an
interrupted screening run again with the same settings picks up where it stopped.
``--workers`` relaxations run at once, one process each. ``--potentials=chgnet,sevennet``
(the ``sevennet`` extra) adds a second opinion: the second potential judges every relaxed
candidate against its own hull of the same phases (``--second_opinion``), and
screening.json / .md get both E_hull, their difference and the consensus verdict
(:mod:`crystalgan_jax.screening.second_opinion`); ``experiments/verify.py`` checks the top
candidates with DFT.

Array jobs: ``--shard=i/N`` relaxes every N-th candidate into ``OUTPUT/shards/i-of-N``
(its own journals and lock); ``--collect=N`` merges the N shards into one screening in
``OUTPUT`` (see :mod:`crystalgan_jax.screening.shards`). One screening per folder: a
second one into the same folder is refused, naming the first (exit status 3).

The hull is cached per system under ``$CRYSTALGAN_CACHE`` or
``~/.cache/crystalgan_jax/hulls`` (``--nohull_cache`` to skip it).
"""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path

from absl import app, flags

from crystalgan_jax.pipeline import cli, discovery
from crystalgan_jax.materials import io
from crystalgan_jax import locking
from crystalgan_jax.screening import potentials, runs as screen_runs, shards

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
flags.DEFINE_string("run_dir", None, "A training run's output folder: screen its "
                    "candidates with the system of its config.json.")
flags.DEFINE_string("structures", None, "Any folder of POSCAR/CIF files to screen "
                    "(searched recursively); the system from train.py's flags.")
flags.DEFINE_string("output", None, "Where a --structures screening goes (default "
                    "STRUCTURES/screening); a run's goes into RUN_DIR/screening.")
flags.DEFINE_string("hull_journal", None, "Journal of the hull's relaxations (default "
                    "OUTPUT/hull_relaxations.jsonl).")
flags.DEFINE_string("shard", None, "i/N: relax every N-th candidate from the i-th "
                    "(0 <= i < N) into OUTPUT/shards/i-of-N, for the tasks of an array job.")
flags.DEFINE_integer("collect", None, "N: merge the N shards' relaxations into one "
                     "screening in OUTPUT (after every --shard=i/N has run).")
flags.DEFINE_bool("hull_substitution", False, "--structures: also relax the substitution "
                  "baseline into the hull and judge whether each candidate beats it "
                  "(always so with --run_dir).")

_log = screen_runs.log_line


def candidates_of(run_dir: Path | None, system: dict) -> list:
    """The structures to screen: a run's (discovery.run_candidates), or --structures'."""
    if run_dir is not None:
        return discovery.run_candidates(run_dir, system)
    folder = Path(FLAGS.structures)
    named = [(str(p.relative_to(folder)), io.read_structure(p))
             for p in screen_runs.structure_files(folder)]
    kept = screen_runs.select(named, system["element_a"], system["element_b"], FLAGS.only,
                              system["options"])
    _log(f"{len(kept)} of {len(named)} structures in {folder} pass --only={FLAGS.only}")
    return kept


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    cli.configure_logging(FLAGS, HERE)
    if (FLAGS.run_dir is None) == (FLAGS.structures is None):
        raise app.UsageError("give exactly one of --run_dir and --structures")
    run_dir = Path(FLAGS.run_dir) if FLAGS.run_dir else None
    if run_dir is None and not Path(FLAGS.structures).is_dir():
        raise app.UsageError(f"{FLAGS.structures} is not a folder of structures")
    missing = cli.missing_required(FLAGS)
    if run_dir is None and missing:
        raise app.UsageError(f"--structures needs the system: give {', '.join(missing)} (or "
                             "a flagfile such as --flagfile=experiments/pdni_paper.flags)")
    out = (run_dir / discovery.SCREENING if run_dir else
           Path(FLAGS.output) if FLAGS.output else Path(FLAGS.structures) / "screening")
    try:
        system = (screen_runs.run_system(run_dir) if run_dir is not None else
                  screen_runs.spec_system(cli.spec_from_flags(FLAGS, data_root=HERE.parent)))
        h_fraction = cli.h_fraction_from_flags(FLAGS)
        candidates = candidates_of(run_dir, system)
        shard = shards.parse_shard(FLAGS.shard) if FLAGS.shard is not None else None
        if shard and FLAGS.collect:
            raise shards.ShardError("give --shard or --collect, not both")
        relaxer, *others = cli.relaxers_from_flags(FLAGS, _log)
        second = others[0] if others else None
    except cli.UsageError as err:
        raise app.UsageError(str(err)) from None
    except potentials.MissingExtraError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (io.StructureFileError, ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        with relaxer, (second or contextlib.nullcontext()):
            if FLAGS.collect:
                with locking.lock_folder(out, _log):
                    shards.merge_journals(out, FLAGS.collect, [n for n, _ in candidates])
                _log(f"{FLAGS.collect} shards merged into {out / 'relaxations.jsonl'}")
            dest = shards.shard_dir(out, *shard) if shard else out
            if shard:
                candidates = shards.shard_of(candidates, *shard)
                _log(f"shard {shard[0]}/{shard[1]}: {len(candidates)} candidates into {dest}")
            journal = Path(FLAGS.hull_journal or dest / screen_runs.HULL_JOURNAL)
            if run_dir is not None and not shard:
                summary = discovery.screen_run(run_dir, relaxer,
                                               stability_threshold=FLAGS.stability_threshold,
                                               use_cache=FLAGS.hull_cache, log=_log,
                                               candidates=candidates, second=second,
                                               second_mode=FLAGS.second_opinion,
                                               h_fraction=h_fraction,
                                               symmetrize=FLAGS.symmetrize,
                                               heredity=FLAGS.heredity,
                                               permutations=FLAGS.permutations)
                print(json.dumps({"generator": summary["generator"],
                                  "substitution": summary["substitution"]}))
                return 0
            sys_ = screen_runs.System(system["element_a"], system["element_b"],
                                      system["data_ah"], system["data_bh"], system["options"],
                                      relaxer, journal,
                                      substitution_in_hull=FLAGS.hull_substitution or
                                      run_dir is not None, use_cache=FLAGS.hull_cache)
            result = sys_.screen(candidates, dest, str(run_dir or FLAGS.structures),
                                 FLAGS.stability_threshold, symmetrize=FLAGS.symmetrize)
            if second is not None:  # the second opinion, with its own hull
                result = sys_.second_opinion(result, dest, second, FLAGS.second_opinion, _log)
    except (shards.ShardError, FileNotFoundError, potentials.MissingExtraError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except locking.FolderLockedError as err:
        print(f"error: {err}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        _log(f"interrupted: finished relaxations are in {out}/*.jsonl; run the same "
             "command again to continue")
        return 130
    print(json.dumps(result["counts"]))
    return 0


if __name__ == "__main__":
    app.run(main, argv=cli.resolve_flagfiles(sys.argv, HERE))
