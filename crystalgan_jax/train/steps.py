"""Train steps, epochs and chunks of epochs, compiled.

A train step is one discriminator update then ``generator_steps`` generator updates on
the same minibatch (the authors' schedule). An epoch takes ``max(n_x, n_y) // batch``
full minibatches (at least one) from fresh permutations of each domain. Epochs run
inside XLA: :func:`make_chunk_runner` compiles ``lax.scan`` over a fixed number of
epochs, with a per-epoch ``active`` flag so that a shorter final chunk reuses the same
compiled program.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import optax

from crystalgan_jax.train.compile import QUICK_COMPILE_STEPS, quick_compile_options
from crystalgan_jax.train.config import TrainConfig
from crystalgan_jax.train.objectives import stage_losses
from crystalgan_jax.train.stages import Stage, metric_names, uses_clash
from crystalgan_jax.train.state import (Networks, TrainState, optimizer, record_snapshots,
                                        select_params)


def make_train_step(stage: Stage, nets: Networks, cfg: TrainConfig, shifts: jax.Array):
    """``step(state, batch, key) -> (state, metrics)``: one D update, then k G updates.

    ``batch`` is a tuple of crystal minibatches (x, y) for a cross-domain stage or
    (real,) for the GAN baseline; ``metrics`` is ``[L_D, L_G, terms...]`` after the
    last generator update (:func:`metric_names`).
    """
    if uses_clash(stage, cfg) and not any(cfg.clash_radii):
        raise ValueError("the clash term (l7 > 0) needs clash_radii for H, A and B")
    tx = optimizer(cfg)
    g_loss, d_loss = stage_losses(stage, nets, cfg, shifts)
    g_names, d_names = stage.generators, stage.discriminators

    def step(state: TrainState, batch: tuple, key: jax.Array):
        gp, dp = select_params(state.params, g_names), select_params(state.params, d_names)
        opt_g, opt_d = state.opt_state[f"{stage.name}/G"], state.opt_state[f"{stage.name}/D"]
        d_key, g_key = jax.random.split(key)
        ld, d_grads = jax.value_and_grad(d_loss)(dp, gp, batch, d_key)
        updates, opt_d = tx.update(d_grads, opt_d, dp)
        dp = optax.apply_updates(dp, updates)

        def g_update(carry, k):
            gp, opt_g = carry
            (_, terms), grads = jax.value_and_grad(g_loss, has_aux=True)(gp, dp, batch, k)
            updates, opt_g = tx.update(grads, opt_g, gp)
            return (optax.apply_updates(gp, updates), opt_g), terms

        # scanned, not unrolled: unrolled updates compile longer and run slower inside
        # the epoch loop
        (gp, opt_g), terms = jax.lax.scan(
            g_update, (gp, opt_g), jax.random.split(g_key, cfg.generator_steps))
        params = {**state.params, **gp, **dp}
        opt_state = {**state.opt_state, f"{stage.name}/G": opt_g, f"{stage.name}/D": opt_d}
        return state.replace(params=params, opt_state=opt_state), jnp.concatenate([ld[None], terms[-1]])

    return step


def steps_per_epoch(sizes: Sequence[int], batch_size: int) -> int:
    """Minibatches per epoch: ``max(sizes) // batch_size``, at least one.

    Full minibatches only (like a loader's drop_last): with 54 structures and batch 35 an
    epoch sees 35 of them, a different 35 each epoch.
    """
    return max(1, max(sizes) // batch_size)


def sample_minibatches(key: jax.Array, data: tuple, batch_size: int, steps: int) -> tuple:
    """Per domain, ``steps`` minibatches ``[steps, batch_size]`` from one fresh permutation.

    A domain smaller than ``steps * batch_size`` is cycled through its permutation.
    """
    out = []
    for k, domain in zip(jax.random.split(key, len(data)), data):
        n = domain.lattice.shape[0]
        perm = jax.random.permutation(k, n)
        idx = perm[jnp.arange(steps * batch_size) % n].reshape(steps, batch_size)
        out.append(jax.tree_util.tree_map(lambda a: a[idx], domain))
    return tuple(out)


def make_epoch(stage: Stage, nets: Networks, cfg: TrainConfig, shifts: jax.Array,
               sizes: Sequence[int]):
    """``epoch(state, data) -> (state, mean metrics over the epoch's steps)``."""
    step = make_train_step(stage, nets, cfg, shifts)
    steps = steps_per_epoch(sizes, cfg.batch_size)

    def epoch(state: TrainState, data: tuple):
        key, batch_key, step_key = jax.random.split(state.key, 3)
        batches = sample_minibatches(batch_key, data, cfg.batch_size, steps)
        state, metrics = jax.lax.scan(lambda s, xs: step(s, *xs), state,
                                      (batches, jax.random.split(step_key, steps)))
        state = state.replace(key=key, epoch=state.epoch + 1)
        if stage.geometric and state.snapshots:
            state = record_snapshots(state, stage, cfg)
        return state, jnp.mean(metrics, axis=0)

    return epoch


def make_chunk_runner(stage: Stage, nets: Networks, cfg: TrainConfig, shifts: jax.Array,
                      sizes: Sequence[int], on_trace: Callable[[str], None] | None = None,
                      compiler_options: dict[str, Any] | None = None):
    """Jitted ``run(state, data, active[chunk]) -> (state, metrics[chunk, n_metrics])``.

    ``compiler_options`` go to ``jax.jit`` (see :func:`stage_compiler_options`).

    Epoch i of the chunk runs only where ``active[i]``; an inactive epoch is skipped by
    ``lax.cond`` and leaves the state untouched (its metrics row is zeros). ``on_trace``
    is called each time JAX traces the function, which lets tests check that it compiles
    once per stage. Divergence is checked outside (:func:`tree_all_finite`): inside the
    chunk's program, one check per array multiplies the kernels to compile, and one
    check over the arrays joined slows the epochs.
    """
    epoch = make_epoch(stage, nets, cfg, shifts, sizes)
    n_metrics = len(metric_names(stage, cfg))

    def run(state: TrainState, data: tuple, active: jax.Array):
        if on_trace is not None:
            on_trace(stage.name)

        def skip(s):
            return s, jnp.zeros((n_metrics,), jnp.float32)

        def body(s, a):
            return jax.lax.cond(a, lambda s: epoch(s, data), skip, s)

        return jax.lax.scan(body, state, active)

    return jax.jit(run, compiler_options=compiler_options)


@jax.jit
def tree_all_finite(tree) -> jax.Array:
    """Bool scalar: no floating-point leaf of ``tree`` holds NaN or inf.

    A reduction on the device over a chunk's new parameters and optimizer state (about a
    million numbers), so divergence is caught without copying the state to the host. One
    small program for every stage (the state's structure is the same in each): the leaves
    are joined and reduced once, where a reduction per leaf is a kernel per leaf to compile.
    """
    leaves = [jnp.ravel(x) for x in jax.tree_util.tree_leaves(tree)
              if jnp.issubdtype(x.dtype, jnp.inexact)]
    if not leaves:
        return jnp.asarray(True)
    return jnp.all(jnp.isfinite(jnp.concatenate(leaves)))


def stage_compiler_options(cfg: TrainConfig, sizes: Sequence[int], platform: str,
                           members: int = 1) -> dict[str, Any] | None:
    """XLA compiler options for a stage's chunk runner: ``cfg.epochs`` epochs of
    :func:`steps_per_epoch` over domains of ``sizes``, for ``members`` members vmapped on
    one device.

    On CPU, :func:`quick_compile_options` where those train steps in all are at most
    ``QUICK_COMPILE_STEPS``: XLA's defaults cost more to compile than they save on a
    short run (and run slower, which a short run does not feel). Otherwise None (XLA's
    defaults).
    """
    steps = members * cfg.epochs * steps_per_epoch(sizes, cfg.batch_size)
    if platform == "cpu" and steps <= QUICK_COMPILE_STEPS:
        return dict(quick_compile_options()) or None
    return None
