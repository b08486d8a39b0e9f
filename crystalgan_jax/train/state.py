"""The networks and the state a run carries: parameters, optimizer states, PRNG key.

One :class:`TrainState` pytree holds the parameters of the four generators (G_AHB1,
G_BHA1, G_AHB2, G_BHA2), the four discriminators (D_AH, D_BH, D_AHB, D_BHA), their optax
states and the PRNG key; with ``method="gan"`` it holds the plain-GAN baseline's noise
generator and discriminator instead. Nothing draws Python-side randomness, so a whole
run can be vmapped over seeds.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Sequence

import flax.struct as struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from crystalgan_jax.core.encoding import Crystal
from crystalgan_jax.core.models import Discriminator, Generator, NoiseGenerator
from crystalgan_jax.train.compile import quick_jit
from crystalgan_jax.train.config import TrainConfig
from crystalgan_jax.train.stages import STAGES, Stage


@dataclasses.dataclass(frozen=True)
class Networks:
    """The network definitions (parameters live in the state)."""

    stage1_generator: Generator
    stage3_generator: Generator
    discriminator: Discriminator
    noise_generator: NoiseGenerator

    @classmethod
    def build(cls, rows: Sequence[int], length_scale: float, cfg: TrainConfig) -> "Networks":
        n_h, n_a, n_b = rows
        if n_a != n_b:
            raise ValueError(f"metal blocks must have equal rows for stage 1, got {n_a}, {n_b}")
        kw = dict(length_scale=length_scale, depth=cfg.depth, width=cfg.width)
        return cls(Generator(rows=(n_h, n_a), residual=cfg.residual, **kw),
                   Generator(rows=tuple(rows), residual=cfg.residual, **kw),
                   Discriminator(**kw), NoiseGenerator(rows=tuple(rows), **kw))

    def generator(self, stage: str):
        return {"stage1": self.stage1_generator, "stage3": self.stage3_generator,
                "gan": self.noise_generator}[stage]


@struct.dataclass
class TrainState:
    """Everything a run carries from epoch to epoch.

    Attributes:
      params: network name -> its parameters (:mod:`crystalgan_jax.core.models` layout).
      opt_state: "<stage>/G" and "<stage>/D" -> optax state of that stage's networks.
      key: PRNG key, split once per epoch.
      epoch: epochs completed over all stages (int32 scalar).
      snapshots: stage-3 generator name -> its parameters at :func:`snapshot_epochs`,
        stacked on a leading axis ``[K - 1, ...]``; empty unless ``cfg.snapshots > 1``.
    """

    params: dict
    opt_state: dict
    key: jax.Array
    epoch: jax.Array
    snapshots: dict = dataclasses.field(default_factory=dict)


def optimizer(cfg: TrainConfig) -> optax.GradientTransformation:
    """Adam with the paper's settings."""
    return optax.adam(cfg.learning_rate, b1=cfg.beta1, b2=cfg.beta2)


def init_state(key: jax.Array, nets: Networks, cfg: TrainConfig) -> TrainState:
    """Fresh parameters and optimizer states for the networks ``cfg.method`` trains.

    Parameters follow Flax's ``Dense`` defaults (LeCun truncated normal kernels, zero
    biases), drawn by :func:`draw_parameters`. Traceable (a population ``vmap``s it over
    its members' keys); called on a concrete key it runs a few small programs and cuts
    the kernels from the draw on the host, since one program with an output per array
    is slow to compile.
    """
    key, init_key = _split(key)
    params = draw_parameters(init_key, parameter_shapes(nets, cfg))
    return TrainState(params, _optimizer_states(params, cfg), key, jnp.zeros((), jnp.int32),
                      _snapshot_stacks(params, cfg))


def parameter_shapes(nets: Networks, cfg: TrainConfig) -> dict[str, Any]:
    """Network name -> its parameters' ``jax.ShapeDtypeStruct``s, for ``cfg.method``."""
    rows3 = nets.stage3_generator.rows
    rows1 = nets.stage1_generator.rows
    shapes: dict[str, Any] = {}
    for stage in cfg.stages:
        spec = STAGES[stage]
        if stage == "gan":
            shapes["G_noise"] = nets.noise_generator.param_shapes(cfg.latent_dim)
            shapes["D_all"] = nets.discriminator.param_shapes(rows3)
            continue
        gen, rows = nets.generator(stage), rows1 if stage == "stage1" else rows3
        for name in spec.generators:
            shapes[name] = gen.param_shapes()
        for name in spec.discriminators:
            shapes[name] = nets.discriminator.param_shapes(rows)
    return shapes


@quick_jit
def _split(key: jax.Array) -> tuple[jax.Array, jax.Array]:
    key, sub = jax.random.split(key)
    return key, sub


@functools.partial(quick_jit, static_argnames=("cfg",))
def _optimizer_states(params: dict, cfg: TrainConfig) -> dict:
    tx = optimizer(cfg)
    opt_state = {}
    for stage in cfg.stages:
        spec = STAGES[stage]
        opt_state[f"{stage}/G"] = tx.init(select_params(params, spec.generators))
        opt_state[f"{stage}/D"] = tx.init(select_params(params, spec.discriminators))
    return opt_state


def _snapshot_stacks(params: dict, cfg: TrainConfig) -> dict:
    if cfg.snapshots == 1 or "stage3" not in cfg.stages:
        return {}
    return {name: jax.tree_util.tree_map(
        lambda a: jnp.zeros((cfg.snapshots - 1,) + a.shape, a.dtype), params[name])
        for name in STAGES["stage3"].generators}


def snapshot_epochs(cfg: TrainConfig) -> np.ndarray:
    """``[K - 1]`` int32: stage-3 epoch counts after which the generators are kept.

    ``round(E k / K)`` for k = 1 .. K-1 (E = ``cfg.epochs``, K = ``cfg.snapshots``); the
    K-th state is the final one, kept in ``params``.
    """
    k = np.arange(1, cfg.snapshots)
    return np.rint(cfg.epochs * k / cfg.snapshots).astype(np.int32)


def record_snapshots(state: TrainState, stage: Stage, cfg: TrainConfig) -> TrainState:
    """Copies the stage's generators into their snapshot slot after a snapshot epoch."""
    done = state.epoch - cfg.trained_stages.index(stage.name) * cfg.epochs  # this stage's epochs
    hit = done == jnp.asarray(snapshot_epochs(cfg))  # [K - 1], at most one True

    def keep(stack: jax.Array, current: jax.Array) -> jax.Array:
        return jnp.where(hit.reshape((-1,) + (1,) * current.ndim), current[None], stack)

    return state.replace(snapshots={
        name: jax.tree_util.tree_map(keep, state.snapshots[name], state.params[name])
        for name in stage.generators})


# Flax's truncated-normal variance scaling divides by the std of N(0, 1) cut at +-2.
_TRUNCATED_STD = 0.87962566103423978


def draw_parameters(key: jax.Array, shapes) -> Any:
    """Parameters for a tree of Dense-layer shapes, as Flax's defaults draw them.

    Every ``kernel [fan_in, fan_out]`` is LeCun truncated normal (N(0, 1) cut at +-2,
    times ``sqrt(1 / fan_in) / 0.8796``), every ``bias`` zero: the law of
    ``nn.Dense``'s default initialisers. All kernels are cut from ONE truncated-normal
    draw: a draw per kernel makes XLA compile one random-number program per array,
    far slower than one draw. Under a
    trace (jit, vmap) the kernels are slices of the traced draw; with a concrete key
    they are cut and scaled on the host (NumPy float32, the same numbers) and put on
    the device together.

    Raises:
      NotImplementedError: a parameter that is neither a kernel nor a bias.
    """
    flat, treedef = jax.tree_util.tree_flatten_with_path(shapes)
    names = [getattr(path[-1], "key", None) for path, _ in flat]
    for (path, _), name in zip(flat, names):
        if name not in ("kernel", "bias"):
            raise NotImplementedError(f"no initialiser for parameter {jax.tree_util.keystr(path)}")
    sizes = [int(np.prod(leaf.shape)) if name == "kernel" else 0
             for (_, leaf), name in zip(flat, names)]
    draw = _truncated_normal(key, max(1, sum(sizes)))
    traced = isinstance(draw, jax.core.Tracer)
    xp = jnp if traced else np
    if not traced:
        draw = np.asarray(draw)
    leaves, start = [], 0
    for (_, leaf), name, size in zip(flat, names, sizes):
        if name == "bias":
            leaves.append(xp.zeros(leaf.shape, leaf.dtype))
            continue
        std = np.float32(np.sqrt(1.0 / leaf.shape[0]) / _TRUNCATED_STD)
        leaves.append((draw[start:start + size].reshape(leaf.shape) * std).astype(leaf.dtype))
        start += size
    params = jax.tree_util.tree_unflatten(treedef, leaves)
    return params if traced else jax.device_put(params)


@functools.partial(quick_jit, static_argnames=("size",))
def _truncated_normal(key: jax.Array, size: int) -> jax.Array:
    return jax.random.truncated_normal(key, -2.0, 2.0, (size,), jnp.float32)


def select_params(params: dict, names: Sequence[str]) -> dict:
    """The entries of ``params`` for the networks ``names`` (each once, in order)."""
    return {name: params[name] for name in dict.fromkeys(names)}


def apply_generator(gen: Generator, params, crystals: Crystal) -> tuple[Crystal, tuple]:
    """A generator over a batch ``[B]`` of crystals -> (crystals, mask logits)."""
    return gen(params, crystals)


def apply_discriminator(disc: Discriminator, params, crystals: Crystal) -> jax.Array:
    """A discriminator over a batch ``[B]`` -> logits ``[B]``."""
    return disc(params, crystals)
