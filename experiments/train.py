"""Trains CrystalGAN (or one of its baselines) on two binary hydride domains, and with
``--screen`` screens what it generated.

    python experiments/train.py --flagfile=experiments/pdni.flags          # the discovery job
    python experiments/train.py --flagfile=experiments/pdni_paper.flags    # the paper's method

The discovery job (``pdni.flags``, ``mgti.flags``) trains crystalgan_plus as a population
of seeds, pools their unique strictly good candidates and, with ``--screen``, relaxes
them and ranks them by energy above the system's hull
(:mod:`crystalgan_jax.pipeline.discovery`): "Candidates for DFT" then opens the run's
report.md. Without the ``screen`` extra the run ends after pooling with a one-line hint.
``--resume`` continues whichever phase was interrupted: training from its checkpoint,
or the screening from its journals (a finished training's outputs are kept).

A bare ``--flagfile`` name that is not found from the working directory is looked up
beside this script, so ``--flagfile=pdni.flags`` works from the repository root too.
"""

from __future__ import annotations

import contextlib
import json
import signal
import sys
import time
from pathlib import Path

from crystalgan_jax.pipeline import startup

startup.collect_less()  # before the heavy imports below

from absl import app, flags, logging  # noqa: E402

from crystalgan_jax.pipeline import cli  # noqa: E402
from crystalgan_jax.pipeline.spec import PopulationSpec, make_members  # noqa: E402
from crystalgan_jax.materials.io import StructureFileError  # noqa: E402
from crystalgan_jax.train.checkpoints import CheckpointError  # noqa: E402
from crystalgan_jax.pipeline.errors import DivergenceError, RunError  # noqa: E402
from crystalgan_jax.pipeline.job import PopulationResult, run  # noqa: E402
from crystalgan_jax import locking  # noqa: E402
from crystalgan_jax.screening import potentials  # noqa: E402  (imports no torch)

HERE = Path(__file__).resolve().parent
FLAGS = flags.FLAGS
cli.define_flags(FLAGS)  # one flag per RunSpec / TrainConfig / Weights field
flags.adopt_module_key_flags(cli)  # so that --help lists them
cli.define_population_flags(FLAGS)
flags.DEFINE_bool("screen", False, "After training, screen the candidates: relax them "
                  "(--potential, the `screen` extra), E_hull against the system's hull of "
                  "elements, binaries, alloys and the substitution baseline, and 'Candidates "
                  "for DFT' at the top of report.md. The screening flags below apply.")
cli.define_screen_flags(FLAGS, with_only=False)
flags.DEFINE_integer("rounds", 0, "With --screen: rounds of learning from the screen after "
                     "the first. Round k fine-tunes round k-1's stage 3 (--round_epochs) with "
                     "every earlier round's relaxed candidates within --round_max_e_hull as "
                     "real examples, then writes, pools and screens it in OUTPUT_DIR/rounds/k; "
                     "OUTPUT_DIR/rounds.md compares the rounds.")
flags.DEFINE_integer("round_epochs", 100, "Stage-3 epochs of each round after the first.")
flags.DEFINE_float("round_max_e_hull", 0.1, "eV/atom: the relaxed candidates a round "
                   "learns from lie at most this far above the hull.")


def is_population() -> bool:
    """Any population flag (or several processes) takes the population path."""
    return (FLAGS.num_seeds is not None or bool(FLAGS.seeds)
            or any(getattr(FLAGS, f"sweep_l{i}") for i in range(1, 8))
            or FLAGS.distributed or FLAGS.coordinator_address is not None)


def population_from_flags(spec) -> PopulationSpec:
    """--seeds or --num_seeds (from --seed on), and the --sweep_l* values."""
    if FLAGS.seeds and FLAGS.num_seeds is not None:
        raise app.UsageError("give --seeds or --num_seeds, not both")
    try:
        seeds = ([int(s) for s in FLAGS.seeds] if FLAGS.seeds else
                 list(range(FLAGS.seed, FLAGS.seed + (FLAGS.num_seeds or 1))))
        sweeps = {f"l{i}": [float(v) for v in getattr(FLAGS, f"sweep_l{i}")]
                  for i in range(1, 8)}
    except ValueError as err:
        raise app.UsageError(f"--seeds / --sweep_l*: not a number ({err})")
    if FLAGS.num_seeds is not None and FLAGS.num_seeds < 1:
        raise app.UsageError(f"--num_seeds must be at least 1, got {FLAGS.num_seeds}")
    members = make_members(seeds, spec.train.weights, sweeps)
    return PopulationSpec(spec, members)


def train(spec):
    """run() of the single run or the population the flags ask for; None where the flags
    are wrong (the message printed)."""
    if not is_population():
        return run(spec, extra_files={"flags.txt": FLAGS.flags_into_string()})
    try:
        pop = population_from_flags(spec)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return None
    try:
        cli.initialize_distributed(FLAGS)  # before JAX touches a device
    except cli.UsageError as err:
        raise app.UsageError(str(err)) from None
    return run(pop, extra_files={"flags.txt": FLAGS.flags_into_string()})


def screen(out: Path) -> int:
    """The screening phase (--screen) of the run in ``out``; an exit status."""
    from crystalgan_jax.pipeline import discovery

    log = lambda msg: logging.info("%s", msg)  # noqa: E731
    again = " ".join(["python experiments/train.py"] + [
        a for a in sys.argv[1:] if not a.startswith(("--resume", "--overwrite"))] + ["--resume"])
    try:
        relaxers = cli.relaxers_from_flags(FLAGS, log)
        with contextlib.ExitStack() as held:
            for relaxer in relaxers:
                held.enter_context(relaxer)
            discovery.screen_run(out, relaxers[0], stability_threshold=FLAGS.stability_threshold,
                                 use_cache=FLAGS.hull_cache, log=log,
                                 second=relaxers[1] if len(relaxers) > 1 else None,
                                 second_mode=FLAGS.second_opinion,
                                 h_fraction=cli.h_fraction_from_flags(FLAGS),
                                 symmetrize=FLAGS.symmetrize, heredity=FLAGS.heredity,
                                 permutations=FLAGS.permutations)
    except potentials.MissingExtraError as err:  # (a package that is there but broken too)
        hint = f"{err}; then `{again}` screens this run"
        print(f"not screened: {hint}")
        discovery.write_report_section(out / "report.md", discovery.not_screened_markdown(hint))
        return 0
    except locking.FolderLockedError as err:
        print(f"error: {err}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print(f"interrupted: finished relaxations are journaled in {out}/screening; "
              f"`{again}` continues", file=sys.stderr)
        return 130
    return 0


def learn_from_screen(spec, out: Path) -> int:
    """Rounds 1..--rounds (crystalgan_jax.pipeline.rounds) after the screened round 0 in
    ``out``; an exit status."""
    from crystalgan_jax.pipeline import discovery, rounds

    def train_round(round_spec) -> dict | None:
        try:
            result = train(round_spec)
        except (StructureFileError, FileExistsError, RunError, CheckpointError) as err:
            print(f"error: {err}", file=sys.stderr)
            return None
        return None if result is None else result.timing

    def screen_round(folder: Path) -> dict | None:
        if screen(folder):
            return None
        return json.loads((folder / "screening" / "summary.json").read_text())

    table = rounds.run_rounds(spec, FLAGS.rounds, FLAGS.round_epochs, FLAGS.round_max_e_hull,
                              train_round, screen_round, discovery.summarise,
                              log=lambda msg: logging.info("%s", msg))
    if table is None:
        return 2
    for row in table["rounds"]:
        print(f"round {row['round']}: guide {row['guide']}, S.U.N. {row['sun']}, on hull "
              f"{row['on_hull']}, lowest E_hull {row['lowest_e_hull']}, median steps "
              f"{row['median_steps']}, formulas gen/sub lower {row['formulas']['generator']}"
              f"/{row['formulas']['substitution']}")
    if len(table["rounds"]) > 1:
        print(f"rounds compared in {out / 'rounds.md'}")
    return 0


def main(argv: list[str]) -> int:
    cli.start_script(argv, FLAGS, HERE)
    try:
        spec = cli.spec_from_flags(FLAGS, data_root=HERE.parent)
    except cli.UsageError as err:
        raise app.UsageError(str(err)) from None
    except ValueError as err:  # a hyperparameter out of range
        print(f"error: {err}", file=sys.stderr)
        return 2
    if FLAGS.rounds and not FLAGS.screen:
        raise app.UsageError("--rounds learns from the screening: add --screen")
    if FLAGS.rounds < 0 or FLAGS.round_epochs < 1:
        raise app.UsageError(f"--rounds must be >= 0 and --round_epochs >= 1, got "
                             f"{FLAGS.rounds}, {FLAGS.round_epochs}")
    if FLAGS.screen:  # a wrong --potentials is refused before any training
        try:
            potentials.parse_names(",".join(FLAGS.potentials))
            cli.h_fraction_from_flags(FLAGS)
        except cli.UsageError as err:
            raise app.UsageError(str(err)) from None
        except ValueError as err:
            raise app.UsageError(f"--potentials: {err}") from None
    out = Path(spec.output_dir)
    tic = time.perf_counter()
    try:
        result = train(spec)
    except (StructureFileError, FileExistsError, RunError, CheckpointError) as err:  # bad
        # input, or an output folder this run cannot use
        print(f"error: {err}", file=sys.stderr)
        return 3 if isinstance(err, DivergenceError) else 2
    except KeyboardInterrupt as err:  # SIGINT or SIGTERM, state saved: 128 + signal
        return 128 + getattr(err, "signum", signal.SIGINT)
    if result is None:
        return 2
    timing = {**result.timing, "job": round(time.perf_counter() - tic, 2)}
    pooled = isinstance(result, PopulationResult)
    counts = ((result.pooled if pooled else result.report) or {}).get("counts")
    print(f"outputs in {out}" + (f"; {'pooled ' if pooled else ''}counts {counts}"
                                 if counts else ""))
    code = 0
    if FLAGS.screen and spec.evaluate:
        tic = time.perf_counter()
        code = screen(out)
        timing["screening_phase"] = round(time.perf_counter() - tic, 2)
        summary = out / "screening" / "summary.json"
        if code == 0 and summary.exists():
            data = json.loads(summary.read_text())
            timing.update({f"screening_{k}": v for k, v in data["timing_s"].items()})
            print(f"screened: generator {data['generator']}; substitution "
                  f"{data['substitution']}; {out / 'report.md'}")
        if code == 0 and FLAGS.rounds:
            tic = time.perf_counter()
            code = learn_from_screen(spec, out)
            timing["rounds"] = round(time.perf_counter() - tic, 2)
    logging.info("wall time by phase (s): %s", ", ".join(f"{k} {v}" for k, v in timing.items()))
    (out / "timing.json").write_text(json.dumps(timing, indent=1) + "\n")
    return code


if __name__ == "__main__":
    app.run(lambda argv: cli.finish(main(argv)), argv=cli.resolve_flagfiles(sys.argv, HERE))
