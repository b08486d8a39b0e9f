"""CrystalGAN's losses as pure functions of arrays, reusable from any JAX model.

Nothing here knows about Flax modules or parameters: adversarial losses take
discriminator *logits*, reconstruction losses take :class:`Crystal` pytrees (any
leading batch axes), and the combined objectives take the individual terms.
Notation follows ``shared/spec/CRYSTALGAN.md``: sigma is the logistic sigmoid, so
``D(x) = sigma(logit)`` and ``log D = log_sigmoid(logit)``, ``log(1 - D) = log_sigmoid(-logit)``,
which stays finite where the probabilities would round to 0 or 1.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp

from crystalgan_jax import geometry
from crystalgan_jax.encoding import Crystal


@dataclasses.dataclass(frozen=True)
class Weights:
    """l1..l6 of the spec: L = l1 L_GAN(fwd) + l2 L_R(x) + l3 L_GAN(bwd) + l4 L_R(y)
    + l5 L_geo1 + l6 L_geo2, and l7 L_clash, this project's addition (off by default, so
    the paper's objective is unchanged). ``occupancy`` weighs the occupancy term inside
    each L_R."""

    l1: float = 1.0
    l2: float = 1.0
    l3: float = 1.0
    l4: float = 1.0
    l5: float = 1.0
    l6: float = 1.0
    l7: float = 0.0
    occupancy: float = 1.0


def generator_adversarial(fake_logits: jax.Array) -> jax.Array:
    """L_GAN = -E[log D(G(x))] = -mean(log_sigmoid(fake_logits)).

    Args:
      fake_logits: ``[B]`` discriminator logits of generated samples.
    """
    return -jnp.mean(jax.nn.log_sigmoid(fake_logits))


def discriminator(real_logits: jax.Array, fake_logits: jax.Array) -> jax.Array:
    """L_D = -E[log D(y)] - E[log(1 - D(G(x)))].

    Args:
      real_logits: ``[B]`` logits of data samples.
      fake_logits: ``[B']`` logits of generated samples.
    """
    return (-jnp.mean(jax.nn.log_sigmoid(real_logits))
            - jnp.mean(jax.nn.log_sigmoid(-fake_logits)))


def masked_reconstruction(reconstructed: Crystal, original: Crystal,
                          length_scale: float = 1.0) -> jax.Array:
    """Mean squared error of lattice and occupied positions, in units of ``length_scale``.

    d = mean_b [ sum_ij (L'_ij - L_ij)^2 / 9
                 + sum_s sum_r m_r |p'_r - p_r|^2 / (3 sum_s sum_r m_r) ] / length_scale^2
    where m is the ORIGINAL occupancy mask, so padding rows carry no error: where an
    absent atom's generated coordinates go does not matter (occupancy decides).

    Args:
      reconstructed, original: crystals with the same batch shape ``[B]``, Cartesian.
      length_scale: Angstrom; errors are measured in this unit.
    """
    lattice_err = jnp.mean((reconstructed.lattice - original.lattice) ** 2, axis=(-2, -1))
    sq, count = 0.0, 0.0
    for p_rec, p, m in zip(reconstructed.positions, original.positions, original.masks):
        sq = sq + jnp.sum(m[..., None] * (p_rec - p) ** 2, axis=(-2, -1))
        count = count + 3.0 * jnp.sum(m, axis=-1)
    position_err = sq / jnp.maximum(count, 1.0)
    return jnp.mean(lattice_err + position_err) / length_scale**2


def occupancy(logits: Sequence[jax.Array], target_masks: Sequence[jax.Array]) -> jax.Array:
    """Binary cross-entropy between predicted occupancy logits and target masks.

    BCE = -mean over all rows of [m log sigma(z) + (1 - m) log sigma(-z)].

    Args:
      logits: per block ``[..., N_s]``.
      target_masks: per block ``[..., N_s]`` in {0, 1}.
    """
    total, rows = 0.0, 0
    for z, m in zip(logits, target_masks):
        bce = -(m * jax.nn.log_sigmoid(z) + (1.0 - m) * jax.nn.log_sigmoid(-z))
        total = total + jnp.sum(bce)
        rows += bce.size
    return total / rows


def cycle(reconstructed: Crystal, reconstructed_logits: Sequence[jax.Array], original: Crystal,
          length_scale: float = 1.0, occupancy_weight: float = 1.0) -> jax.Array:
    """L_R = masked_reconstruction + occupancy_weight * occupancy (the spec's d(x', x))."""
    return (masked_reconstruction(reconstructed, original, length_scale)
            + occupancy_weight * occupancy(reconstructed_logits, original.masks))


def geometric(crystals: Crystal, shifts: jax.Array, d1: float = 1.8, d2: float = 3.0,
              classes: Sequence[Sequence[int]] = geometry.DEFAULT_CLASSES,
              form: str = "hinge") -> tuple[jax.Array, jax.Array]:
    """(L_geo1, L_geo2) averaged over a batch ``[B]`` of Cartesian crystals.

    Per structure see :func:`crystalgan_jax.geometry.penalty_terms` (hinge:
    sum relu(d1 - s)^2 and sum relu(s - d2)^2; paper: min (d1 - s)^2 and -min (d2 - s)^2).
    Occupancy is thresholded at 0.5, as in decoding; gradients reach lattice and
    positions.
    """
    per = jax.vmap(lambda c: geometry.geometric_penalty(c, shifts, d1, d2, classes, form))
    geo1, geo2 = per(crystals)
    return jnp.mean(geo1), jnp.mean(geo2)


def clash(crystals: Crystal, shifts: jax.Array, radii: Sequence[float],
          factor: float = 0.8) -> jax.Array:
    """L_clash: :func:`crystalgan_jax.geometry.clash_penalty` averaged over a batch ``[B]``.

    mean_b sum_{pairs i<j, images} relu(factor (r_i + r_j) - d_ij)^2, with r the covalent
    radius of each block's element (Angstrom).
    """
    per = jax.vmap(lambda c: geometry.clash_penalty(c, shifts, radii, factor))
    return jnp.mean(per(crystals))


def generator_objective(gan_fwd: jax.Array, rec_x: jax.Array, gan_bwd: jax.Array,
                        rec_y: jax.Array, geo1: jax.Array = 0.0, geo2: jax.Array = 0.0,
                        weights: Weights = Weights(), clash: jax.Array = 0.0) -> jax.Array:
    """L_G = l1 L_GAN_fwd + l2 L_R(x) + l3 L_GAN_bwd + l4 L_R(y) + l5 L_geo1 + l6 L_geo2
    + l7 L_clash.

    Stage 1 (L_G1): fwd = AH->BH judged by D_BH, x = AH, bwd = BH->AH judged by D_AH,
    y = BH, no geometric terms. Stage 3 (L_G2): the same on AHB_g and BHA_g, with them.
    """
    w = weights
    return (w.l1 * gan_fwd + w.l2 * rec_x + w.l3 * gan_bwd + w.l4 * rec_y
            + w.l5 * geo1 + w.l6 * geo2 + w.l7 * clash)


def discriminator_objective(real_x: jax.Array, fake_x: jax.Array, real_y: jax.Array,
                            fake_y: jax.Array) -> jax.Array:
    """L_D = L_D(x domain) + L_D(y domain), each :func:`discriminator` on its logits."""
    return discriminator(real_x, fake_x) + discriminator(real_y, fake_y)


# --- crystalgan_plus terms (issue 13); off unless their weights are set ------------------

def windows(crystals: Crystal, shifts: jax.Array,
            pair_windows: Sequence[tuple[Sequence[int], Sequence[int], float, float]]
            ) -> jax.Array:
    """L_win: :func:`crystalgan_jax.geometry.window_penalty` averaged over a batch ``[B]``."""
    per = jax.vmap(lambda c: geometry.window_penalty(c, shifts, pair_windows))
    return jnp.mean(per(crystals))


def cell_spacing(crystals: Crystal, min_spacing: float) -> jax.Array:
    """L_cell: :func:`crystalgan_jax.geometry.spacing_penalty` averaged over a batch ``[B]``."""
    return jnp.mean(jax.vmap(lambda l: geometry.spacing_penalty(l, min_spacing))(crystals.lattice))


def outside_image_fraction(crystals: Crystal, shifts: jax.Array) -> jax.Array:
    """Fraction of a batch ``[B]`` whose cells need more images than ``shifts`` hold."""
    out = jax.vmap(lambda l: geometry.outside_image_range(l, shifts))(crystals.lattice)
    return jnp.mean(out.astype(jnp.float32))
