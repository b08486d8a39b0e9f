"""Networks of CrystalGAN: MLP generators and discriminators over crystal arrays.

Networks see a :class:`~crystalgan_jax.core.encoding.Crystal` flattened to one vector
(lattice, positions of the H, A, B blocks, and the occupancy masks). Lengths are divided
by a fixed ``length_scale`` (Angstrom) on the way in and multiplied back on the way out,
so that the MLPs work on numbers of order one while every output stays in Angstrom.

A network is a frozen dataclass of its hyperparameters (hashable, so a jit-static
argument) called as ``net(params, inputs)``: a pure function of its parameters, on one
crystal or a batch (any leading axes; a batch goes through each layer as one matrix
product). The parameters are nested dicts laid out as a stack of ``flax.linen.Dense``
layers names them, ``{"MLP_0": {"Dense_i": {"kernel": [in, out], "bias": [out]}}}``,
and computed as ``Dense`` computes them, so checkpoints of the earlier Flax-module
version restore unchanged. Plain functions rather than Flax modules because tracing is
on the critical path of a short run, and the modules' bookkeeping was a large part of
tracing a training step.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp

from crystalgan_jax.core.encoding import Crystal

Params = dict  # {"MLP_0": {"Dense_0": {"kernel": ..., "bias": ...}, ...}}


def flatten(crystal: Crystal, length_scale: float) -> jax.Array:
    """Crystals ``[...]`` -> ``[..., 9 + 4 * sum N_s]`` float vectors (lengths in units of
    the scale)."""
    lead = crystal.lattice.shape[:-2]
    parts = [crystal.lattice.reshape(lead + (-1,)) / length_scale]
    parts += [p.reshape(lead + (-1,)) / length_scale for p in crystal.positions]
    parts += [m.reshape(lead + (-1,)) for m in crystal.masks]
    return jnp.concatenate(parts, axis=-1)


def output_size(rows: Sequence[int]) -> int:
    """Length of a flattened crystal and of a generator's output: lattice, coordinates
    and one number (occupancy, or its logit) per row."""
    return 9 + 4 * sum(rows)


def unflatten(out: jax.Array, rows: Sequence[int], length_scale: float,
              fractional: bool = False) -> tuple[Crystal, tuple[jax.Array, ...]]:
    """Generator outputs ``[..., output_size(rows)]`` -> (crystals in Angstrom, mask logits
    per block ``[..., N_s]``).

    The crystals' masks are the occupancy probabilities ``sigmoid(logits)``.
    """
    lead = out.shape[:-1]
    n_coords = 9 + 3 * sum(rows)
    coords, logits = out[..., :n_coords] * length_scale, out[..., n_coords:]
    positions, mask_logits, start = [], [], 0
    for n in rows:
        positions.append(coords[..., 9 + 3 * start: 9 + 3 * (start + n)].reshape(lead + (n, 3)))
        mask_logits.append(logits[..., start: start + n])
        start += n
    masks = tuple(jax.nn.sigmoid(l) for l in mask_logits)
    return (Crystal(coords[..., :9].reshape(lead + (3, 3)), tuple(positions), masks, fractional),
            tuple(mask_logits))


def mlp_shapes(n_in: int, n_out: int, depth: int, width: int,
               dtype: jnp.dtype = jnp.float32) -> Params:
    """Parameter shapes of :func:`mlp`: ``depth`` hidden layers of ``width``, then ``n_out``."""
    sizes = [n_in] + [width] * depth + [n_out]
    return {"MLP_0": {f"Dense_{i}": {"kernel": jax.ShapeDtypeStruct((a, b), dtype),
                                     "bias": jax.ShapeDtypeStruct((b,), dtype)}
                      for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:]))}}


def mlp(params: Params, x: jax.Array) -> jax.Array:
    """``x [..., n_in]`` -> ``[..., n_out]``: Dense + ReLU layers, then a linear Dense."""
    layers = params["MLP_0"]
    for i in range(len(layers)):
        x = x @ layers[f"Dense_{i}"]["kernel"] + layers[f"Dense_{i}"]["bias"]
        if i < len(layers) - 1:
            x = jax.nn.relu(x)
    return x


@dataclasses.dataclass(frozen=True)
class Generator:
    """Crystal -> crystal (the paper's tensor-to-tensor generator, with occupancy).

    Attributes:
      rows: row counts of the H, A, B blocks (of the crystals it maps).
      length_scale: Angstrom per network unit.
      depth, width: hidden layers and their units (paper: 5 x 100, ReLU).
      residual: if set, coordinates are predicted as input + correction. Off by default,
        as in the paper.
    ``gen(params, crystals)`` maps crystals ``[...]`` to crystals ``[...]`` whose masks
    are occupancy probabilities, and also returns their logits for the occupancy loss.
    """

    rows: Sequence[int]
    length_scale: float
    depth: int = 5
    width: int = 100
    residual: bool = False

    def __post_init__(self):
        object.__setattr__(self, "rows", tuple(self.rows))  # hashable: a jit-static argument

    def param_shapes(self) -> Params:
        size = output_size(self.rows)
        return mlp_shapes(size, size, self.depth, self.width)

    def __call__(self, params: Params, crystal: Crystal
                 ) -> tuple[Crystal, tuple[jax.Array, ...]]:
        x = flatten(crystal, self.length_scale)
        out = mlp(params, x)
        if self.residual:
            n_coords = 9 + 3 * sum(self.rows)
            out = out.at[..., :n_coords].add(x[..., :n_coords])
        return unflatten(out, self.rows, self.length_scale, crystal.fractional)


@dataclasses.dataclass(frozen=True)
class NoiseGenerator:
    """Gaussian noise ``[..., latent]`` -> crystals: the plain-GAN baseline's generator."""

    rows: Sequence[int]
    length_scale: float
    depth: int = 5
    width: int = 100

    def __post_init__(self):
        object.__setattr__(self, "rows", tuple(self.rows))  # hashable: a jit-static argument

    def param_shapes(self, latent_dim: int) -> Params:
        return mlp_shapes(latent_dim, output_size(self.rows), self.depth, self.width)

    def __call__(self, params: Params, z: jax.Array) -> tuple[Crystal, tuple[jax.Array, ...]]:
        return unflatten(mlp(params, z), self.rows, self.length_scale)


@dataclasses.dataclass(frozen=True)
class Discriminator:
    """Crystals ``[...]`` -> real-vs-generated logits ``[...]`` (the sigmoid lives in the
    loss). One definition judges crystals of any rows; its parameters fit one."""

    length_scale: float
    depth: int = 5
    width: int = 100

    def param_shapes(self, rows: Sequence[int]) -> Params:
        return mlp_shapes(output_size(rows), 1, self.depth, self.width)

    def __call__(self, params: Params, crystal: Crystal) -> jax.Array:
        return mlp(params, flatten(crystal, self.length_scale))[..., 0]
