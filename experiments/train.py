"""Trains CrystalGAN (or one of its baselines) on two binary hydride domains.

    python experiments/train.py --flagfile=experiments/pdni.flags

A bare ``--flagfile`` name that is not found from the working directory is looked up
beside this script, so ``--flagfile=pdni.flags`` works from the repository root too.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _resolve_flagfiles(argv: list[str]) -> list[str]:
    """Rewrites ``--flagfile=NAME`` to the copy beside this script when NAME is not found."""
    out = []
    for arg in argv:
        if arg.startswith("--flagfile="):
            name = arg.split("=", 1)[1]
            if not Path(name).exists() and (HERE / name).exists():
                arg = f"--flagfile={HERE / name}"
        out.append(arg)
    return out


from absl import app, flags, logging  # noqa: E402

import jax  # noqa: E402

from crystalgan_jax import geometry, population  # noqa: E402
from crystalgan_jax.encoding import BLOCKS  # noqa: E402
from crystalgan_jax.io import StructureFileError  # noqa: E402
from crystalgan_jax.losses import Weights  # noqa: E402
from crystalgan_jax.runner import ResumeMismatchError, RunSpec, run  # noqa: E402
from crystalgan_jax.training import METHODS, TrainConfig  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("data_ah", "data/PdH", "Folder of A-H POSCAR/CIF files, or an authors' .mat file.")
flags.DEFINE_string("data_bh", "data/NiH", "Folder of B-H POSCAR/CIF files, or an authors' .mat file.")
flags.DEFINE_string("element_a", "Pd", "Metal A.")
flags.DEFINE_string("element_b", "Ni", "Metal B.")
flags.DEFINE_string("output_dir", "runs/pdni", "Output directory.")
flags.DEFINE_enum("method", "crystalgan", METHODS,
                  "crystalgan | nocons (l5=l6=0) | discogan (stage 1 only) | gan (noise input).")
flags.DEFINE_integer("seed", 0, "PRNG seed.")
flags.DEFINE_integer("epochs", 1000, "Epochs per stage.")
flags.DEFINE_integer("batch_size", 35, "Minibatch size.")
flags.DEFINE_float("learning_rate", 1e-4, "Adam learning rate.")
flags.DEFINE_float("beta1", 0.5, "Adam beta1.")
flags.DEFINE_float("beta2", 0.999, "Adam beta2.")
flags.DEFINE_integer("generator_steps", 5, "Generator updates per discriminator update.")
flags.DEFINE_integer("depth", 5, "Hidden layers of every MLP.")
flags.DEFINE_integer("width", 100, "Units per hidden layer.")
for i, what in enumerate(["L_GAN (A->B direction)", "L_R (AH cycle)", "L_GAN (B->A direction)",
                          "L_R (BH cycle)", "L_geo1", "L_geo2"], start=1):
    flags.DEFINE_float(f"l{i}", 1.0, f"Weight l{i} of {what}.")
flags.DEFINE_float("l7", 0.0, "Weight l7 of L_clash, a repulsion between all atoms closer than "
                   "--clash_factor x the sum of their covalent radii (not in the paper; 0 = off).")
flags.DEFINE_float("clash_factor", 0.8, "Fraction of the covalent radius sum used by L_clash.")
flags.DEFINE_float("occupancy_weight", 1.0, "Weight of the occupancy term inside each L_R.")
flags.DEFINE_float("d1", 1.8, "Shortest allowed constrained nearest-neighbour distance (A).")
flags.DEFINE_float("d2", 3.0, "Longest allowed constrained nearest-neighbour distance (A).")
flags.DEFINE_enum("geometry_form", "hinge", ["hinge", "paper"], "Geometric penalty form.")
flags.DEFINE_list("constrained", ["AB", "H"],
                  "Constrained classes: each item a set of blocks among H, A, B whose atoms are "
                  "constrained to their nearest atom of the same set (AB = metal-metal).")
flags.DEFINE_integer("latent_dim", 32, "Noise size of the GAN baseline (--method=gan).")
flags.DEFINE_integer("max_images", 3, "Most lattice images per axis in the geometric penalty.")
flags.DEFINE_bool("residual", False, "Generators predict a correction to their input "
                  "coordinates (not in the paper).")
flags.DEFINE_integer("checkpoint_every", 100, "Epochs between checkpoints.")
flags.DEFINE_integer("chunk_epochs", 50, "Epochs per compiled call (progress granularity).")
flags.DEFINE_integer("n_h", None, "Rows of the H block (default: the most H in the data).")
flags.DEFINE_integer("n_metal", None, "Rows of each metal block (default: from the data).")
flags.DEFINE_bool("resume", False, "Continue from the latest checkpoint in --output_dir.")
flags.DEFINE_bool("overwrite", False, "Delete an existing run in --output_dir first.")
flags.DEFINE_bool("evaluate", True, "Write report.json / report.md after training.")

# Populations (crystalgan_jax.population): many runs in one compiled program.
flags.DEFINE_integer("num_seeds", None, "Train a population of this many seeds, --seed, "
                     "--seed+1, ..., in one program (members/<name>/ per member, pooled "
                     "candidates/ and report.md).")
flags.DEFINE_list("seeds", [], "Train a population of these seeds (e.g. 0,3,7) in one program.")
for i in range(1, 8):
    flags.DEFINE_list(f"sweep_l{i}", [], f"Population: one member per value of l{i} and seed "
                      f"(e.g. 0.1,1,10); overrides --l{i}.")
flags.DEFINE_string("coordinator_address", None, "Several processes (hosts): address "
                    "host:port of process 0, for jax.distributed.initialize.")
flags.DEFINE_integer("num_processes", None, "Several processes: how many in all.")
flags.DEFINE_integer("process_id", None, "Several processes: this one's index, 0 first.")
flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() with what the "
                  "cluster's environment says (SLURM, TPU pods, ...): a population over "
                  "every process.")


def data_path(path: str) -> str:
    """A relative data path is looked up from the working directory, then the repository root.

    So the flagfiles' ``data/PdH`` works whether train.py is started from the root or from
    ``experiments/``.
    """
    if Path(path).is_absolute() or Path(path).exists():
        return path
    candidate = HERE.parent / path
    return str(candidate) if candidate.exists() else path


def parse_classes(items: list[str]) -> tuple[tuple[int, ...], ...]:
    """["AB", "H"] -> ((1, 2), (0,)) in block indices."""
    classes = []
    for item in items:
        blocks = []
        for letter in item.strip().upper():
            if letter not in BLOCKS:
                raise app.UsageError(f"--constrained: {letter!r} is not one of {BLOCKS}")
            blocks.append(BLOCKS.index(letter))
        classes.append(tuple(sorted(set(blocks))))
    return tuple(classes) or geometry.DEFAULT_CLASSES


def spec_from_flags() -> RunSpec:
    weights = Weights(*(getattr(FLAGS, f"l{i}") for i in range(1, 8)),
                      occupancy=FLAGS.occupancy_weight)
    cfg = TrainConfig(method=FLAGS.method, epochs=FLAGS.epochs, batch_size=FLAGS.batch_size,
                      learning_rate=FLAGS.learning_rate, beta1=FLAGS.beta1, beta2=FLAGS.beta2,
                      generator_steps=FLAGS.generator_steps, depth=FLAGS.depth,
                      width=FLAGS.width, weights=weights, d1=FLAGS.d1, d2=FLAGS.d2,
                      classes=parse_classes(FLAGS.constrained),
                      geometry_form=FLAGS.geometry_form, chunk_epochs=FLAGS.chunk_epochs,
                      clash_factor=FLAGS.clash_factor, latent_dim=FLAGS.latent_dim,
                      max_images=FLAGS.max_images, residual=FLAGS.residual)
    return RunSpec(data_ah=data_path(FLAGS.data_ah), data_bh=data_path(FLAGS.data_bh), element_a=FLAGS.element_a,
                   element_b=FLAGS.element_b, output_dir=FLAGS.output_dir, train=cfg,
                   seed=FLAGS.seed, checkpoint_every=FLAGS.checkpoint_every,
                   resume=FLAGS.resume, overwrite=FLAGS.overwrite, n_h=FLAGS.n_h,
                   n_metal=FLAGS.n_metal, evaluate=FLAGS.evaluate)


def is_population() -> bool:
    """Any population flag (or several processes) takes the population path."""
    return (FLAGS.num_seeds is not None or bool(FLAGS.seeds)
            or any(getattr(FLAGS, f"sweep_l{i}") for i in range(1, 8))
            or FLAGS.distributed or FLAGS.coordinator_address is not None)


def population_from_flags(spec: RunSpec) -> population.PopulationSpec:
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
    members = population.make_members(seeds, spec.train.weights, sweeps)
    return population.PopulationSpec(spec, members)


def initialize_distributed() -> None:
    """jax.distributed.initialize from the flags, or from the cluster's environment."""
    if FLAGS.coordinator_address is not None:
        if FLAGS.num_processes is None or FLAGS.process_id is None:
            raise app.UsageError("--coordinator_address needs --num_processes and --process_id")
        jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes,
                                   FLAGS.process_id)
    elif FLAGS.distributed:
        jax.distributed.initialize()


def run_population(spec: RunSpec) -> int:
    try:
        pop = population_from_flags(spec)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    initialize_distributed()  # before JAX touches a device
    try:
        result = population.run(pop, extra_files={"flags.txt": FLAGS.flags_into_string()})
    except (StructureFileError, FileExistsError, ResumeMismatchError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    if result.pooled:
        print(f"outputs in {result.output_dir}; pooled counts {result.pooled['counts']}")
    return 0


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO
    try:
        spec = spec_from_flags()
    except ValueError as err:  # a hyperparameter out of range
        print(f"error: {err}", file=sys.stderr)
        return 2
    if is_population():
        return run_population(spec)
    out = Path(spec.output_dir)
    try:
        result = run(spec, extra_files={"flags.txt": FLAGS.flags_into_string()})
    except (StructureFileError, FileExistsError, ResumeMismatchError) as err:  # bad input, or
        # a run already there that these flags cannot continue
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    counts = (result.report or {}).get("counts")
    print(f"outputs in {out}" + (f"; counts {counts}" if counts else ""))
    return 0


if __name__ == "__main__":
    app.run(main, argv=_resolve_flagfiles(sys.argv))
