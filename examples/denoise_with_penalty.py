"""A different model with CrystalGAN's geometric penalty as a loss term.

A small coordinate denoiser (a plain-JAX MLP, no Flax) learns to move the atoms of a
noisy fcc Pd4 H4 cell back to their sites. Its loss is the mean squared error to the
clean positions plus ``weight`` x the penalty of ``crystalgan_jax.core.geometry.array_penalty``,
which pushes each atom's nearest same-class distance into [d1, d2] (metals with
metals, H with H; here 2.76 A in the clean cell). Only arrays go in: lattice
``[3, 3]``, positions ``[N, 3]``, mask ``[N]``, class ids ``[N]``, lattice shifts.

    python examples/denoise_with_penalty.py --steps 300

prints the penalty and the error of the noisy input and of the denoised output.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import optax

from crystalgan_jax.core import cells, geometry

A = 3.9  # Angstrom, cubic cell edge
LATTICE = np.eye(3) * A
METALS = np.array([[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]]) * A
HYDROGENS = np.array([[0.5, 0.5, 0.5], [0.5, 0, 0], [0, 0.5, 0], [0, 0, 0.5]]) * A
CLEAN = np.concatenate([METALS, HYDROGENS]).astype(np.float32)  # [8, 3]
CLASS_IDS = jnp.array([0, 0, 0, 0, 1, 1, 1, 1])  # metal-metal and H-H are constrained
MASK = jnp.ones(8)
D1, D2 = 1.8, 3.0


def init_mlp(key: jax.Array, sizes: list[int]) -> list[tuple[jax.Array, jax.Array]]:
    """Weights and biases of a ReLU MLP with layer ``sizes``."""
    keys = jax.random.split(key, len(sizes) - 1)
    return [(jax.random.normal(k, (m, n)) * np.sqrt(2.0 / m) * 0.5, jnp.zeros(n))
            for k, m, n in zip(keys, sizes[:-1], sizes[1:])]


def denoise(params, noisy: jax.Array) -> jax.Array:
    """``[N, 3]`` noisy positions -> ``[N, 3]`` denoised (input + predicted correction)."""
    x = noisy.reshape(-1) / A
    for w, b in params[:-1]:
        x = jax.nn.relu(x @ w + b)
    w, b = params[-1]
    return noisy + (x @ w + b).reshape(noisy.shape) * A


def main(steps: int = 300, batch: int = 32, noise: float = 0.35, weight: float = 1.0,
         seed: int = 0) -> dict[str, float]:
    shifts = jnp.asarray(cells.lattice_shifts((1, 1, 1)))
    lattice = jnp.asarray(LATTICE, jnp.float32)
    clean = jnp.asarray(CLEAN)

    def penalty(positions: jax.Array) -> jax.Array:  # one structure -> scalar
        geo1, geo2 = geometry.array_penalty(lattice, positions, MASK, CLASS_IDS, shifts, D1, D2)
        return geo1 + geo2

    def loss(params, noisy):  # noisy: [B, N, 3]
        out = jax.vmap(denoise, in_axes=(None, 0))(params, noisy)
        mse = jnp.mean((out - clean) ** 2)
        return mse + weight * jnp.mean(jax.vmap(penalty)(out)), (mse, out)

    key, init_key = jax.random.split(jax.random.PRNGKey(seed))
    params = init_mlp(init_key, [24, 64, 64, 24])
    tx = optax.adam(3e-3)
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state, key):
        noisy = clean + noise * jax.random.normal(key, (batch,) + clean.shape)
        (_, aux), grads = jax.value_and_grad(loss, has_aux=True)(params, noisy)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    for k in jax.random.split(key, steps):
        params, opt_state = step(params, opt_state, k)

    test = clean + noise * jax.random.normal(jax.random.PRNGKey(seed + 1), (256,) + clean.shape)
    out = jax.vmap(denoise, in_axes=(None, 0))(params, test)
    result = {"noisy_penalty": float(jnp.mean(jax.vmap(penalty)(test))),
              "denoised_penalty": float(jnp.mean(jax.vmap(penalty)(out))),
              "noisy_mse": float(jnp.mean((test - clean) ** 2)),
              "denoised_mse": float(jnp.mean((out - clean) ** 2))}
    for name, value in result.items():
        print(f"{name}: {value:.4f}")
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--weight", type=float, default=1.0, help="weight of the penalty")
    args = parser.parse_args()
    main(steps=args.steps, weight=args.weight)
