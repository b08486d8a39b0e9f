"""The stages a method trains: who maps, who judges, what each epoch logs.

Also the two numbers a stage takes from the training cells: the lattice shifts of the
geometric penalty (:func:`penalty_shifts`) and the networks' length unit
(:func:`length_scale`).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from crystalgan_jax.core import cells
from crystalgan_jax.train.config import TrainConfig


@dataclasses.dataclass(frozen=True)
class Stage:
    """Static description of one cross-domain stage: who maps, who judges, what is logged.

    ``generators[0]`` maps domain x to y-like samples (judged by ``discriminators[1]``),
    ``generators[1]`` maps y to x-like ones (judged by ``discriminators[0]``).
    """

    name: str
    generators: tuple[str, str]
    discriminators: tuple[str, str]
    geometric: bool
    metric_names: tuple[str, ...]


STAGES = {
    "stage1": Stage("stage1", ("G_AHB1", "G_BHA1"), ("D_AH", "D_BH"), False,
                    ("L_D1", "L_G1", "L_GAN_BH", "L_RAH", "L_GAN_AH", "L_RBH")),
    "stage3": Stage("stage3", ("G_AHB2", "G_BHA2"), ("D_AHB", "D_BHA"), True,
                    ("L_D2", "L_G2", "L_GAN_BHAg", "L_RAHB", "L_GAN_AHBg", "L_RBHA",
                     "L_geo1", "L_geo2")),
    "gan": Stage("gan", ("G_noise", "G_noise"), ("D_all", "D_all"), False,
                 ("L_D", "L_G")),
}


def metric_names(stage: Stage, cfg: TrainConfig) -> tuple[str, ...]:
    """What one epoch logs for ``stage``: its losses, plus L_clash where it is on, plus
    crystalgan_plus's terms (L_win, L_dist, L_comp, L_cell, and ``outside_images``: the fraction of
    generated cells that need more lattice images than the penalty was compiled with)."""
    return stage.metric_names + (("L_clash",) if uses_clash(stage, cfg) else ()) \
        + _plus_metric_names(stage, cfg)


def _plus_metric_names(stage: Stage, cfg: TrainConfig) -> tuple[str, ...]:
    if not stage.geometric or cfg.method != "crystalgan_plus":
        return ()
    return ((("L_win",) if uses_windows(cfg) else ())
            + (("L_dist",) if uses_distances(cfg) else ())
            + (("L_comp",) if uses_composition(cfg) else ())
            + (("L_cell",) if cfg.spacing_weight > 0 else ()) + ("outside_images",))


def uses_windows(cfg: TrainConfig) -> bool:
    """Whether L_win is on: a positive ``window_weight`` and at least one pair window."""
    return cfg.window_weight > 0 and len(cfg.pair_windows) > 0


def uses_distances(cfg: TrainConfig) -> bool:
    """Whether L_dist is on: a positive ``distance_weight`` and at least one profile."""
    return cfg.distance_weight > 0 and len(cfg.distance_quantiles) > 0


def uses_composition(cfg: TrainConfig) -> bool:
    """Whether L_comp is on: a positive ``composition_weight`` and learned quantiles."""
    return cfg.composition_weight > 0 and len(cfg.h_fraction_quantiles) > 0


def uses_clash(stage: Stage, cfg: TrainConfig) -> bool:
    """Whether ``stage`` computes the clash term L_clash (geometric stages with l7 > 0)."""
    # A population traces l7 per member (crystalgan_jax.train.population): an array weight means
    # the term is computed, and each member's l7 scales it (0 turns it off for that member).
    l7 = cfg.weights.l7
    return stage.geometric and (isinstance(l7, jax.Array) or l7 > 0)


def penalty_shifts(lattices: np.ndarray, cfg: TrainConfig) -> jax.Array:
    """Lattice shifts for the penalty: enough for the training cells' nearest neighbours.

    At least one image each way (so own images are seen), at most ``cfg.max_images``.
    See :mod:`crystalgan_jax.core.geometry` for what a generated cell outside this range gets.
    """
    n = np.clip(cells.image_range(lattices), 1, cfg.max_images)
    return jnp.asarray(cells.lattice_shifts(n))


def length_scale(lattices: np.ndarray) -> float:
    """Mean lattice-vector length of the training cells (Angstrom): the networks' unit."""
    return float(np.mean(np.linalg.norm(np.asarray(lattices), axis=-1)))
