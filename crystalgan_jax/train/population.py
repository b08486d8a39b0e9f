"""Populations as one compiled program: member states stacked and sharded over devices.

S members' :class:`~crystalgan_jax.train.TrainState` pytrees are stacked along a
leading member axis ``[P]`` and trained together: the per-member chunk function of
:func:`crystalgan_jax.train.make_chunk_runner` is ``vmap``-ed over that axis, and
the axis is split over a one-axis :class:`jax.sharding.Mesh` of all devices (of all
processes, after ``jax.distributed.initialize``) with ``shard_map``, so each device trains
its own members and no device talks to another while training. ``P`` is S rounded up to a
multiple of the device count; the padding members repeat member 0 and are dropped on
output.

Loss weights are traced per-member values (a ``[P, 8]`` array, :data:`WEIGHT_NAMES`), so a
weight sweep is one program too. The clash term (l7) is computed only where some member has
l7 > 0: in a population without it, l7 stays the Python number 0 and the term is left out.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Callable, Sequence

import flax.struct as struct
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from crystalgan_jax.core import encoding, losses
from crystalgan_jax import train
from crystalgan_jax.train.checkpoints import Checkpoints

AXIS = "members"
WEIGHT_NAMES = tuple(f.name for f in dataclasses.fields(losses.Weights))  # l1..l7, occupancy
# Members vmapped together on one CPU device (make_population_chunk): groups of a few
# keep a group's parameters and moments in the core's cache (benchmarks/population.py).
MEMBER_GROUP = 4


def member_group(platform: str) -> int | None:
    """Members vmapped together per device by default on ``platform`` ("cpu", "gpu", ...).

    :data:`MEMBER_GROUP` on a CPU, whose cache is what groups are for; ``None`` (all of
    a device's members in one vmap) on an accelerator, which a group of four leaves
    mostly idle (benchmarks/population.py measures both).
    """
    return MEMBER_GROUP if platform == "cpu" else None


@dataclasses.dataclass(frozen=True)
class MemberSharding:
    """The member axis over a one-axis mesh of every device (of every process).

    Attributes:
      mesh: devices along :data:`AXIS`.
      n_members: real members S.
      padded: P, S rounded up to a multiple of the device count.
    """

    mesh: Mesh
    n_members: int
    padded: int

    @classmethod
    def over(cls, n_members: int, devices: Sequence[jax.Device] | None = None
             ) -> "MemberSharding":
        devices = list(devices if devices is not None else jax.devices())
        padded = math.ceil(n_members / len(devices)) * len(devices)
        return cls(Mesh(np.array(devices), (AXIS,)), n_members, padded)

    @property
    def members(self) -> NamedSharding:
        """Leading axis split over the devices."""
        return NamedSharding(self.mesh, P(AXIS))

    @property
    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, P())

    def local_members(self) -> list[int]:
        """Indices of the real members whose rows live on this process's devices."""
        slices = self.members.addressable_devices_indices_map((self.padded,)).values()
        rows = sorted({i for s in slices for i in range(*s[0].indices(self.padded))})
        return [i for i in rows if i < self.n_members]

    def pad(self, rows: np.ndarray) -> np.ndarray:
        """``[S, ...]`` -> ``[P, ...]``; padding rows repeat row 0 (dropped on output)."""
        extra = np.repeat(rows[:1], self.padded - self.n_members, axis=0)
        return np.concatenate([rows, extra])

    def put(self, tree, sharding: NamedSharding):
        """Host arrays (the same on every process) -> global arrays with ``sharding``."""
        return jax.tree_util.tree_map(
            lambda a: jax.make_array_from_callback(np.shape(a), sharding,
                                                   lambda idx: np.asarray(a)[idx]), tree)


def local_rows(array: jax.Array) -> dict[int, np.ndarray]:
    """Member index -> its row, for the rows of ``array`` ([P, ...]) held by this process."""
    out = {}
    for shard in array.addressable_shards:
        start = shard.index[0].start or 0
        for i, row in enumerate(np.asarray(shard.data)):
            out[start + i] = row
    return out


def member_state(tree, index: int):
    """Member ``index`` of a stacked pytree (held by this process) as numpy arrays."""
    return jax.tree_util.tree_map(lambda a: local_rows(a)[index], tree)


def read_checkpoint(checkpoint_dir: str | Path, step: int | None = None) -> dict:
    """A population checkpoint as numpy arrays, whatever devices wrote it.

    So a population trained on a pod or over several processes can be read on one
    machine. Returns ``{"members": {"params": ..., "opt_state": ..., "key": ...,
    "epoch": ...} (each leaf [P, ...]), "epoch": scalar}``; rows beyond the population's
    members (see its config.json) are padding.
    """
    ckpt = Checkpoints(checkpoint_dir)
    try:
        return ckpt.read_as_dicts(step)
    finally:
        ckpt.close()


@struct.dataclass
class PopulationState:
    """Stacked member states ``[P]`` and the epoch they all reached (replicated scalar)."""

    members: train.TrainState
    epoch: jax.Array


def weight_rows(weights: Sequence[losses.Weights]) -> np.ndarray:
    """``[S, 8]`` float32: each member's :data:`WEIGHT_NAMES`."""
    return np.array([[getattr(w, k) for k in WEIGHT_NAMES] for w in weights], np.float32)


def static_config(cfg: train.TrainConfig, weights: Sequence[losses.Weights]
                  ) -> train.TrainConfig:
    """The configuration that decides the program's shape: l7 is the members' largest.

    So the clash term is in the program (and its metric logged) iff some member uses it.
    """
    l7 = max(w.l7 for w in weights)
    return dataclasses.replace(cfg, weights=dataclasses.replace(cfg.weights, l7=l7))


def traced_weights(row: jax.Array, cfg: train.TrainConfig) -> losses.Weights:
    """One member's weights ``[8]`` as traced scalars; l7 stays 0 where no member uses it."""
    w = losses.Weights(*(row[i] for i in range(len(WEIGHT_NAMES))))
    return w if cfg.weights.l7 > 0 else dataclasses.replace(w, l7=0.0)


def make_population_chunk(stage: train.Stage, nets: train.Networks,
                           cfg: train.TrainConfig, shifts: jax.Array,
                           sizes: Sequence[int], sharding: MemberSharding,
                           on_trace: Callable[[str], None] | None = None,
                           group: int | None = None,
                           compiler_options: dict | None = None):
    """Jitted ``run(members, weights[P, 8], data, active[chunk])`` -> (members, metrics).

    ``members`` and ``data`` are stacked ``[P, ...]``, metrics ``[P, chunk, n_metrics]``;
    each member runs :func:`train.make_chunk_runner`'s chunk with its own weights.
    ``cfg`` is :func:`static_config` of the population. Each device runs its members
    in vmapped groups of at most ``group`` (the largest divisor of its member count),
    one group's whole chunk after the other; ``group=None`` takes :func:`member_group`
    of the mesh's platform. ``compiler_options`` go to ``jax.jit``
    (:func:`train.stage_compiler_options`).
    """
    if group is None:
        group = member_group(sharding.mesh.devices.flat[0].platform)

    def member(state, weights, data, active):
        member_cfg = dataclasses.replace(cfg, weights=traced_weights(weights, cfg))
        chunk = train.make_chunk_runner(stage, nets, member_cfg, shifts, sizes, on_trace)
        return chunk(state, data, active)

    def device_members(states, weights, data, active):
        # Groups, not one vmap over all local members: a group's parameters and Adam
        # moments (~1 MB per member in the paper configuration) stay in the core's cache
        # for the whole chunk, where 32 vmapped members stream ~30 MB through it per layer.
        local = weights.shape[0]  # this device's members
        limit = local if group is None else min(group, local)
        size = max(g for g in range(1, limit + 1) if local % g == 0)
        # a divisor of the local count: lax.map traces a remainder group separately
        return jax.lax.map(lambda m: member(*m, active), (states, weights, data),
                           batch_size=size)

    split = P(AXIS)
    # shard_map: each device runs its own members, no communication.
    # check_vma is off because an inactive epoch's zero metrics are not per-device values.
    return jax.jit(jax.shard_map(device_members,
                                 mesh=sharding.mesh, in_specs=(split, split, split, P()),
                                 out_specs=(split, split), check_vma=False),
                   compiler_options=compiler_options)


def init_population(seeds: Sequence[int], nets: train.Networks,
                    cfg: train.TrainConfig, sharding: MemberSharding) -> PopulationState:
    """Fresh states of every member (``PRNGKey(seed)``, as a single run), sharded."""
    seeds = sharding.pad(np.array(seeds, np.uint32))
    init = jax.jit(jax.vmap(lambda s: train.init_state(jax.random.PRNGKey(s), nets, cfg)),
                   out_shardings=sharding.members)
    states = init(sharding.put(seeds, sharding.members))
    return PopulationState(states, sharding.put(np.int32(0), sharding.replicated))


def stage_data(stage: str, states: train.TrainState, nets: train.Networks,
               x: encoding.Crystal, y: encoding.Crystal, sharding: MemberSharding,
               guide: encoding.Crystal | None = None) -> tuple:
    """Each member's domains for ``stage`` ``[P, ...]`` (stage 3's depend on its stage 1;
    ``guide`` joins every member's stage-3 domains: :func:`train.stage_data`)."""
    fn = jax.vmap(lambda s, x, y, g: train.stage_data(stage, s, nets, x, y, g),
                  in_axes=(0, None, None, None))
    return jax.jit(fn, out_shardings=sharding.members)(states, x, y, guide)


def generate(states: train.TrainState, nets: train.Networks, cfg: train.TrainConfig,
              x: encoding.Crystal, y: encoding.Crystal, sharding: MemberSharding) -> dict:
    """:func:`train.generate` of every member, with the key a single run uses."""
    fn = jax.vmap(lambda s, x, y: train.generate(s, nets, cfg, x, y,
                                                    jax.random.fold_in(s.key, 1)),
                  in_axes=(0, None, None))
    return jax.jit(fn, out_shardings=sharding.members)(states, x, y)


