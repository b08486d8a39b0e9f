"""Feature transfer (step 2 of the method), each stage's training domains, and generation.

Feature transfer needs no training: x_AHB_g = x_AHB1 with the B block of y_BHA1,
y_BHA_g = y_BHA1 with the A block of x_AHB1 (spec, "The three steps").
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from crystalgan_jax.core import geometry
from crystalgan_jax.core.encoding import A_BLOCK, B_BLOCK, Crystal, from_metal_view, metal_view
from crystalgan_jax.core.encoding import replace_block
from crystalgan_jax.core.models import Generator
from crystalgan_jax.train.compile import quick_jit
from crystalgan_jax.train.config import TrainConfig
from crystalgan_jax.train.objectives import (composition_key, concat_crystals, perturb_batch,
                                             sample_compositions, sample_crystals)
from crystalgan_jax.train.state import Networks, TrainState, apply_generator


def stage1_outputs(params: dict, nets: Networks, x_ah: Crystal, y_bh: Crystal
                   ) -> tuple[Crystal, Crystal]:
    """(x_AHB1, y_BHA1): the stage-1 generators on the metal views of AH and BH, as
    full three-block crystals (occupancies as generated, not hardened)."""
    gen = nets.stage1_generator
    x1 = from_metal_view(apply_generator(gen, params["G_AHB1"], metal_view(x_ah, A_BLOCK))[0], A_BLOCK)
    y1 = from_metal_view(apply_generator(gen, params["G_BHA1"], metal_view(y_bh, B_BLOCK))[0], B_BLOCK)
    return x1, y1


def harden(crystal: Crystal) -> Crystal:
    """Occupancy probabilities -> {0, 1} masks, as decoding reads them (threshold 0.5)."""
    return crystal.replace(masks=tuple((m > 0.5).astype(jnp.float32) for m in crystal.masks))


def feature_transfer(params: dict, nets: Networks, x_ah: Crystal, y_bh: Crystal
                     ) -> tuple[Crystal, Crystal]:
    """Step 2 of the spec: the stage-3 domains (x_AHB_g, y_BHA_g), each ``[max(n_x, n_y)]``.

    Sample i of AHB_g pairs x_AHB1[i mod n_x] with y_BHA1[i mod n_y]: x_AHB_g takes the
    B block of that y_BHA1 sample, y_BHA_g the A block of that x_AHB1 sample. Masks are
    hardened (:func:`harden`), so both domains hold definite A, B and H atoms.
    """
    x1, y1 = stage1_outputs(params, nets, x_ah, y_bh)
    n_x, n_y = x_ah.lattice.shape[0], y_bh.lattice.shape[0]
    n = max(n_x, n_y)
    x1 = jax.tree_util.tree_map(lambda a: a[jnp.arange(n) % n_x], harden(x1))
    y1 = jax.tree_util.tree_map(lambda a: a[jnp.arange(n) % n_y], harden(y1))
    return replace_block(x1, B_BLOCK, y1), replace_block(y1, A_BLOCK, x1)


@functools.partial(quick_jit, static_argnames=("nets", "cfg"))  # one program, not op by op
def generate(state: TrainState, nets: Networks, cfg: TrainConfig, x_ah: Crystal,
             y_bh: Crystal, key: jax.Array | None = None) -> dict[str, dict[str, Crystal]]:
    """The structures a run produces, by kind ("stage1", "final") and direction.

    Directions are "AHB" (from the AH side) and "BHA"; the GAN baseline has one,
    "GAN", with ``n_x + n_y`` samples drawn with ``key``.
    """
    p = state.params
    if cfg.method == "gan":
        count = x_ah.lattice.shape[0] + y_bh.lattice.shape[0]
        key = key if key is not None else state.key
        return {"final": {"GAN": sample_crystals(p, nets, key, count, cfg)}}
    x1, y1 = stage1_outputs(p, nets, x_ah, y_bh)
    out = {"stage1": {"AHB": x1, "BHA": y1}}
    if cfg.method == "discogan":
        out["final"] = out["stage1"]
        return out
    x_g, y_g = feature_transfer(p, nets, x_ah, y_bh)
    gen = nets.stage3_generator
    if cfg.samples_per_input > 1 or cfg.input_noise > 0:
        key = key if key is not None else state.key
        x_g, y_g = sampled_inputs(x1, y1, x_g, y_g, key, cfg)
    out["final"] = {"AHB": _apply_snapshots(gen, state, "G_AHB2", x_g, cfg),
                    "BHA": _apply_snapshots(gen, state, "G_BHA2", y_g, cfg)}
    if cfg.composition_sampling:
        ckey = composition_key(key if key is not None else state.key)
        out["final"] = {d: sample_compositions(c, cfg.target_compositions,
                                               jax.random.fold_in(ckey, i))
                        for i, (d, c) in enumerate(sorted(out["final"].items()))}
    if cfg.rescale_volume and cfg.block_volumes:
        scale = jax.vmap(lambda c: geometry.scale_to_volume(c, cfg.block_volumes))
        out["final"] = {k: scale(c) for k, c in out["final"].items()}
    return out


def _apply_snapshots(gen: Generator, state: TrainState, name: str, inputs: Crystal,
                     cfg: TrainConfig) -> Crystal:
    """Generator ``name`` over ``samples_per_input`` blocks of inputs ``[K' n]``.

    Block k runs the state K-1-(k mod K) of :func:`~.state.snapshot_epochs` (block 0: the
    final parameters); without snapshots every block runs the final parameters.
    """
    if cfg.snapshots == 1 or not state.snapshots:
        return apply_generator(gen, state.params[name], inputs)[0]
    states = jax.tree_util.tree_map(lambda s, p: jnp.concatenate([s, p[None]]),
                                    state.snapshots[name], state.params[name])  # [K, ...]
    kept = jax.tree_util.tree_leaves(states)[0].shape[0]
    if kept != cfg.snapshots:
        raise ValueError(f"the state holds {kept} generator snapshots, cfg.snapshots is "
                         f"{cfg.snapshots}")
    blocks = cfg.samples_per_input
    which = cfg.snapshots - 1 - np.arange(blocks) % cfg.snapshots
    per_block = jax.tree_util.tree_map(lambda a: a[which], states)
    split = jax.tree_util.tree_map(lambda a: a.reshape((blocks, -1) + a.shape[1:]), inputs)
    out = jax.vmap(lambda p, c: apply_generator(gen, p, c)[0])(per_block, split)
    return jax.tree_util.tree_map(lambda a: a.reshape((-1,) + a.shape[2:]), out)


def sampled_inputs(x1: Crystal, y1: Crystal, x_g: Crystal, y_g: Crystal, key: jax.Array,
                    cfg: TrainConfig) -> tuple[Crystal, Crystal]:
    """crystalgan_plus: ``samples_per_input`` noisy copies of the stage-3 inputs, ``[K n]``.

    Sample 0 keeps step 2's fixed pairing; later samples pair stage-1 outputs at random
    where ``random_pairings`` is set. Each sample gets its own input noise.
    """
    n_x, n_y = x1.lattice.shape[0], y1.lattice.shape[0]
    n = x_g.lattice.shape[0]
    xs, ys = [x_g], [y_g]
    pair_key, noise_key = jax.random.split(key)
    for k in range(1, cfg.samples_per_input):
        if cfg.random_pairings:
            kx, ky = jax.random.split(jax.random.fold_in(pair_key, k))
            ix, iy = jax.random.randint(kx, (n,), 0, n_x), jax.random.randint(ky, (n,), 0, n_y)
            xh = jax.tree_util.tree_map(lambda a: a[ix], harden(x1))
            yh = jax.tree_util.tree_map(lambda a: a[iy], harden(y1))
            xs.append(replace_block(xh, B_BLOCK, yh))
            ys.append(replace_block(yh, A_BLOCK, xh))
        else:
            xs.append(x_g)
            ys.append(y_g)
    x_all = jax.tree_util.tree_map(lambda *a: jnp.concatenate(a), *xs)
    y_all = jax.tree_util.tree_map(lambda *a: jnp.concatenate(a), *ys)
    if cfg.input_noise > 0:
        x_all, y_all = perturb_batch((x_all, y_all), noise_key, cfg.input_noise)
    return x_all, y_all


@functools.partial(quick_jit, static_argnames=("stage", "nets"))  # one program, not op by op
def stage_data(stage: str, state: TrainState, nets: Networks, x_ah: Crystal,
               y_bh: Crystal, guide: Crystal | None = None) -> tuple:
    """The domains a stage trains on: metal views, transferred domains, or their union.

    ``guide`` ``[K]``: ternary structures (encoded in the run's layout) that join both
    stage-3 domains, ``[max(n_x, n_y) + K]`` each: the discriminators then take them for
    real ternaries and the cycle terms map them back onto themselves. A screened run's
    relaxed low-E_hull candidates are such a guide (:mod:`crystalgan_jax.pipeline.rounds`).
    """
    if stage == "stage1":
        return (metal_view(x_ah, A_BLOCK), metal_view(y_bh, B_BLOCK))
    if stage == "stage3":
        x_g, y_g = feature_transfer(state.params, nets, x_ah, y_bh)
        if guide is None:
            return x_g, y_g
        return concat_crystals(x_g, guide), concat_crystals(y_g, guide)
    if stage == "gan":
        return (concat_crystals(x_ah, y_bh),)
    raise ValueError(f"unknown stage {stage!r}")
