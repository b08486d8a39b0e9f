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
from crystalgan_jax.core.encoding import replace_block, to_fractional
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
    key = key if key is not None else state.key
    if cfg.method == "gan":
        count = x_ah.lattice.shape[0] + y_bh.lattice.shape[0]
        return {"final": {"GAN": sample_crystals(p, nets, key, count, cfg)}}
    x1, y1 = stage1_outputs(p, nets, x_ah, y_bh)
    out = {"stage1": {"AHB": x1, "BHA": y1}}
    if cfg.method == "discogan":
        out["final"] = out["stage1"]
        return out
    x_g, y_g = feature_transfer(p, nets, x_ah, y_bh)
    gen = nets.stage3_generator
    if cfg.samples_per_input > 1 or cfg.input_noise > 0:
        x_g, y_g = sampled_inputs(x1, y1, x_g, y_g, key, cfg)
    out["final"] = {"AHB": _apply_snapshots(gen, state, "G_AHB2", x_g, cfg),
                    "BHA": _apply_snapshots(gen, state, "G_BHA2", y_g, cfg)}
    if cfg.composition_sampling:
        ckey = composition_key(key)
        out["final"] = {d: sample_compositions(c, cfg.target_compositions,
                                               jax.random.fold_in(ckey, i))
                        for i, (d, c) in enumerate(sorted(out["final"].items()))}
    if cfg.rescale_volume and cfg.block_volumes:
        out["final"] = {k: _to_data_volume(c, cfg) for k, c in out["final"].items()}
    if cfg.site_projection != "off":  # reads fractional positions: the scale is irrelevant
        projected = _projected(out["final"], x_ah, y_bh, key, cfg)
        if cfg.site_projection == "nearest_and_raw":  # raw samples first, then projected
            projected = {d: concat_crystals(out["final"][d], c) for d, c in projected.items()}
        out["final"] = projected
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


def input_pairs(n_x: int, n_y: int, key: jax.Array, cfg: TrainConfig
                ) -> tuple[jax.Array, jax.Array]:
    """The (A-H, B-H) input indices behind each stage-3 sample, ``[K n]`` each.

    Block 0 is step 2's fixed pairing (sample i: ``i mod n_x``, ``i mod n_y``), as are
    later blocks unless ``cfg.random_pairings``, where each later block draws both
    partners uniformly from ``key``'s pairing stream (the one :func:`sampled_inputs`
    pairs by, so the two agree). ``K = cfg.samples_per_input``, ``n = max(n_x, n_y)``.
    """
    n = max(n_x, n_y)
    fixed = (jnp.arange(n) % n_x, jnp.arange(n) % n_y)
    pair_key = jax.random.split(key)[0]
    ix, iy = [fixed[0]], [fixed[1]]
    for k in range(1, cfg.samples_per_input):
        if cfg.random_pairings:
            kx, ky = jax.random.split(jax.random.fold_in(pair_key, k))
            ix.append(jax.random.randint(kx, (n,), 0, n_x))
            iy.append(jax.random.randint(ky, (n,), 0, n_y))
        else:
            ix.append(fixed[0])
            iy.append(fixed[1])
    return jnp.concatenate(ix), jnp.concatenate(iy)


def sampled_inputs(x1: Crystal, y1: Crystal, x_g: Crystal, y_g: Crystal, key: jax.Array,
                    cfg: TrainConfig) -> tuple[Crystal, Crystal]:
    """crystalgan_plus: ``samples_per_input`` noisy copies of the stage-3 inputs, ``[K n]``.

    Sample 0 keeps step 2's fixed pairing; later samples pair stage-1 outputs at random
    where ``random_pairings`` is set (:func:`input_pairs`). Each sample gets its own input
    noise.
    """
    n_x, n_y = x1.lattice.shape[0], y1.lattice.shape[0]
    n = x_g.lattice.shape[0]
    ix, iy = input_pairs(n_x, n_y, key, cfg)
    xh, yh = harden(x1), harden(y1)
    xs, ys = [x_g], [y_g]
    for k in range(1, cfg.samples_per_input):
        if cfg.random_pairings:
            xk = jax.tree_util.tree_map(lambda a: a[ix[k * n:(k + 1) * n]], xh)
            yk = jax.tree_util.tree_map(lambda a: a[iy[k * n:(k + 1) * n]], yh)
            xs.append(replace_block(xk, B_BLOCK, yk))
            ys.append(replace_block(yk, A_BLOCK, xk))
        else:
            xs.append(x_g)
            ys.append(y_g)
    x_all = jax.tree_util.tree_map(lambda *a: jnp.concatenate(a), *xs)
    y_all = jax.tree_util.tree_map(lambda *a: jnp.concatenate(a), *ys)
    if cfg.input_noise > 0:
        x_all, y_all = perturb_batch((x_all, y_all), jax.random.split(key)[1], cfg.input_noise)
    return x_all, y_all


def project_to_template(generated: Crystal, template: Crystal, metal_block: int,
                        key: jax.Array | None = None) -> Crystal:
    """One generated structure put on the sites of a template (symmetry-aware generation).

    The result has the template's lattice and H block, and its metal rows (block
    ``metal_block``, A or B) split between the A and B blocks: each template metal site
    takes the metal of the generated metal atom nearest to it (occupancy > 0.5; distances
    between fractional coordinates, minimum image, measured in the template's lattice),
    so the generator decides which of the binary's sites the other metal takes, while
    positions and cell are the template's (a DFT-relaxed, symmetric binary). With ``key``
    the same number of sites is drawn uniformly instead (the control that tells the
    generator's choice from the composition alone). A structure with no generated metal
    keeps the template's metal.

    Needs equal A and B row counts (``Layout.fit`` gives them). Positions come back in
    ``generated``'s convention (fractional or Cartesian Angstrom); the volume is the
    template's (:func:`crystalgan_jax.core.geometry.scale_to_volume` scales it after).

    Args:
      generated: one structure, ``lattice [3, 3]``, blocks ``[N_b, 3]`` and masks ``[N_b]``.
      template: one structure of the same layout.
      metal_block: ``A_BLOCK`` or ``B_BLOCK``, the template's metal block.
      key: None, or a PRNG key for the shuffled control.
    """
    if generated.positions[A_BLOCK].shape != generated.positions[B_BLOCK].shape:
        raise ValueError("site projection needs equal A and B row counts, got "
                         f"{generated.positions[A_BLOCK].shape[0]} and "
                         f"{generated.positions[B_BLOCK].shape[0]}")
    g, t = to_fractional(generated), to_fractional(template)
    sites, occupied = t.positions[metal_block], t.masks[metal_block] > 0.5  # [N, 3], [N]
    metals = jnp.concatenate([g.positions[A_BLOCK], g.positions[B_BLOCK]])  # [2N, 3]
    is_metal = jnp.concatenate([g.masks[A_BLOCK], g.masks[B_BLOCK]]) > 0.5
    # each generated metal: is it the other metal than the template's?
    other = (jnp.arange(metals.shape[0]) >= g.positions[A_BLOCK].shape[0]) == (
        metal_block == A_BLOCK)
    delta = metals[None, :, :] - sites[:, None, :]
    delta = (delta - jnp.round(delta)) @ t.lattice  # minimum image, Angstrom
    d2 = jnp.where(is_metal[None, :], jnp.sum(delta**2, -1), jnp.inf)  # [N, 2N]
    swapped = other[jnp.argmin(d2, axis=1)] & jnp.any(is_metal) & occupied
    if key is not None:
        score = jnp.where(occupied, jax.random.uniform(key, occupied.shape), -1.0)
        rank = jnp.argsort(jnp.argsort(-score, stable=True), stable=True)
        swapped = (rank < jnp.sum(swapped)) & occupied
    takes_b = swapped if metal_block == A_BLOCK else occupied & ~swapped
    dtype = t.masks[metal_block].dtype
    masks = list(t.masks)
    masks[A_BLOCK] = (occupied & ~takes_b).astype(dtype)
    masks[B_BLOCK] = takes_b.astype(dtype)
    positions = list(t.positions)
    positions[A_BLOCK] = positions[B_BLOCK] = sites
    out = t.replace(positions=tuple(positions), masks=tuple(masks))
    if generated.fractional:
        return out
    return out.replace(positions=tuple(p @ out.lattice for p in out.positions),
                       fractional=False)


def _projected(final: dict[str, Crystal], x_ah: Crystal, y_bh: Crystal, key: jax.Array,
               cfg: TrainConfig) -> dict[str, Crystal]:
    """``cfg.site_projection``: each direction's samples on the sites of their inputs
    (AHB on its A-H input, BHA on its B-H input; :func:`input_pairs`), then scaled to the
    data's volume for their composition."""
    if not cfg.block_volumes:
        raise ValueError("site projection needs block_volumes (the runner fits them)")
    ix, iy = input_pairs(x_ah.lattice.shape[0], y_bh.lattice.shape[0], key, cfg)
    out = {}
    for i, (direction, crystals) in enumerate(sorted(final.items())):
        source, index, block = ((x_ah, ix, A_BLOCK) if direction == "AHB"
                                else (y_bh, iy, B_BLOCK))
        templates = jax.tree_util.tree_map(lambda a: a[index], source)
        keys = (jax.random.split(jax.random.fold_in(site_key(key), i), index.shape[0])
                if cfg.site_projection == "shuffled" else None)
        project = jax.vmap(lambda g, t, k: project_to_template(g, t, block, k),
                           in_axes=(0, 0, 0 if keys is not None else None))
        out[direction] = _to_data_volume(project(crystals, templates, keys), cfg)
    return out


def _to_data_volume(crystals: Crystal, cfg: TrainConfig) -> Crystal:
    """A batch ``[n]`` scaled to the volume each composition has in the data
    (:func:`crystalgan_jax.core.geometry.scale_to_volume` with ``cfg.block_volumes``)."""
    return jax.vmap(lambda c: geometry.scale_to_volume(c, cfg.block_volumes))(crystals)


def site_key(key: jax.Array) -> jax.Array:
    """The stream the shuffled site projection draws from, apart from ``key``'s other
    uses."""
    return jax.random.fold_in(key, 0x73697465)  # "site"


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
