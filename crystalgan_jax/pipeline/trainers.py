"""The compiled programs a run trains with, behind one interface for the stage loop.

A single run and a population share every step of the pipeline (preparation, the stage
loop, checkpoints, outputs); they differ only in the program that trains a chunk of
epochs. :class:`SingleTrainer` runs one member's chunk function as it is (its weights
Python numbers XLA folds in); :class:`PopulationTrainer` runs all members stacked and
sharded over the devices (:mod:`crystalgan_jax.train.population`). Both give the loop
the same things: the state's epoch, a stage's data, a chunk's program (lowered ahead
where it can be), each local member's metric rows, and each member's generated samples
as host arrays.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from crystalgan_jax.pipeline.prepare import Prepared
from crystalgan_jax.pipeline.spec import PopulationSpec
from crystalgan_jax import train
from crystalgan_jax.train import population


class Lowered(NamedTuple):
    """A stage's chunk program before compilation.

    Attributes:
      fn: the chunk program, ``fn(state, data, active) -> (state, metrics)``.
      lowered: ``jax.stages.Lowered`` of it, or None where it compiles at its first call.
      seconds: tracing and lowering.
      quick: compiled with :func:`train.stage_compiler_options`' quick options.
    """

    fn: Callable
    lowered: Any
    seconds: float
    quick: bool


def lower(fn: Callable, quick: bool, *args) -> Lowered:
    """``fn`` lowered for ``args`` where it is a ``jax.jit`` function, else as it is."""
    if not hasattr(fn, "lower"):
        return Lowered(fn, None, 0.0, quick)
    tic = time.perf_counter()
    lowered = fn.lower(*args)
    return Lowered(fn, lowered, time.perf_counter() - tic, quick)


class SingleTrainer:
    """One member, its :class:`train.TrainState` unstacked, on the default device."""

    def __init__(self, pop: PopulationSpec, prepared: Prepared):
        self.spec = pop.base
        self.cfg = pop.base.train
        self.prepared = prepared
        self.nets = prepared.nets
        self.x, self.y = (jax.tree_util.tree_map(jnp.asarray, c)
                          for c in (prepared.x, prepared.y))
        self.guide = (None if prepared.guide is None
                      else jax.tree_util.tree_map(jnp.asarray, prepared.guide))
        self.key = jax.random.PRNGKey(pop.members[0].seed)

    def local_members(self) -> list[int]:
        return [0]

    def abstract_state(self):
        return jax.eval_shape(lambda k: train.init_state(k, self.nets, self.cfg), self.key)

    def init_state(self) -> train.TrainState:
        return train.init_state(self.key, self.nets, self.cfg)

    def epoch(self, state: train.TrainState) -> int:
        return int(state.epoch)

    def restart(self, state: train.TrainState) -> train.TrainState:
        """A trained state as the start of a new run: epoch 0, all else kept."""
        return state.replace(epoch=jnp.zeros_like(state.epoch))

    def stage_data(self, stage_name: str, state) -> tuple:
        return train.stage_data(stage_name, state, self.nets, self.x, self.y, self.guide)

    def lower_stage(self, stage_name: str, state, chunk: int, on_trace=None) -> Lowered:
        """The stage's chunk runner lowered for its data's shapes; needs no trained
        parameters (``state`` may be abstract), so it can run ahead."""
        data = jax.eval_shape(lambda s: self.stage_data(stage_name, s), state)
        sizes = [d.lattice.shape[0] for d in data]
        options = train.stage_compiler_options(self.cfg, sizes, jax.default_backend())
        fn = train.make_chunk_runner(train.STAGES[stage_name], self.nets, self.cfg,
                                        self.prepared.shifts, sizes, on_trace, options)
        return lower(fn, options is not None, state, data, jnp.arange(chunk) < chunk)

    def run_chunk(self, fn: Callable, state, data, n: int, chunk: int
                  ) -> tuple[Any, dict[int, np.ndarray], bool]:
        """(new state, {0: metrics [chunk, n_metrics]}, whether all of it is finite)."""
        new_state, metrics = fn(state, data, jnp.arange(chunk) < n)
        metrics = np.asarray(metrics)
        finite = (bool(np.all(np.isfinite(metrics[:n])))
                  and bool(train.tree_all_finite((new_state.params, new_state.opt_state))))
        return new_state, {0: metrics}, finite

    def generate(self, state) -> dict[int, dict]:
        """{0: generated samples as host arrays} (:func:`train.generate`)."""
        generated = train.generate(state, self.nets, self.cfg, self.x, self.y,
                                      jax.random.fold_in(state.key, 1))
        return {0: jax.tree_util.tree_map(np.asarray, generated)}


class PopulationTrainer:
    """Every member stacked ``[P]`` and sharded over ``devices`` (default: all devices of
    all processes); each member trains with its own seed and traced loss weights."""

    def __init__(self, pop: PopulationSpec, prepared: Prepared,
                 devices: Sequence[jax.Device] | None = None):
        self.spec = pop.base
        self.members = pop.members
        self.cfg = population.static_config(pop.base.train, [m.weights for m in pop.members])
        self.prepared = prepared
        self.nets = prepared.nets
        self.sharding = population.MemberSharding.over(len(pop.members), devices)
        self.x, self.y = (self.sharding.put(c, self.sharding.replicated)
                          for c in (prepared.x, prepared.y))
        self.guide = (None if prepared.guide is None
                      else self.sharding.put(prepared.guide, self.sharding.replicated))
        self.weights = self.sharding.put(
            self.sharding.pad(population.weight_rows([m.weights for m in pop.members])),
            self.sharding.members)

    def local_members(self) -> list[int]:
        return self.sharding.local_members()

    def init_state(self) -> population.PopulationState:
        return population.init_population([m.seed for m in self.members], self.nets,
                                          self.cfg, self.sharding)

    def abstract_state(self):
        return jax.eval_shape(self.init_state)

    def epoch(self, state: population.PopulationState) -> int:
        return int(state.epoch)

    def restart(self, state: population.PopulationState) -> population.PopulationState:
        """A trained population as the start of a new run: epoch 0, all else kept."""
        members = state.members.replace(epoch=jnp.zeros_like(state.members.epoch))
        return population.PopulationState(
            members, self.sharding.put(np.int32(0), self.sharding.replicated))

    def stage_data(self, stage_name: str, state) -> tuple:
        return population.stage_data(stage_name, state.members, self.nets, self.x, self.y,
                                     self.sharding, self.guide)

    def lower_stage(self, stage_name: str, state, chunk: int, on_trace=None) -> Lowered:
        """The stage's population program, compiled at its first call (the member axis'
        shardings are those of the concrete arrays)."""
        data = jax.eval_shape(
            jax.vmap(lambda s: train.stage_data(stage_name, s, self.nets, self.prepared.x,
                                                self.prepared.y, self.prepared.guide)),
            state.members)
        sizes = [d.lattice.shape[1] for d in data]
        options = train.stage_compiler_options(  # each device trains all its members
            self.cfg, sizes, self.sharding.mesh.devices.flat[0].platform,
            members=self.sharding.padded // self.sharding.mesh.size)
        program = population.make_population_chunk(
            train.STAGES[stage_name], self.nets, self.cfg, self.prepared.shifts, sizes,
            self.sharding, on_trace, compiler_options=options)

        def fn(state, data, active):
            members, metrics = program(state.members, self.weights, data, active)
            return dataclasses.replace(state, members=members), metrics

        return Lowered(fn, None, 0.0, options is not None)

    def run_chunk(self, fn: Callable, state, data, n: int, chunk: int
                  ) -> tuple[Any, dict[int, np.ndarray], bool]:
        """(new state, local member -> metrics [chunk, n_metrics], all finite)."""
        active = self.sharding.put(np.arange(chunk) < n, self.sharding.replicated)
        new_state, metrics = fn(state, data, active)
        # over the global arrays, so that every process takes the same decision
        finite = bool(train.tree_all_finite((new_state.members.params,
                                                new_state.members.opt_state, metrics)))
        rows = population.local_rows(metrics)
        local = self.local_members()
        epoch = self.sharding.put(np.int32(int(state.epoch) + n), self.sharding.replicated)
        return (dataclasses.replace(new_state, epoch=epoch), {i: rows[i] for i in local},
                finite)

    def generate(self, state) -> dict[int, dict]:
        """Local member -> its generated samples as host arrays (each array to the host
        once, not once per member)."""
        generated = population.generate(state.members, self.nets, self.cfg, self.x, self.y,
                                        self.sharding)
        leaves, treedef = jax.tree_util.tree_flatten(generated)
        host = [population.local_rows(a) for a in leaves]
        return {i: jax.tree_util.tree_unflatten(treedef, [rows[i] for rows in host])
                for i in self.local_members()}
