"""Flax networks of CrystalGAN: MLP generators and discriminators over crystal arrays.

Networks see a :class:`~crystalgan_jax.encoding.Crystal` flattened to one vector
(lattice, positions of the H, A, B blocks, and the occupancy masks). Lengths are divided
by a fixed ``length_scale`` (Angstrom) on the way in and multiplied back on the way out,
so that the MLPs work on numbers of order one while every output stays in Angstrom.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from crystalgan_jax.encoding import Crystal


def flatten(crystal: Crystal, length_scale: float) -> jax.Array:
    """One crystal -> ``[9 + 4 * sum N_s]`` float vector (lengths in units of the scale)."""
    parts = [crystal.lattice.reshape(-1) / length_scale]
    parts += [p.reshape(-1) / length_scale for p in crystal.positions]
    parts += [m.reshape(-1) for m in crystal.masks]
    return jnp.concatenate(parts)


def output_size(rows: Sequence[int]) -> int:
    """Length of a generator's output: lattice, coordinates and one logit per row."""
    return 9 + 4 * sum(rows)


def unflatten(out: jax.Array, rows: Sequence[int], length_scale: float,
              fractional: bool = False) -> tuple[Crystal, tuple[jax.Array, ...]]:
    """Generator output ``[output_size(rows)]`` -> (crystal in Angstrom, mask logits per block).

    The crystal's masks are the occupancy probabilities ``sigmoid(logits)``.
    """
    n_coords = 9 + 3 * sum(rows)
    coords, logits = out[:n_coords] * length_scale, out[n_coords:]
    positions, mask_logits, start = [], [], 0
    for n in rows:
        positions.append(coords[9 + 3 * start: 9 + 3 * (start + n)].reshape(n, 3))
        mask_logits.append(logits[start: start + n])
        start += n
    masks = tuple(jax.nn.sigmoid(l) for l in mask_logits)
    return (Crystal(coords[:9].reshape(3, 3), tuple(positions), masks, fractional),
            tuple(mask_logits))


class MLP(nn.Module):
    """``depth`` Dense+ReLU layers of ``width`` units, then a linear layer of ``out``."""

    out: int
    depth: int = 5
    width: int = 100
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for _ in range(self.depth):
            x = nn.relu(nn.Dense(self.width, dtype=self.dtype)(x))
        return nn.Dense(self.out, dtype=self.dtype)(x)


class Generator(nn.Module):
    """Crystal -> crystal (the paper's tensor-to-tensor generator, with occupancy).

    Attributes:
      rows: row counts of the H, A, B blocks.
      length_scale: Angstrom per network unit.
      depth, width: hidden layers and their units (paper: 5 x 100, ReLU).
      residual: if set, coordinates are predicted as input + correction. Off by default,
        as in the paper.
    Input and output are single crystals (vmap for batches); output masks are occupancy
    probabilities, and ``__call__`` also returns their logits for the occupancy loss.
    """

    rows: Sequence[int]
    length_scale: float
    depth: int = 5
    width: int = 100
    residual: bool = False

    @nn.compact
    def __call__(self, crystal: Crystal) -> tuple[Crystal, tuple[jax.Array, ...]]:
        x = flatten(crystal, self.length_scale)
        out = MLP(output_size(self.rows), self.depth, self.width)(x)
        if self.residual:
            n_coords = 9 + 3 * sum(self.rows)
            out = out.at[:n_coords].add(x[:n_coords])
        return unflatten(out, self.rows, self.length_scale, crystal.fractional)


class NoiseGenerator(nn.Module):
    """Gaussian noise ``[latent]`` -> crystal: the plain-GAN baseline's generator."""

    rows: Sequence[int]
    length_scale: float
    depth: int = 5
    width: int = 100

    @nn.compact
    def __call__(self, z: jax.Array) -> tuple[Crystal, tuple[jax.Array, ...]]:
        out = MLP(output_size(self.rows), self.depth, self.width)(z)
        return unflatten(out, self.rows, self.length_scale)


class Discriminator(nn.Module):
    """Crystal -> one real-vs-generated logit (the sigmoid lives in the loss)."""

    length_scale: float
    depth: int = 5
    width: int = 100

    @nn.compact
    def __call__(self, crystal: Crystal) -> jax.Array:
        return MLP(1, self.depth, self.width)(flatten(crystal, self.length_scale))[0]
