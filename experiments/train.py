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

from crystalgan_jax import geometry  # noqa: E402
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
                  "crystalgan | nocons (l5=l6=0) | discogan (stage 1 only) | gan (noise input) | "
                  "crystalgan_plus (this project's improvements, each switchable by its flag).")
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
# crystalgan_plus ingredients (issue 13); unset = the method's default (training.PLUS_DEFAULTS
# for crystalgan_plus, off for every other method).
flags.DEFINE_bool("plus_clash", None, "crystalgan_plus: turn the clash term on (l7 = 1 where "
                  "--l7 is 0).")
flags.DEFINE_float("window_weight", None, "Weight of L_win: nearest-distance windows per "
                   "class (A-H, B-H, H-metal, metal-metal, H-H) learned from the training data.")
flags.DEFINE_list("window_percentiles", ["1", "99"], "Percentiles of the training distances "
                  "bounding each learned window.")
flags.DEFINE_float("spacing_weight", None, "Weight of L_cell, which keeps generated lattice "
                   "planes at least --min_plane_spacing apart.")
flags.DEFINE_float("min_plane_spacing", 0.0, "Angstrom; 0 = the training cells' smallest.")
flags.DEFINE_float("input_noise", None, "Std (A) of Gaussian noise on the stage-3 inputs, "
                   "in training and sampling.")
flags.DEFINE_integer("samples_per_input", None, "Stage-3 samples drawn per input when "
                     "generating.")
flags.DEFINE_bool("random_pairings", None, "Later samples pair stage-1 outputs at random.")
flags.DEFINE_float("snap_symprec", None, "Snap final structures with a space group above P1 "
                   "at this tolerance (A) to it; 0 = off.")
flags.DEFINE_integer("checkpoint_every", 100, "Epochs between checkpoints.")
flags.DEFINE_integer("chunk_epochs", 50, "Epochs per compiled call (progress granularity).")
flags.DEFINE_integer("n_h", None, "Rows of the H block (default: the most H in the data).")
flags.DEFINE_integer("n_metal", None, "Rows of each metal block (default: from the data).")
flags.DEFINE_bool("resume", False, "Continue from the latest checkpoint in --output_dir.")
flags.DEFINE_bool("overwrite", False, "Delete an existing run in --output_dir first.")
flags.DEFINE_bool("evaluate", True, "Write report.json / report.md after training.")


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
                      max_images=FLAGS.max_images, residual=FLAGS.residual,
                      plus_clash=FLAGS.plus_clash, window_weight=FLAGS.window_weight,
                      window_percentiles=tuple(float(v) for v in FLAGS.window_percentiles),
                      spacing_weight=FLAGS.spacing_weight,
                      min_plane_spacing=FLAGS.min_plane_spacing, input_noise=FLAGS.input_noise,
                      samples_per_input=FLAGS.samples_per_input,
                      random_pairings=FLAGS.random_pairings, snap_symprec=FLAGS.snap_symprec)
    return RunSpec(data_ah=data_path(FLAGS.data_ah), data_bh=data_path(FLAGS.data_bh), element_a=FLAGS.element_a,
                   element_b=FLAGS.element_b, output_dir=FLAGS.output_dir, train=cfg,
                   seed=FLAGS.seed, checkpoint_every=FLAGS.checkpoint_every,
                   resume=FLAGS.resume, overwrite=FLAGS.overwrite, n_h=FLAGS.n_h,
                   n_metal=FLAGS.n_metal, evaluate=FLAGS.evaluate)


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO
    try:
        spec = spec_from_flags()
    except ValueError as err:  # a hyperparameter out of range
        print(f"error: {err}", file=sys.stderr)
        return 2
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
