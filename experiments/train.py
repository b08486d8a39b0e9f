"""Trains CrystalGAN (or one of its baselines) on two binary hydride domains.

    python experiments/train.py --flagfile=experiments/pdni.flags

A bare ``--flagfile`` name that is not found from the working directory is looked up
beside this script, so ``--flagfile=pdni.flags`` works from the repository root too.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path

from crystalgan_jax.pipeline import startup

startup.collect_less()  # before the heavy imports below

from absl import app, flags  # noqa: E402

from crystalgan_jax.pipeline import cli  # noqa: E402
from crystalgan_jax.pipeline.spec import PopulationSpec, make_members  # noqa: E402
from crystalgan_jax.materials.io import StructureFileError  # noqa: E402
from crystalgan_jax.train.checkpoints import CheckpointError  # noqa: E402
from crystalgan_jax.pipeline.errors import DivergenceError, RunError  # noqa: E402
from crystalgan_jax.pipeline.job import run  # noqa: E402

HERE = Path(__file__).resolve().parent
FLAGS = flags.FLAGS
cli.define_flags(FLAGS)  # one flag per RunSpec / TrainConfig / Weights field
flags.adopt_module_key_flags(cli)  # so that --help lists them
cli.define_population_flags(FLAGS)


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


def run_population(spec) -> int:
    try:
        pop = population_from_flags(spec)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        cli.initialize_distributed(FLAGS)  # before JAX touches a device
    except cli.UsageError as err:
        raise app.UsageError(str(err)) from None
    try:
        result = run(pop, extra_files={"flags.txt": FLAGS.flags_into_string()})
    except (StructureFileError, FileExistsError, RunError, CheckpointError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 3 if isinstance(err, DivergenceError) else 2
    except KeyboardInterrupt as err:
        return 128 + getattr(err, "signum", signal.SIGINT)
    if result.pooled:
        print(f"outputs in {result.output_dir}; pooled counts {result.pooled['counts']}")
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
    if is_population():
        return run_population(spec)
    out = Path(spec.output_dir)
    try:
        result = run(spec, extra_files={"flags.txt": FLAGS.flags_into_string()})
    except (StructureFileError, FileExistsError, RunError, CheckpointError) as err:  # bad
        # input, or an output folder this run cannot use
        print(f"error: {err}", file=sys.stderr)
        return 3 if isinstance(err, DivergenceError) else 2
    except KeyboardInterrupt as err:  # SIGINT or SIGTERM, state saved: 128 + signal
        return 128 + getattr(err, "signum", signal.SIGINT)
    counts = (result.report or {}).get("counts")
    print(f"outputs in {out}" + (f"; counts {counts}" if counts else ""))
    return 0


if __name__ == "__main__":
    app.run(lambda argv: cli.finish(main(argv)), argv=cli.resolve_flagfiles(sys.argv, HERE))
