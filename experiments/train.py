"""Trains CrystalGAN (or one of its baselines) on two binary hydride domains.

    python experiments/train.py --flagfile=experiments/pdni.flags

A bare ``--flagfile`` name that is not found from the working directory is looked up
beside this script, so ``--flagfile=pdni.flags`` works from the repository root too.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path

from absl import app, flags

from crystalgan_jax import cli
from crystalgan_jax.io import StructureFileError
from crystalgan_jax.runner import CheckpointError, DivergenceError, RunError, run

HERE = Path(__file__).resolve().parent
FLAGS = flags.FLAGS
cli.define_flags(FLAGS)  # one flag per RunSpec / TrainConfig / Weights field
flags.adopt_module_key_flags(cli)  # so that --help lists them


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    cli.configure_logging(FLAGS, HERE)
    cli.enable_compilation_cache()
    try:
        spec = cli.spec_from_flags(FLAGS, data_root=HERE.parent)
    except cli.UsageError as err:
        raise app.UsageError(str(err)) from None
    except ValueError as err:  # a hyperparameter out of range
        print(f"error: {err}", file=sys.stderr)
        return 2
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
    app.run(main, argv=cli.resolve_flagfiles(sys.argv, HERE))
