"""CrystalGAN training in JAX: state pytree, jitted train steps, the stages, feature transfer.

Everything here is a pure function of (state, data, static configuration). One
:class:`TrainState` pytree holds the parameters of the four generators (G_AHB1, G_BHA1,
G_AHB2, G_BHA2), the four discriminators (D_AH, D_BH, D_AHB, D_BHA), their optax
states and the PRNG key; with ``method="gan"`` it holds the plain-GAN baseline's
noise generator and discriminator instead. Nothing draws Python-side randomness, so a
whole run can be vmapped over seeds.

The three steps of the method (spec, "The three steps"):

* stage 1, a cross-domain GAN on the (H, metal) views of AH and BH
  (:func:`crystalgan_jax.core.encoding.metal_view`), losses L_G1 and L_D1;
* feature transfer (:func:`feature_transfer`, no training): x_AHB_g = x_AHB1 with the B
  block of y_BHA1, y_BHA_g = y_BHA1 with the A block of x_AHB1;
* stage 3, the same cross-domain GAN on AHB_g and BHA_g, plus the geometric terms.

A train step is one discriminator update then ``generator_steps`` generator updates on
the same minibatch (the authors' schedule). An epoch takes ``max(n_x, n_y) // batch``
full minibatches (at least one) from fresh permutations of each domain. Epochs run
inside XLA: :func:`make_chunk_runner` compiles ``lax.scan`` over a fixed number of
epochs, with a per-epoch ``active`` flag so that a shorter final chunk reuses the same
compiled program.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Sequence

import flax.struct as struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from crystalgan_jax.core import geometry, losses
from crystalgan_jax.core.encoding import A_BLOCK, B_BLOCK, Crystal, from_metal_view, metal_view
from crystalgan_jax.core.encoding import replace_block
from crystalgan_jax.core.models import Discriminator, Generator, NoiseGenerator

METHODS = ("crystalgan", "nocons", "discogan", "gan", "crystalgan_plus")

# What "crystalgan_plus" switches on where a field is left at None (issue 13). Each can be
# switched off alone (0 / 1 / False), which is how experiments/ablation.py measures it.
PLUS_DEFAULTS = {"plus_clash": True, "window_weight": 1.0, "spacing_weight": 1.0,
                 "input_noise": 0.3, "samples_per_input": 10, "random_pairings": True,
                 "snap_symprec": 0.1, "snapshots": 5}
# The same fields for every other method: off, so the paper's method is unchanged.
PLUS_OFF = {"plus_clash": False, "window_weight": 0.0, "spacing_weight": 0.0,
            "input_noise": 0.0, "samples_per_input": 1, "random_pairings": False,
            "snap_symprec": 0.0, "snapshots": 1}
GEOMETRY_FORMS = ("hinge", "paper")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters (paper defaults; spec "Hyperparameters").

    Attributes:
      method: "crystalgan" (stages 1 and 3 with geometric terms), "nocons" (the same
        with l5 = l6 = l7 = 0), "discogan" (stage 1 only; its outputs are final), "gan"
        (Gaussian noise -> crystal, trained on both domains together), "crystalgan_plus"
        (CrystalGAN with this project's improvements, each switchable by its flag).
      epochs: epochs per stage.
      batch_size: minibatch size (paper: 35).
      learning_rate: Adam's step size.
      beta1, beta2: Adam's decay rates of the first and second moment estimates.
      generator_steps: generator updates per discriminator update (authors: 5).
      depth, width: hidden layers and units of every MLP (paper: 5 x 100).
      weights: l1..l7 and the occupancy weight.
      d1, d2: allowed nearest-neighbour range, Angstrom.
      classes: constrained classes as tuples of block indices (H=0, A=1, B=2); on the
        command line (--constrained) each class is a set of block letters among H, A, B
        whose atoms are constrained to their nearest atom of the same set (AB =
        metal-metal).
      geometry_form: "hinge" (relu(d1 - s)^2 + relu(s - d2)^2) or "paper" (the literal
        min (d1 - s)^2 and -min (d2 - s)^2).
      latent_dim: noise size of the GAN baseline.
      chunk_epochs: epochs per compiled call; progress and checkpoints happen between.
      max_images: cap on lattice images per axis for the geometric penalty.
      residual: generators predict a correction to their input coordinates (not in the
        paper).
      clash_radii: covalent radii (Angstrom) of H, A and B for the clash term (l7); all
        zero means the runner takes ASE's covalent radii of the three elements.
      clash_factor: pairs closer than this x the radius sum are penalised by L_clash. 0.8
        leaves a margin over the strict criterion's 0.75, since a hinge settles on its
        boundary.
      plus_clash: crystalgan_plus turns on the clash term with l7 = 1 where l7 is 0.
      window_weight: weight of L_win, per-class nearest-distance windows learned from the
        training binaries (``pair_windows``; stage 3 only).
      pair_windows: ``((source blocks), (target blocks), lo, hi)`` per window, Angstrom;
        empty: the runner learns them (:func:`crystalgan_jax.materials.candidates.learn_windows`).
      window_percentiles: percentiles of the training distances that bound each window.
      spacing_weight: weight of L_cell = sum relu(min_plane_spacing - h_m)^2 on the
        generated cells, which keeps them inside the penalty's compiled image range.
      min_plane_spacing: Angstrom; 0: the runner takes the training cells' smallest.
      input_noise: std (Angstrom) of Gaussian noise added to the stage-3 inputs' lattice
        and positions, in training and when sampling.
      samples_per_input: stage-3 samples drawn per input pair when generating.
      random_pairings: samples after the first pair x_AHB1 and y_BHA1 at random (step 2
        with other partners) instead of repeating the fixed pairing.
      snap_symprec: Angstrom; > 0 snaps each generated structure with a space group above
        P1 at this tolerance to its idealised primitive standard cell (0 = off).
      snapshots: K stage-3 generator states that generation draws from: the parameters
        after epochs E/K, 2E/K, ..., E of stage 3 (:func:`snapshot_epochs`; the last is
        the final state). Sample k of each input comes from state K-1-(k mod K), so
        sample 0 is the final generators' and ``samples_per_input`` stays the total.
        Long training collapses the stage-3 samples onto a few structures; the earlier
        states keep their spread.

    The crystalgan_plus ingredients (plus_clash ... snapshots; issue 13) left at
    ``None`` take the method's default: :data:`PLUS_DEFAULTS` for crystalgan_plus,
    :data:`PLUS_OFF` (all off) for every other method.
    """

    method: str = "crystalgan"
    epochs: int = 1000
    batch_size: int = 35
    learning_rate: float = 1e-4
    beta1: float = 0.5
    beta2: float = 0.999
    generator_steps: int = 5
    depth: int = 5
    width: int = 100
    weights: losses.Weights = losses.Weights()
    d1: float = 1.8
    d2: float = 3.0
    classes: tuple[tuple[int, ...], ...] = geometry.DEFAULT_CLASSES
    geometry_form: str = "hinge"
    latent_dim: int = 32
    chunk_epochs: int = 50
    max_images: int = 3
    residual: bool = False
    clash_radii: tuple[float, float, float] = (0.0, 0.0, 0.0)
    clash_factor: float = 0.8
    plus_clash: bool | None = None
    window_weight: float | None = None
    pair_windows: tuple[tuple[tuple[int, ...], tuple[int, ...], float, float], ...] = ()
    window_percentiles: tuple[float, float] = (1.0, 99.0)
    spacing_weight: float | None = None
    min_plane_spacing: float = 0.0
    input_noise: float | None = None
    samples_per_input: int | None = None
    random_pairings: bool | None = None
    snap_symprec: float | None = None
    snapshots: int | None = None

    def __post_init__(self):
        defaults = PLUS_DEFAULTS if self.method == "crystalgan_plus" else PLUS_OFF
        if self.snapshots is None:  # the default never asks for more states than epochs
            object.__setattr__(self, "snapshots", min(defaults["snapshots"], max(self.epochs, 1)))
        for name, value in defaults.items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)
        if (self.plus_clash and not isinstance(self.weights.l7, jax.Array)
                and self.weights.l7 == 0):
            object.__setattr__(self, "weights", dataclasses.replace(self.weights, l7=1.0))
        pw = tuple((tuple(map(int, s)), tuple(map(int, t)), float(lo), float(hi))
                   for s, t, lo, hi in self.pair_windows)  # JSON lists -> hashable tuples
        object.__setattr__(self, "pair_windows", pw)
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        for name in ("epochs", "batch_size", "generator_steps", "width", "chunk_epochs",
                     "latent_dim", "max_images"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 0 < self.d1 < self.d2 < float("inf"):
            raise ValueError(f"need 0 < d1 < d2 (finite), got d1={self.d1}, d2={self.d2}")
        _check_config_ranges(self)
        if self.samples_per_input < 1:
            raise ValueError(f"samples_per_input must be at least 1, got {self.samples_per_input}")
        if not 1 <= self.snapshots <= self.epochs:
            raise ValueError(f"snapshots must be in [1, epochs = {self.epochs}], "
                             f"got {self.snapshots}")
        for name in ("window_weight", "spacing_weight", "input_noise", "snap_symprec",
                     "min_plane_spacing"):
            if not 0 <= getattr(self, name) < float("inf"):
                raise ValueError(f"{name} must be finite and >= 0, got {getattr(self, name)}")
        if self.geometry_form not in GEOMETRY_FORMS:
            raise ValueError(f"geometry_form must be one of {GEOMETRY_FORMS}, "
                             f"got {self.geometry_form!r}")
        if self.method == "nocons":
            object.__setattr__(self, "weights",
                               dataclasses.replace(self.weights, l5=0.0, l6=0.0, l7=0.0))

    @property
    def stages(self) -> tuple[str, ...]:
        """Names of the trained stages, in order."""
        return {"crystalgan": ("stage1", "stage3"), "nocons": ("stage1", "stage3"),
                "crystalgan_plus": ("stage1", "stage3"),
                "discogan": ("stage1",), "gan": ("gan",)}[self.method]


def _check_config_ranges(cfg: "TrainConfig") -> None:
    """Raises ValueError naming the first hyperparameter out of its range.

    NaN fails every comparison, so each check is written as "inside the range".
    """
    if not 0 < cfg.learning_rate < float("inf"):
        raise ValueError(f"learning_rate must be finite and > 0, got {cfg.learning_rate}")
    for name in ("beta1", "beta2"):
        if not 0 <= getattr(cfg, name) < 1:
            raise ValueError(f"{name} must be in [0, 1), got {getattr(cfg, name)}")
    if cfg.depth < 0:
        raise ValueError(f"depth must be at least 0, got {cfg.depth}")
    for field in dataclasses.fields(cfg.weights):
        value = getattr(cfg.weights, field.name)
        if isinstance(value, jax.Array):  # a population's per-member weights, traced: each
            continue                      # member's Weights were checked when it was made
        if not 0 <= value < float("inf"):
            flag = "occupancy_weight" if field.name == "occupancy" else field.name
            raise ValueError(f"{flag} must be finite and >= 0, got {value}")
    if not 0 < cfg.clash_factor < float("inf"):
        raise ValueError(f"clash_factor must be finite and > 0, got {cfg.clash_factor}")
    if not all(0 <= r < float("inf") for r in cfg.clash_radii):
        raise ValueError(f"clash_radii must be finite and >= 0, got {cfg.clash_radii}")
    if not cfg.classes or any(not c for c in cfg.classes):
        raise ValueError("constrained classes (--constrained) must name at least one class, "
                         f"each of at least one block, got {cfg.classes}")
    if any(b not in (0, 1, 2) for c in cfg.classes for b in c):
        raise ValueError(f"constrained classes take blocks 0 (H), 1 (A), 2 (B), got {cfg.classes}")


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


def metric_names(stage: Stage, cfg: TrainConfig) -> tuple[str, ...]:
    """What one epoch logs for ``stage``: its losses, plus L_clash where it is on, plus
    crystalgan_plus's terms (L_win, L_cell, and ``outside_images``: the fraction of
    generated cells that need more lattice images than the penalty was compiled with)."""
    return stage.metric_names + (("L_clash",) if _uses_clash(stage, cfg) else ()) \
        + _plus_metric_names(stage, cfg)


def _plus_metric_names(stage: Stage, cfg: TrainConfig) -> tuple[str, ...]:
    if not stage.geometric or cfg.method != "crystalgan_plus":
        return ()
    return ((("L_win",) if _uses_windows(cfg) else ())
            + (("L_cell",) if cfg.spacing_weight > 0 else ()) + ("outside_images",))


def _uses_windows(cfg: TrainConfig) -> bool:
    return cfg.window_weight > 0 and len(cfg.pair_windows) > 0


def _uses_clash(stage: Stage, cfg: TrainConfig) -> bool:
    # A population traces l7 per member (crystalgan_jax.pipeline.population): an array weight means
    # the term is computed, and each member's l7 scales it (0 turns it off for that member).
    l7 = cfg.weights.l7
    return stage.geometric and (isinstance(l7, jax.Array) or l7 > 0)


def optimizer(cfg: TrainConfig) -> optax.GradientTransformation:
    """Adam with the paper's settings."""
    return optax.adam(cfg.learning_rate, b1=cfg.beta1, b2=cfg.beta2)


def init_state(key: jax.Array, nets: Networks, cfg: TrainConfig) -> TrainState:
    """Fresh parameters and optimizer states for the networks ``cfg.method`` trains.

    Parameters follow Flax's ``Dense`` defaults (LeCun truncated normal kernels, zero
    biases), drawn by :func:`draw_parameters`. Traceable (a population ``vmap``s it over
    its members' keys); called on a concrete key it runs a few small programs and cuts
    the kernels from the draw on the host: one program with an output per array took
    1.3 s to compile on the 2-core CPU, beside the first stage's compilation.
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


# --- compile effort ------------------------------------------------------------------------

# XLA's CPU backend compiles a program's kernels with its fusion emitters and LLVM at -O2
# by default; with the older LLVM IR emitters at -O0 it compiles sooner and runs slower,
# the better choice for a program that runs only briefly.
QUICK_COMPILE = {"xla_backend_optimization_level": 0, "xla_cpu_use_fusion_emitters": False}
QUICK_COMPILE_STEPS = 16


@functools.cache
def quick_compile_options() -> dict[str, Any]:
    """The options of :data:`QUICK_COMPILE` that the installed XLA accepts.

    An option XLA does not know fails every compilation that passes it, and XLA drops
    options as its backends move on; each is tried once, on a one-line program.
    """
    known = {}
    for name, value in QUICK_COMPILE.items():
        try:
            jax.jit(jnp.negative, compiler_options={name: value}).lower(
                np.float32(0)).compile()
        except Exception:  # e.g. JaxRuntimeError: No such compile option
            continue
        known[name] = value
    return known


def quick_jit(fun: Callable, **jit_kwargs) -> Callable:
    """``jax.jit(fun, **jit_kwargs)`` compiled with :func:`quick_compile_options` on CPU.

    For programs a run calls once or once per stage (initialisation, a stage's data,
    generation): on a short run their compilation is on the critical path, and their
    running time is a few milliseconds at any optimisation level. On other platforms
    (not measured) XLA's defaults. Called inside another trace it is a plain nested
    ``jax.jit`` (JAX takes compiler options only at the top level; the outer program's
    apply).
    """
    default = jax.jit(fun, **jit_kwargs)
    quick: list[Callable] = []  # made at the first call on CPU: the options need XLA

    @functools.wraps(fun)
    def call(*args, **kwargs):
        traced = any(isinstance(leaf, jax.core.Tracer)
                     for leaf in jax.tree_util.tree_leaves((args, kwargs)))
        if traced or jax.default_backend() != "cpu":
            return default(*args, **kwargs)
        if not quick:
            quick.append(jax.jit(fun, compiler_options=quick_compile_options(), **jit_kwargs))
        return quick[0](*args, **kwargs)

    return call


def stage_compiler_options(cfg: TrainConfig, sizes: Sequence[int], platform: str,
                           members: int = 1) -> dict[str, Any] | None:
    """XLA compiler options for a stage's chunk runner: ``cfg.epochs`` epochs of
    :func:`steps_per_epoch` over domains of ``sizes``, for ``members`` members vmapped on
    one device.

    On CPU, :func:`quick_compile_options` where those train steps in all are at most
    ``QUICK_COMPILE_STEPS``: XLA's defaults cost more to compile than they save on a
    short run. Measured on the 2-core machine (paper configuration, one step per epoch,
    compiled in one process): stage 1 compiled in 1.46 s against 2.14 s and ran at 53
    against 156 epochs/s, stage 3 in 1.99 s against 3.43 s at 14 against 116 epochs/s: it
    pays below ~23 steps (stage 3) and ~54 (stage 1). Otherwise None (XLA's defaults; GPU
    and TPU were not measured).
    """
    steps = members * cfg.epochs * steps_per_epoch(sizes, cfg.batch_size)
    if platform == "cpu" and steps <= QUICK_COMPILE_STEPS:
        return dict(quick_compile_options()) or None
    return None


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
        opt_state[f"{stage}/G"] = tx.init(_subset(params, spec.generators))
        opt_state[f"{stage}/D"] = tx.init(_subset(params, spec.discriminators))
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


def _record_snapshots(state: TrainState, stage: Stage, cfg: TrainConfig) -> TrainState:
    """Copies the stage's generators into their snapshot slot after a snapshot epoch."""
    done = state.epoch - cfg.stages.index(stage.name) * cfg.epochs  # this stage's epochs
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
    draw: a draw per kernel made XLA compile the initialisation for 4 s on a 2-core
    CPU (one random-number program per array); one draw compiles in 0.3 s. Under a
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


def _subset(params: dict, names: Sequence[str]) -> dict:
    return {name: params[name] for name in dict.fromkeys(names)}


def apply_generator(gen: Generator, params, crystals: Crystal) -> tuple[Crystal, tuple]:
    """A generator over a batch ``[B]`` of crystals -> (crystals, mask logits)."""
    return gen(params, crystals)


def apply_discriminator(disc: Discriminator, params, crystals: Crystal) -> jax.Array:
    """A discriminator over a batch ``[B]`` -> logits ``[B]``."""
    return disc(params, crystals)


def _concat(a: Crystal, b: Crystal) -> Crystal:
    return jax.tree_util.tree_map(lambda x, y: jnp.concatenate([x, y]), a, b)


# --- losses of one stage, as functions of its parameters --------------------------------

def cross_domain_generator_loss(gparams: dict, dparams: dict, x: Crystal, y: Crystal, *,
                                stage: Stage, nets: Networks, cfg: TrainConfig,
                                shifts: jax.Array) -> tuple[jax.Array, jax.Array]:
    """L_G1 (stage 1) or L_G2 (stage 3) on minibatches x, y; returns (loss, logged terms)."""
    gen = nets.generator(stage.name)
    scale = gen.length_scale
    g_xy, g_yx = stage.generators
    d_x, d_y = stage.discriminators
    fake_y, _ = apply_generator(gen, gparams[g_xy], x)
    fake_x, _ = apply_generator(gen, gparams[g_yx], y)
    rec_x, rec_x_logits = apply_generator(gen, gparams[g_yx], fake_y)
    rec_y, rec_y_logits = apply_generator(gen, gparams[g_xy], fake_x)
    gan_fwd = losses.generator_adversarial(apply_discriminator(nets.discriminator, dparams[d_y], fake_y))
    gan_bwd = losses.generator_adversarial(apply_discriminator(nets.discriminator, dparams[d_x], fake_x))
    w = cfg.weights
    rec_xv = losses.cycle(rec_x, rec_x_logits, x, scale, w.occupancy)
    rec_yv = losses.cycle(rec_y, rec_y_logits, y, scale, w.occupancy)
    terms = [gan_fwd, rec_xv, gan_bwd, rec_yv]
    geo1 = geo2 = clash = jnp.zeros((), jnp.float32)
    if stage.geometric:
        # The penalty runs on both generated directions: these are the final x_AHB2, y_BHA2.
        generated = _concat(fake_y, fake_x)
        geo1, geo2 = losses.geometric(generated, shifts, cfg.d1, cfg.d2, cfg.classes,
                                      cfg.geometry_form)
        terms += [geo1, geo2]
        if _uses_clash(stage, cfg):
            clash = losses.clash(generated, shifts, cfg.clash_radii, cfg.clash_factor)
            terms += [clash]
    total = losses.generator_objective(gan_fwd, rec_xv, gan_bwd, rec_yv, geo1, geo2, w, clash)
    if stage.geometric and cfg.method == "crystalgan_plus":
        total, plus_terms = _plus_terms(total, generated, cfg, shifts)
        terms += plus_terms
    return total, jnp.stack([total] + terms)


def _plus_terms(total: jax.Array, generated: Crystal, cfg: TrainConfig,
                shifts: jax.Array) -> tuple[jax.Array, list[jax.Array]]:
    """crystalgan_plus's additions to L_G2 and what they log (:func:`_plus_metric_names`)."""
    terms = []
    if _uses_windows(cfg):
        win = losses.windows(generated, shifts, cfg.pair_windows)
        total = total + cfg.window_weight * win
        terms.append(win)
    if cfg.spacing_weight > 0:
        cell = losses.cell_spacing(generated, cfg.min_plane_spacing)
        total = total + cfg.spacing_weight * cell
        terms.append(cell)
    terms.append(jax.lax.stop_gradient(losses.outside_image_fraction(generated, shifts)))
    return total, terms


def cross_domain_discriminator_loss(dparams: dict, gparams: dict, x: Crystal, y: Crystal, *,
                                    stage: Stage, nets: Networks) -> jax.Array:
    """L_D1 or L_D2: each discriminator on its domain's data against generated samples."""
    gen = nets.generator(stage.name)
    g_xy, g_yx = stage.generators
    d_x, d_y = stage.discriminators
    fake_y = jax.lax.stop_gradient(apply_generator(gen, gparams[g_xy], x)[0])
    fake_x = jax.lax.stop_gradient(apply_generator(gen, gparams[g_yx], y)[0])
    disc = nets.discriminator
    return losses.discriminator_objective(
        apply_discriminator(disc, dparams[d_x], x), apply_discriminator(disc, dparams[d_x], fake_x),
        apply_discriminator(disc, dparams[d_y], y), apply_discriminator(disc, dparams[d_y], fake_y))


def sample_noise(key: jax.Array, count: int, cfg: TrainConfig) -> jax.Array:
    """Gaussian latent vectors ``[count, latent_dim]`` for the GAN baseline."""
    return jax.random.normal(key, (count, cfg.latent_dim), jnp.float32)


def sample_crystals(params: dict, nets: Networks, key: jax.Array, count: int,
                    cfg: TrainConfig) -> Crystal:
    """``count`` crystals from the GAN baseline's noise generator (params["G_noise"])."""
    z = sample_noise(key, count, cfg)
    return nets.noise_generator(params["G_noise"], z)[0]


def gan_generator_loss(gparams: dict, dparams: dict, real: Crystal, key: jax.Array, *,
                       nets: Networks, cfg: TrainConfig) -> tuple[jax.Array, jax.Array]:
    """Plain GAN: -E[log D(G(z))] with z Gaussian; returns (loss, logged terms)."""
    fake = sample_crystals(gparams, nets, key, real.lattice.shape[0], cfg)
    loss = losses.generator_adversarial(
        apply_discriminator(nets.discriminator, dparams["D_all"], fake))
    return loss, jnp.stack([loss])


def gan_discriminator_loss(dparams: dict, gparams: dict, real: Crystal, key: jax.Array, *,
                           nets: Networks, cfg: TrainConfig) -> jax.Array:
    """Plain GAN: -E[log D(y)] - E[log(1 - D(G(z)))] over the union of both domains."""
    fake = jax.lax.stop_gradient(sample_crystals(gparams, nets, key, real.lattice.shape[0], cfg))
    disc = nets.discriminator
    return losses.discriminator(apply_discriminator(disc, dparams["D_all"], real),
                                apply_discriminator(disc, dparams["D_all"], fake))


# --- steps, epochs, chunks ----------------------------------------------------------------

def _stage_losses(stage: Stage, nets: Networks, cfg: TrainConfig, shifts: jax.Array):
    """(generator loss, discriminator loss), both as f(gp, dp, batch, key)."""
    if stage.name == "gan":
        def g_loss(gp, dp, batch, key):
            return gan_generator_loss(gp, dp, batch[0], key, nets=nets, cfg=cfg)

        def d_loss(dp, gp, batch, key):
            return gan_discriminator_loss(dp, gp, batch[0], key, nets=nets, cfg=cfg)
        return g_loss, d_loss

    noisy = stage.geometric and cfg.input_noise > 0  # crystalgan_plus: noise into stage 3

    def g_loss(gp, dp, batch, key):
        batch = perturb_batch(batch, key, cfg.input_noise) if noisy else batch
        return cross_domain_generator_loss(gp, dp, *batch, stage=stage, nets=nets, cfg=cfg,
                                           shifts=shifts)

    def d_loss(dp, gp, batch, key):
        batch = perturb_batch(batch, key, cfg.input_noise) if noisy else batch
        return cross_domain_discriminator_loss(dp, gp, *batch, stage=stage, nets=nets)
    return g_loss, d_loss


def perturb(crystals: Crystal, key: jax.Array, sigma: float) -> Crystal:
    """Adds N(0, sigma^2) (Angstrom) to every lattice entry and position; masks unchanged.

    The stage-3 generators are deterministic maps; noise on their input is what lets one
    input pair give several distinct outputs (crystalgan_plus).
    """
    keys = jax.random.split(key, 1 + len(crystals.positions))
    lattice = crystals.lattice + sigma * jax.random.normal(keys[0], crystals.lattice.shape)
    positions = tuple(p + sigma * jax.random.normal(k, p.shape)
                      for k, p in zip(keys[1:], crystals.positions))
    return crystals.replace(lattice=lattice, positions=positions)


def perturb_batch(batch: tuple, key: jax.Array, sigma: float) -> tuple:
    """:func:`perturb` on each domain's minibatch with its own key."""
    return tuple(perturb(c, k, sigma) for c, k in zip(batch, jax.random.split(key, len(batch))))


def make_train_step(stage: Stage, nets: Networks, cfg: TrainConfig, shifts: jax.Array):
    """``step(state, batch, key) -> (state, metrics)``: one D update, then k G updates.

    ``batch`` is a tuple of crystal minibatches (x, y) for a cross-domain stage or
    (real,) for the GAN baseline; ``metrics`` is ``[L_D, L_G, terms...]`` after the
    last generator update (:func:`metric_names`).
    """
    if _uses_clash(stage, cfg) and not any(cfg.clash_radii):
        raise ValueError("the clash term (l7 > 0) needs clash_radii for H, A and B")
    tx = optimizer(cfg)
    g_loss, d_loss = _stage_losses(stage, nets, cfg, shifts)
    g_names, d_names = stage.generators, stage.discriminators

    def step(state: TrainState, batch: tuple, key: jax.Array):
        gp, dp = _subset(state.params, g_names), _subset(state.params, d_names)
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

        # scanned, not unrolled: unrolling the five updates doubled the compile time and
        # ran slower inside the epoch loop (measured on the 2-core CPU machine)
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
            state = _record_snapshots(state, stage, cfg)
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
    chunk's program, one check per array was ~550 of stage 1's ~1130 kernels to compile,
    and one check over the arrays joined ran stage 3's epochs ~10 % slower (measured
    alternately in one process on the 2-core CPU).
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
    are joined and reduced once, where a reduction per leaf made ~550 kernels to compile.
    """
    leaves = [jnp.ravel(x) for x in jax.tree_util.tree_leaves(tree)
              if jnp.issubdtype(x.dtype, jnp.inexact)]
    if not leaves:
        return jnp.asarray(True)
    return jnp.all(jnp.isfinite(jnp.concatenate(leaves)))


# --- feature transfer and generation -----------------------------------------------------

def _stage1_outputs(params: dict, nets: Networks, x_ah: Crystal, y_bh: Crystal):
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
    x1, y1 = _stage1_outputs(params, nets, x_ah, y_bh)
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
    x1, y1 = _stage1_outputs(p, nets, x_ah, y_bh)
    out = {"stage1": {"AHB": x1, "BHA": y1}}
    if cfg.method == "discogan":
        out["final"] = out["stage1"]
        return out
    x_g, y_g = feature_transfer(p, nets, x_ah, y_bh)
    gen = nets.stage3_generator
    if cfg.samples_per_input > 1 or cfg.input_noise > 0:
        key = key if key is not None else state.key
        x_g, y_g = _sampled_inputs(x1, y1, x_g, y_g, key, cfg)
    out["final"] = {"AHB": _apply_snapshots(gen, state, "G_AHB2", x_g, cfg),
                    "BHA": _apply_snapshots(gen, state, "G_BHA2", y_g, cfg)}
    return out


def _apply_snapshots(gen: Generator, state: TrainState, name: str, inputs: Crystal,
                     cfg: TrainConfig) -> Crystal:
    """Generator ``name`` over ``samples_per_input`` blocks of inputs ``[K' n]``.

    Block k runs the state K-1-(k mod K) of :func:`snapshot_epochs` (block 0: the final
    parameters); without snapshots every block runs the final parameters.
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


def _sampled_inputs(x1: Crystal, y1: Crystal, x_g: Crystal, y_g: Crystal, key: jax.Array,
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
               y_bh: Crystal) -> tuple:
    """The domains a stage trains on: metal views, transferred domains, or their union."""
    if stage == "stage1":
        return (metal_view(x_ah, A_BLOCK), metal_view(y_bh, B_BLOCK))
    if stage == "stage3":
        return feature_transfer(state.params, nets, x_ah, y_bh)
    if stage == "gan":
        return (_concat(x_ah, y_bh),)
    raise ValueError(f"unknown stage {stage!r}")


def penalty_shifts(lattices: np.ndarray, cfg: TrainConfig) -> jax.Array:
    """Lattice shifts for the penalty: enough for the training cells' nearest neighbours.

    At least one image each way (so own images are seen), at most ``cfg.max_images``.
    See :mod:`crystalgan_jax.core.geometry` for what a generated cell outside this range gets.
    """
    n = np.clip(geometry.image_range(lattices), 1, cfg.max_images)
    return jnp.asarray(geometry.lattice_shifts(n))


def length_scale(lattices: np.ndarray) -> float:
    """Mean lattice-vector length of the training cells (Angstrom): the networks' unit."""
    return float(np.mean(np.linalg.norm(np.asarray(lattices), axis=-1)))
