"""DFT check of a screening: PBE single points (GPAW) on the top candidates and their hull.

    python experiments/verify.py --run_dir=runs/pdni --top=5

Needs the ``dft`` extra (README, "DFT check"). Reads ``RUN_DIR/screening/screening.json``
(or ``--screening=FOLDER``), takes the ``--top`` best candidates (by the consensus of the
two potentials where screen.py had ``--potentials=A,B``, else by E_hull) and the hull
phases their E_hull is measured against (``--hull_phases``), computes each with GPAW
(:mod:`crystalgan_jax.screening.dft`), and writes into the screening folder
``dft_check.json`` and ``dft_check.md`` (DFT formation energies and E_hull, each
potential's MAE against DFT); the run's ``report.md`` gets a "DFT check" section.

Before starting it prints the estimated time of every calculation; each calculation is
appended to ``dft_journal.jsonl`` as it ends, so an interrupted check (Ctrl-C, SIGTERM, a
kill) run again with the same settings computes only what is left. Structures over
``--max_atoms`` are skipped, and the check stops before a calculation that would pass
``--time_limit`` (seconds), saying so; a calculation that does not converge is reported
with its reason and left out.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before numpy/GPAW load their BLAS

from absl import app, flags

from crystalgan_jax.screening import dft, dft_check, potentials

FLAGS = flags.FLAGS
flags.DEFINE_string("run_dir", None, "A training run's folder: checks RUN_DIR/screening.")
flags.DEFINE_string("screening", None, "The screening folder (default RUN_DIR/screening).")
flags.DEFINE_integer("top", 5, "How many of the best candidates to check.")
flags.DEFINE_enum("hull_phases", "decomposition", list(dft_check.PHASE_SETS),
                  "Hull phases computed besides the elements: those of each candidate's "
                  "decomposition on the primary's hull, or every phase on that hull.")
flags.DEFINE_float("cutoff", dft.DFTSettings.cutoff_eV, "Plane-wave cutoff (eV).")
flags.DEFINE_float("kpoint_density", dft.DFTSettings.kpoint_density, "k-points per "
                   "reciprocal Angstrom (2 pi included) along each reciprocal vector.")
flags.DEFINE_enum("smearing", dft.DFTSettings.smearing, list(dft.SMEARINGS), "Occupations.")
flags.DEFINE_float("smearing_width", dft.DFTSettings.width_eV, "Smearing width (eV).")
flags.DEFINE_float("h2_box", dft.DFTSettings.h2_box, "Box edge of the H2 reference (A).")
flags.DEFINE_integer("max_scf", dft.DFTSettings.max_scf, "SCF iterations at most.")
flags.DEFINE_list("single_points", [], "More potentials (e.g. sevennet) whose error against "
                  "DFT is measured on the same structures: their single points on every "
                  "structure DFT computed.")
flags.DEFINE_integer("max_atoms", 16, "Structures with more atoms are skipped.")
flags.DEFINE_float("time_limit", 3600.0, "Seconds: no calculation is started that would "
                   "end past this (by its estimate); rerun to continue.")


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _terminate(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if FLAGS.run_dir is None and FLAGS.screening is None:
        raise app.UsageError("give --run_dir (or --screening)")
    if FLAGS.top < 1 or FLAGS.max_atoms < 1 or FLAGS.time_limit <= 0:
        raise app.UsageError("--top, --max_atoms and --time_limit must be positive")
    run_dir = Path(FLAGS.run_dir) if FLAGS.run_dir else None
    folder = Path(FLAGS.screening) if FLAGS.screening else run_dir / "screening"
    try:
        settings = dft.DFTSettings(FLAGS.cutoff, FLAGS.kpoint_density, FLAGS.smearing,
                                   FLAGS.smearing_width, FLAGS.h2_box, FLAGS.max_scf)
    except ValueError as err:
        raise app.UsageError(str(err)) from None
    missing = dft.available()
    if missing:
        print(f"error: {missing}", file=sys.stderr)
        return 2
    try:
        for name in FLAGS.single_points:
            potentials.check_installed(name)
    except (ValueError, potentials.MissingExtraError) as err:
        print(f"error: --single_points: {err}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _terminate)  # a SIGTERM stops as cleanly as Ctrl-C
    tic = time.perf_counter()
    try:
        result = dft_check.read_screening(folder)
        candidates = dft_check.top_candidates(result, folder, FLAGS.top)
        if not candidates:
            raise dft_check.CheckError(f"{folder / 'screening.json'}: no candidate with an "
                                       "E_hull and a relaxed structure")
        system = dft_check.load_system_hull(result)
        phases = dft_check.hull_phases(result, system, candidates, FLAGS.hull_phases)
        tasks = dft_check.tasks(phases, candidates, settings)
        _log(f"DFT check of {len(candidates)} candidate(s) of {folder} and {len(phases)} "
             f"hull phase(s): {', '.join(phases)}")
        journal = dft.DFTJournal(folder / "dft_journal.jsonl", settings, _log)
        computed = dft.run_all(tasks, settings, journal, max_atoms=FLAGS.max_atoms,
                               time_limit_s=FLAGS.time_limit, log=_log)
        single_points = {}
        for name in FLAGS.single_points:
            calculator, label = potentials.load(name)
            single_points[label] = dft_check.single_point_energies(tasks, calculator)
            _log(f"{label}: single points on the {len(tasks)} structures")
        check = dft_check.evaluate(result, phases, candidates, computed, single_points)
    except dft_check.CheckError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        _log(f"interrupted: finished DFT calculations are in {folder / 'dft_journal.jsonl'}; "
             "run the same command again to continue")
        return 130
    import gpaw

    check = {"settings": settings.to_json(), "gpaw_version": gpaw.__version__,
             "phase_set": FLAGS.hull_phases, "max_atoms": FLAGS.max_atoms, **check,
             "calculations": {k: v.to_json() for k, v in computed.items()},
             "timing_s": {"dft": round(sum(r.seconds for r in computed.values()), 1),
                          "estimate": round(sum(r.estimate_s for r in computed.values()), 1),
                          "wall": round(time.perf_counter() - tic, 1)}}
    (folder / "dft_check.json").write_text(json.dumps(check, indent=1))
    section = dft_check.markdown(check)
    (folder / "dft_check.md").write_text(f"# DFT check: {folder}\n\n" + section)
    if run_dir is not None and dft_check.write_section(run_dir / "report.md", section):
        _log(f"{run_dir / 'report.md'}: DFT check section written")
    _log(f"DFT check written to {folder / 'dft_check.md'}")
    print(json.dumps(check["mae"]))
    return 0


if __name__ == "__main__":
    app.run(main)
