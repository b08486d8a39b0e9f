"""CrystalGAN's losses as pure functions of arrays, reusable from any JAX model.

Two levels, in the style of optax losses:

* per-structure functions of plain arrays (:func:`reconstruction_error`,
  :func:`occupancy_bce`, and in :mod:`crystalgan_jax.core.geometry` the penalty
  :func:`~crystalgan_jax.core.geometry.array_penalty` and
  :func:`~crystalgan_jax.core.geometry.clash_energy`): lattice ``[3, 3]``, positions ``[N, 3]``,
  mask ``[N]``, per-atom class ids or radii ``[N]``, shifts ``[S, 3]``. Each returns one
  structure's value; ``jax.vmap`` them and reduce as the caller's loss needs. Logit
  losses (:func:`adversarial_bce`) return per-sample values the same way.
* the CrystalGAN objective on batches of :class:`Crystal` pytrees (H, A, B blocks),
  which call the functions above and average over the batch.

Nothing here knows about Flax modules or parameters, and importing this module loads
neither Flax, pymatgen nor ASE.
Notation follows ``shared/spec/CRYSTALGAN.md``: sigma is the logistic sigmoid, so
``D(x) = sigma(logit)`` and ``log D = log_sigmoid(logit)``, ``log(1 - D) = log_sigmoid(-logit)``,
which stays finite where the probabilities would round to 0 or 1.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
import optax

from crystalgan_jax.core import geometry
from crystalgan_jax.core.encoding import Crystal

# Structures per vmapped chunk of the clash term (:func:`clash`).
CLASH_CHUNK = 16


@dataclasses.dataclass(frozen=True)
class Weights:
    """l1..l6 of the spec: L = l1 L_GAN(fwd) + l2 L_R(x) + l3 L_GAN(bwd) + l4 L_R(y)
    + l5 L_geo1 + l6 L_geo2, and l7 L_clash, this project's addition (off by default, so
    the paper's objective is unchanged). ``occupancy`` weighs the occupancy term inside
    each L_R.

    Attributes:
      l1: weight of L_GAN of the forward direction (A->B).
      l2: weight of L_R, the cycle loss of the x domain (AH, resp. AHB_g).
      l3: weight of L_GAN of the backward direction (B->A).
      l4: weight of L_R, the cycle loss of the y domain (BH, resp. BHA_g).
      l5: weight of L_geo1 (nearest same-class distances below d1).
      l6: weight of L_geo2 (nearest same-class distances above d2).
      l7: weight of L_clash, a repulsion between all atoms closer than clash_factor x
        the sum of their covalent radii (not in the paper; 0 = off).
      occupancy: weight of the occupancy cross-entropy inside each L_R.
    """

    l1: float = 1.0
    l2: float = 1.0
    l3: float = 1.0
    l4: float = 1.0
    l5: float = 1.0
    l6: float = 1.0
    l7: float = 0.0
    occupancy: float = 1.0


def adversarial_bce(logits: jax.Array, label: float | jax.Array) -> jax.Array:
    """Per-sample binary cross-entropy of discriminator logits against ``label``.

    ``-label log sigma(z) - (1 - label) log sigma(-z)``, computed from logits by
    ``optax.losses.sigmoid_binary_cross_entropy`` (finite where sigma rounds to 0 or 1).

    Args:
      logits: ``[B]`` discriminator logits.
      label: 1 for "real", 0 for "generated" (scalar or ``[B]``).
    Returns:
      ``[B]``.
    """
    return optax.losses.sigmoid_binary_cross_entropy(logits, jnp.broadcast_to(
        jnp.asarray(label, logits.dtype), logits.shape))


def generator_adversarial(fake_logits: jax.Array) -> jax.Array:
    """L_GAN = -E[log D(G(x))] = mean of :func:`adversarial_bce` (fake_logits, 1).

    Args:
      fake_logits: ``[B]`` discriminator logits of generated samples.
    """
    return jnp.mean(adversarial_bce(fake_logits, 1.0))


def discriminator(real_logits: jax.Array, fake_logits: jax.Array) -> jax.Array:
    """L_D = -E[log D(y)] - E[log(1 - D(G(x)))].

    Args:
      real_logits: ``[B]`` logits of data samples.
      fake_logits: ``[B']`` logits of generated samples.
    """
    return jnp.mean(adversarial_bce(real_logits, 1.0)) + jnp.mean(adversarial_bce(fake_logits, 0.0))


def reconstruction_error(lattice: jax.Array, positions: jax.Array, target_lattice: jax.Array,
                         target_positions: jax.Array, target_mask: jax.Array) -> jax.Array:
    """One structure's squared reconstruction error (Angstrom^2), padding rows ignored.

    ``sum_ij (L'_ij - L_ij)^2 / 9 + sum_r m_r |p'_r - p_r|^2 / (3 sum_r m_r)`` with m the
    TARGET occupancy mask: where an absent atom's coordinates go does not matter.

    Args:
      lattice, target_lattice: ``[3, 3]``.
      positions, target_positions: ``[N, 3]`` Cartesian Angstrom.
      target_mask: ``[N]`` in [0, 1].
    Returns:
      scalar.
    """
    lattice_err = jnp.mean((lattice - target_lattice) ** 2)
    sq = jnp.sum(target_mask[:, None] * (positions - target_positions) ** 2)
    return lattice_err + sq / jnp.maximum(3.0 * jnp.sum(target_mask), 1.0)


def occupancy_bce(logits: jax.Array, target_mask: jax.Array) -> jax.Array:
    """One structure's occupancy loss: mean over its rows of the BCE of logits vs mask.

    Args:
      logits: ``[N]`` occupancy logits; target_mask: ``[N]`` in {0, 1}.
    Returns:
      scalar.
    """
    return jnp.mean(optax.losses.sigmoid_binary_cross_entropy(logits, target_mask))


def _rows(crystal: Crystal) -> tuple[jax.Array, jax.Array]:
    """All blocks of a (batched) crystal as one ``[..., N, 3]`` array and ``[..., N]`` mask."""
    return (jnp.concatenate(crystal.positions, axis=-2), jnp.concatenate(crystal.masks, axis=-1))


def masked_reconstruction(reconstructed: Crystal, original: Crystal,
                          length_scale: float = 1.0) -> jax.Array:
    """Batch mean of :func:`reconstruction_error`, in units of ``length_scale``.

    Args:
      reconstructed, original: crystals with the same batch shape ``[B]``, Cartesian.
      length_scale: Angstrom; errors are measured in this unit.
    """
    rec_pos, _ = _rows(reconstructed)
    pos, mask = _rows(original)
    per = jax.vmap(reconstruction_error)(reconstructed.lattice, rec_pos, original.lattice,
                                         pos, mask)
    return jnp.mean(per) / length_scale**2


def occupancy(logits: Sequence[jax.Array], target_masks: Sequence[jax.Array]) -> jax.Array:
    """Batch mean of :func:`occupancy_bce` over all blocks' rows.

    BCE = -mean over all rows of [m log sigma(z) + (1 - m) log sigma(-z)].

    Args:
      logits: per block ``[B, N_s]``.
      target_masks: per block ``[B, N_s]`` in {0, 1}.
    """
    z = jnp.concatenate(logits, axis=-1)
    m = jnp.concatenate(target_masks, axis=-1)
    return jnp.mean(jax.vmap(occupancy_bce)(z.reshape(-1, z.shape[-1]), m.reshape(-1, m.shape[-1])))


def cycle(reconstructed: Crystal, reconstructed_logits: Sequence[jax.Array], original: Crystal,
          length_scale: float = 1.0, occupancy_weight: float = 1.0) -> jax.Array:
    """L_R = masked_reconstruction + occupancy_weight * occupancy (the spec's d(x', x))."""
    return (masked_reconstruction(reconstructed, original, length_scale)
            + occupancy_weight * occupancy(reconstructed_logits, original.masks))


def geometric(crystals: Crystal, shifts: jax.Array, d1: float, d2: float,
              classes: Sequence[Sequence[int]] = geometry.DEFAULT_CLASSES,
              form: str = "hinge") -> tuple[jax.Array, jax.Array]:
    """(L_geo1, L_geo2) averaged over a batch ``[B]`` of Cartesian crystals.

    Per structure see :func:`crystalgan_jax.core.geometry.penalty_terms` (hinge:
    sum relu(d1 - s)^2 and sum relu(s - d2)^2; paper: min (d1 - s)^2 and -min (d2 - s)^2).
    Occupancy is thresholded at 0.5, as in decoding; gradients reach lattice and
    positions.
    """
    per = jax.vmap(lambda c: geometry.geometric_penalty(c, shifts, d1, d2, classes, form))
    geo1, geo2 = per(crystals)
    return jnp.mean(geo1), jnp.mean(geo2)


def clash(crystals: Crystal, shifts: jax.Array, radii: Sequence[float],
          factor: float = 0.8) -> jax.Array:
    """L_clash: :func:`crystalgan_jax.core.geometry.clash_penalty` averaged over a batch ``[B]``.

    mean_b sum_{pairs i<j, images} relu(factor (r_i + r_j) - d_ij)^2, with r the covalent
    radius of each block's element (Angstrom).
    """
    # lax.map over chunks of CLASH_CHUNK structures, each chunk vmapped: the term keeps
    # a [P, S] array per structure (see geometry._repulsion), and a whole batch of
    # them outgrows the CPU caches
    per = jax.lax.map(lambda c: geometry.clash_penalty(c, shifts, radii, factor), crystals,
                      batch_size=CLASH_CHUNK)
    return jnp.mean(per)


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
    """L_win: :func:`crystalgan_jax.core.geometry.window_penalty` averaged over a batch ``[B]``."""
    per = jax.vmap(lambda c: geometry.window_penalty(c, shifts, pair_windows))
    return jnp.mean(per(crystals))


def cell_spacing(crystals: Crystal, min_spacing: float) -> jax.Array:
    """L_cell: :func:`crystalgan_jax.core.geometry.spacing_penalty` averaged over a batch ``[B]``."""
    return jnp.mean(jax.vmap(lambda l: geometry.spacing_penalty(l, min_spacing))(crystals.lattice))


def outside_image_fraction(crystals: Crystal, shifts: jax.Array) -> jax.Array:
    """Fraction of a batch ``[B]`` whose cells need more images than ``shifts`` hold."""
    out = jax.vmap(lambda l: geometry.outside_image_range(l, shifts))(crystals.lattice)
    return jnp.mean(out.astype(jnp.float32))


# --- matching the training data's nearest-neighbour distances (issue 28) ------------------

def quantile_matching(samples: jax.Array, valid: jax.Array,
                      reference_quantiles: jax.Array) -> jax.Array:
    """Squared 2-Wasserstein distance between the valid samples and a reference distribution.

    In one dimension the optimal transport pairs the sorted samples with the reference's
    quantiles: with the ``n`` valid samples sorted, ``s_(0) <= ... <= s_(n-1)``,
    ``W_2^2 = (1/n) sum_i (s_(i) - Q((i + 1/2) / n))^2`` where Q is the reference's
    quantile function, known at the levels ``(k + 1/2) / K`` and interpolated linearly
    between them (held constant beyond the ends). Differentiable in the samples (the
    gradient of a sort is the permutation's), so a generator can be pulled towards a
    distribution rather than only into a window.

    Args:
      samples: ``[M]`` values (e.g. nearest-neighbour distances in Angstrom).
      valid: ``[M]`` bool; invalid entries (padding) count for nothing.
      reference_quantiles: ``[K]`` non-decreasing quantiles of the reference at levels
        ``(k + 1/2) / K``, same unit as ``samples``.
    Returns:
      scalar, in the unit of ``samples`` squared; 0 where no sample is valid.
    """
    n_total = samples.shape[0]
    n = jnp.sum(valid).astype(samples.dtype)
    # A large finite filler sorts the invalid entries last without an inf whose
    # gradient (0 * inf) would be NaN.
    filler = jnp.asarray(1e4, samples.dtype)
    ordered = jnp.sort(jnp.where(valid, samples, filler))
    rank = jnp.arange(n_total, dtype=samples.dtype)
    levels = (rank + 0.5) / jnp.maximum(n, 1.0)
    k = reference_quantiles.shape[0]
    grid = (jnp.arange(k, dtype=samples.dtype) + 0.5) / k
    target = jnp.interp(levels, grid, reference_quantiles.astype(samples.dtype))
    used = rank < n
    sq = jnp.where(used, (jnp.where(used, ordered, target) - target) ** 2, 0.0)
    return jnp.sum(sq) / jnp.maximum(n, 1.0)


def distance_matching(crystals: Crystal, shifts: jax.Array,
                      profiles: Sequence[tuple[Sequence[int], Sequence[int], Sequence[float]]]
                      ) -> jax.Array:
    """L_dist: per pair type, :func:`quantile_matching` of a batch's nearest distances.

    For each profile ``(source blocks, target blocks, quantiles)`` every source atom's
    nearest target atom (:func:`crystalgan_jax.core.geometry.cross_nearest`) is taken
    over the whole batch ``[B]`` and its distribution compared with the training data's
    (quantiles learned by :func:`crystalgan_jax.materials.candidates.learn_distance_quantiles`);
    the squared Wasserstein distances (Angstrom^2) are summed over profiles. Unlike the
    windows, which only bound each distance, this moves the whole distribution (its peak
    included) to where the data's lie.
    """
    total = jnp.zeros((), crystals.lattice.dtype)
    for source, target, quantiles in profiles:
        s, valid = jax.vmap(lambda c: geometry.cross_nearest(c, shifts, source, target))(crystals)
        total = total + quantile_matching(s.reshape(-1), valid.reshape(-1),
                                          jnp.asarray(quantiles, crystals.lattice.dtype))
    return total



def hydrogen_fraction(crystal: Crystal) -> jax.Array:
    """One structure's expected hydrogen fraction n_H / (n_H + n_metal) from its occupancies.

    Sums the occupancy probabilities of the H block (block 0) and of the metal blocks (all
    others): a differentiable stand-in for the fraction the decoded structure (masks
    thresholded at 0.5) has. Scalar in [0, 1]; 0 for an empty structure.
    """
    h = jnp.sum(crystal.masks[0])
    metal = sum(jnp.sum(m) for m in crystal.masks[1:])
    return h / jnp.maximum(h + metal, 1e-6)


def composition_matching(crystals: Crystal, reference_quantiles: jax.Array) -> jax.Array:
    """L_comp: :func:`quantile_matching` of a batch's :func:`hydrogen_fraction` ``[B]``
    against the training structures' (quantiles at levels (k + 1/2) / K); dimensionless.

    CrystalGAN's ternaries join the metal atoms of both binaries around the hydrogen of
    one, so left alone they come out metal-rich; this pulls the batch's distribution of
    hydrogen content towards the data's.
    """
    x = jax.vmap(hydrogen_fraction)(crystals)
    return quantile_matching(x, jnp.ones(x.shape, bool),
                             jnp.asarray(reference_quantiles, x.dtype))
