"""Screens candidates with CHGNet: relaxation, energy above the hull, S.U.N. counts.

    python experiments/screen.py --run_dir=runs/pdni
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
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from absl import app, flags

from crystalgan_jax.pipeline import cli
from crystalgan_jax.materials import io
from crystalgan_jax.screening import relax as screening, runs as screen_runs

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

_log = screen_runs._log
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
    tic = time.perf_counter()
    calculator = screening.load_calculator(FLAGS.threads)
    _log(f"CHGNet {screening.model_version(calculator)} loaded in "
         f"{time.perf_counter() - tic:.1f}s ({FLAGS.threads} torch thread(s))")
    try:
        sys_ = screen_runs.System(system["element_a"], system["element_b"], system["data_ah"],
                      system["data_bh"], system["options"], calculator, FLAGS.fmax,
                      FLAGS.max_steps,
                      Path(FLAGS.hull_journal or out / "training_relaxations.jsonl"))
        result = sys_.screen(candidates, out, str(run_dir or folder),
                             FLAGS.stability_threshold)
    except KeyboardInterrupt:
        _log(f"interrupted: finished relaxations are in {out}/*.jsonl; run the same "
             "command again to continue")
        return 130
    if run_dir is not None:
        screen_runs.link_from_report(run_dir / "report.md", out / "screening.md", result["counts"])
    print(json.dumps(result["counts"]))
    return 0


if __name__ == "__main__":
    app.run(main, argv=cli.resolve_flagfiles(sys.argv, HERE))
