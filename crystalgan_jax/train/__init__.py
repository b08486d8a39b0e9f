"""CrystalGAN training in JAX: pure functions of (state, data, static configuration).

Callers write ``from crystalgan_jax import train`` and use the names below. The modules,
lowest first (each imports only those above it):

* :mod:`~crystalgan_jax.train.compile`: how hard XLA compiles the one-shot programs;
* :mod:`~crystalgan_jax.train.config`: :class:`TrainConfig`, the methods, their defaults;
* :mod:`~crystalgan_jax.train.stages`: :class:`Stage`, :data:`STAGES`, what each logs,
  and the stage's penalty shifts and length unit from the training cells;
* :mod:`~crystalgan_jax.train.state`: :class:`Networks`, :class:`TrainState`, the
  optimizer, initialisation and the stage-3 generator snapshots;
* :mod:`~crystalgan_jax.train.objectives`: the losses of a stage as functions of its
  parameters;
* :mod:`~crystalgan_jax.train.steps`: train steps, epochs and compiled chunks of epochs;
* :mod:`~crystalgan_jax.train.generation`: feature transfer, each stage's domains, and
  the structures a run generates.

:mod:`~crystalgan_jax.train.checkpoints` (Orbax) is not imported here; import it by name.

The three steps of the method (spec, "The three steps"):

* stage 1, a cross-domain GAN on the (H, metal) views of AH and BH
  (:func:`crystalgan_jax.core.encoding.metal_view`), losses L_G1 and L_D1;
* feature transfer (:func:`feature_transfer`, no training): x_AHB_g = x_AHB1 with the B
  block of y_BHA1, y_BHA_g = y_BHA1 with the A block of x_AHB1;
* stage 3, the same cross-domain GAN on AHB_g and BHA_g, plus the geometric terms.
"""

from crystalgan_jax.train.compile import (QUICK_COMPILE, QUICK_COMPILE_STEPS,
                                          quick_compile_options, quick_jit)
from crystalgan_jax.train.config import (GEOMETRY_FORMS, METHODS, PLUS_DEFAULTS, PLUS_OFF,
                                         SITE_PROJECTIONS, TrainConfig)
from crystalgan_jax.train.generation import (feature_transfer, generate, harden,
                                             input_pairs, project_to_template, sampled_inputs,
                                             stage1_outputs, stage_data)
from crystalgan_jax.train.objectives import (concat_crystals, cross_domain_discriminator_loss,
                                             cross_domain_generator_loss,
                                             gan_discriminator_loss, gan_generator_loss,
                                             occupy, perturb, perturb_batch,
                                             sample_compositions, sample_crystals,
                                             sample_noise, stage_losses)
from crystalgan_jax.train.stages import (STAGES, Stage, length_scale, metric_names,
                                         penalty_shifts, uses_clash, uses_windows)
from crystalgan_jax.train.state import (Networks, TrainState, apply_discriminator,
                                        apply_generator, draw_parameters, init_state,
                                        optimizer, parameter_shapes, record_snapshots,
                                        select_params, snapshot_epochs)
from crystalgan_jax.train.steps import (make_chunk_runner, make_epoch, make_train_step,
                                        sample_minibatches, stage_compiler_options,
                                        steps_per_epoch, tree_all_finite)

__all__ = [
    # compile
    "QUICK_COMPILE", "QUICK_COMPILE_STEPS", "quick_compile_options", "quick_jit",
    # config
    "GEOMETRY_FORMS", "METHODS", "PLUS_DEFAULTS", "PLUS_OFF", "SITE_PROJECTIONS",
    "TrainConfig",
    # stages
    "STAGES", "Stage", "length_scale", "metric_names", "penalty_shifts", "uses_clash",
    "uses_windows",
    # state
    "Networks", "TrainState", "apply_discriminator", "apply_generator", "draw_parameters",
    "init_state", "optimizer", "parameter_shapes", "record_snapshots", "select_params",
    "snapshot_epochs",
    # objectives
    "concat_crystals", "cross_domain_discriminator_loss", "cross_domain_generator_loss",
    "gan_discriminator_loss", "gan_generator_loss", "occupy", "perturb", "perturb_batch",
    "sample_compositions", "sample_crystals", "sample_noise", "stage_losses",
    # steps
    "make_chunk_runner", "make_epoch", "make_train_step", "sample_minibatches",
    "stage_compiler_options", "steps_per_epoch", "tree_all_finite",
    # generation
    "feature_transfer", "generate", "harden", "input_pairs", "project_to_template",
    "sampled_inputs", "stage1_outputs", "stage_data",
]
