"""Populations: many CrystalGAN runs as one compiled program, sharded over every device.

A population is S *members*, each a whole run of :mod:`crystalgan_jax.pipeline.runner` with its own
seed and its own loss weights l1..l7 (and occupancy weight). Their
:class:`~crystalgan_jax.train.TrainState` pytrees are stacked along a leading member
axis ``[P]`` and trained together: the per-member chunk function of
:func:`crystalgan_jax.train.make_chunk_runner` is ``vmap``-ed over that axis, and the
axis is split over a one-axis :class:`jax.sharding.Mesh` of all devices (of all processes,
after ``jax.distributed.initialize``) with ``shard_map``, so each device trains its own
members and no device talks to another while training. ``P`` is S rounded up to a multiple
of the device count; the padding members repeat member 0 and are dropped on output.

Loss weights are traced per-member values (a ``[P, 8]`` array, :data:`WEIGHT_NAMES`), so a
weight sweep is one program too. The clash term (l7) is computed only where some member has
l7 > 0: in a population without it, l7 stays the Python number 0 and the term is left out.

Output folder::

    members/<name>/        one member, in the layout of a single run (structures/,
                           metrics.jsonl, report.md/.json, plots, config.json);
                           <name> is e.g. seed_3 or seed_3_l5_0.1 (swept weights only)
    candidates/            every strictly good structure of all members once (one file
                           per StructureMatcher group across members), .vasp and .cif
    report.md, report.json members ranked by unique strictly good structures, with their
                           settings; then the pooled candidates
    checkpoints/           Orbax checkpoints of the whole population (``rolling/``,
                           ``stage1/``), written by all processes together
    config.json            the base run spec and the members

With several processes each trains, writes and evaluates the members held by its devices;
process 0 prepares the folder and writes the pooled outputs once all are done.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import math
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import flax.struct as struct
import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from crystalgan_jax.core import encoding, losses
from crystalgan_jax.materials import evaluation, io
from crystalgan_jax.pipeline import runner
from crystalgan_jax import train
from crystalgan_jax.train.checkpoints import Checkpoints, signals_held

AXIS = "members"
WEIGHT_NAMES = tuple(f.name for f in dataclasses.fields(losses.Weights))  # l1..l7, occupancy
SWEEPABLE = tuple(f"l{i}" for i in range(1, 8))
# Members vmapped together on one CPU device (make_population_runner): 64 members of the
# paper configuration trained at 74 GFLOP/s in groups of 4 (76 in groups of 2) against 58
# all vmapped at once (benchmarks/population.py --epochs=100 --group=G, 2-core machine).
MEMBER_GROUP = 4


def member_group(platform: str) -> int | None:
    """Members vmapped together per device by default on ``platform`` ("cpu", "gpu", ...).

    :data:`MEMBER_GROUP` on a CPU, whose cache is what groups are for; ``None`` (all of
    a device's members in one vmap) on an accelerator, which a group of four leaves
    mostly idle: on one H100, 8 members in groups of 4 trained at 0.79 TFLOP/s, 64 in
    one vmap at 5.9 TFLOP/s in about the same steady time (benchmarks/population.py).
    """
    return MEMBER_GROUP if platform == "cpu" else None


# --- members ------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Member:
    """One run of the population: its seed, loss weights, and the weights that vary.

    Attributes:
      seed: PRNG seed, as ``RunSpec.seed`` of a single run.
      weights: l1..l7 and occupancy of this member.
      swept: names of the weights that differ between members (they name the folder).
    """

    seed: int
    weights: losses.Weights
    swept: tuple[str, ...] = ()

    def __post_init__(self):
        if not 0 <= self.seed <= runner.MAX_SEED:
            raise ValueError(f"seed must be an integer in [0, {runner.MAX_SEED}], "
                             f"got {self.seed}")

    @property
    def name(self) -> str:
        """Folder name: ``seed_3``, or ``seed_3_l5_0.1`` with the swept weights."""
        return "_".join([f"seed_{self.seed}"]
                        + [f"{k}_{getattr(self.weights, k):g}" for k in self.swept])

    def settings(self) -> dict[str, float | int]:
        return {"seed": self.seed, **{k: getattr(self.weights, k) for k in self.swept}}


def make_members(seeds: Sequence[int], weights: losses.Weights,
                 sweeps: dict[str, Sequence[float]] | None = None) -> tuple[Member, ...]:
    """One member per seed and combination of swept values (seed outermost).

    Args:
      seeds: PRNG seeds, distinct.
      weights: the weights every member starts from.
      sweeps: weight name (l1..l7) -> values; each combination is one member per seed.
    """
    sweeps = {k: list(v) for k, v in (sweeps or {}).items() if v}
    if not seeds:
        raise ValueError("a population needs at least one seed")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct, got {list(seeds)}")
    for name, values in sweeps.items():
        if name not in SWEEPABLE:
            raise ValueError(f"cannot sweep {name!r}; sweepable weights are {SWEEPABLE}")
        if len(set(values)) != len(values):
            raise ValueError(f"--sweep_{name}: values must be distinct, got {values}")
        if any(v < 0 for v in values):
            raise ValueError(f"--sweep_{name}: weights must be >= 0, got {values}")
    names = tuple(sweeps)
    members = []
    for seed in seeds:
        for combo in itertools.product(*sweeps.values()):
            w = dataclasses.replace(weights, **dict(zip(names, map(float, combo))))
            members.append(Member(int(seed), w, names))
    return tuple(members)


@dataclasses.dataclass(frozen=True)
class PopulationSpec:
    """A population: the run spec all members share, and the members.

    ``base.output_dir`` is the population's folder; ``base.seed`` and ``base.train.weights``
    are replaced by each member's. ``base.resume``/``overwrite``/``evaluate``/
    ``checkpoint_every`` apply to the whole population.
    """

    base: runner.RunSpec
    members: tuple[Member, ...]

    def __post_init__(self):
        if not self.members:
            raise ValueError("a population needs at least one member")
        names = [m.name for m in self.members]
        if len(set(names)) != len(names):
            raise ValueError(f"members must differ in seed or swept weights, got {names}")

    def member_spec(self, member: Member) -> runner.RunSpec:
        """The single run this member equals (its own folder, seed and weights)."""
        train = dataclasses.replace(self.base.train, weights=member.weights)
        return dataclasses.replace(self.base, train=train, seed=member.seed,
                                   output_dir=str(Path(self.base.output_dir) / "members"
                                                  / member.name))


# --- devices ------------------------------------------------------------------------------

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


# --- the compiled population --------------------------------------------------------------

@struct.dataclass
class PopulationState:
    """Stacked member states ``[P]`` and the epoch they all reached (replicated scalar)."""

    members: train.TrainState
    epoch: jax.Array


def weight_rows(members: Sequence[Member]) -> np.ndarray:
    """``[S, 8]`` float32: each member's :data:`WEIGHT_NAMES`."""
    return np.array([[getattr(m.weights, k) for k in WEIGHT_NAMES] for m in members],
                    np.float32)


def static_config(cfg: train.TrainConfig, members: Sequence[Member]) -> train.TrainConfig:
    """The configuration that decides the program's shape: l7 is the members' largest.

    So the clash term is in the program (and its metric logged) iff some member uses it.
    """
    l7 = max(m.weights.l7 for m in members)
    return dataclasses.replace(cfg, weights=dataclasses.replace(cfg.weights, l7=l7))


def traced_weights(row: jax.Array, cfg: train.TrainConfig) -> losses.Weights:
    """One member's weights ``[8]`` as traced scalars; l7 stays 0 where no member uses it."""
    w = losses.Weights(*(row[i] for i in range(len(WEIGHT_NAMES))))
    return w if cfg.weights.l7 > 0 else dataclasses.replace(w, l7=0.0)


def make_population_runner(stage: train.Stage, nets: train.Networks,
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


def init_population(members: Sequence[Member], nets: train.Networks,
                    cfg: train.TrainConfig, sharding: MemberSharding) -> PopulationState:
    """Fresh states of every member (``PRNGKey(seed)``, as a single run), sharded."""
    seeds = sharding.pad(np.array([m.seed for m in members], np.uint32))
    init = jax.jit(jax.vmap(lambda s: train.init_state(jax.random.PRNGKey(s), nets, cfg)),
                   out_shardings=sharding.members)
    states = init(sharding.put(seeds, sharding.members))
    return PopulationState(states, sharding.put(np.int32(0), sharding.replicated))


def _stage_data(stage: str, states: train.TrainState, nets: train.Networks,
                x: encoding.Crystal, y: encoding.Crystal, sharding: MemberSharding) -> tuple:
    """Each member's domains for ``stage`` ``[P, ...]`` (stage 3's depend on its stage 1)."""
    fn = jax.vmap(lambda s, x, y: train.stage_data(stage, s, nets, x, y),
                  in_axes=(0, None, None))
    return jax.jit(fn, out_shardings=sharding.members)(states, x, y)


def _generate(states: train.TrainState, nets: train.Networks, cfg: train.TrainConfig,
              x: encoding.Crystal, y: encoding.Crystal, sharding: MemberSharding) -> dict:
    """:func:`train.generate` of every member, with the key a single run uses."""
    fn = jax.vmap(lambda s, x, y: train.generate(s, nets, cfg, x, y,
                                                    jax.random.fold_in(s.key, 1)),
                  in_axes=(0, None, None))
    return jax.jit(fn, out_shardings=sharding.members)(states, x, y)


# --- one population end to end ------------------------------------------------------------

@dataclasses.dataclass
class PopulationResult:
    """What :func:`run` leaves in memory on this process (all of it is also on disk).

    ``metrics`` and ``reports`` cover this process's members; ``pooled`` is the pooled
    report (process 0 only, with evaluation).
    """

    output_dir: Path
    members: tuple[Member, ...]
    sharding: MemberSharding
    state: PopulationState
    metrics: dict[int, list[dict]]
    reports: dict[int, dict | None]
    pooled: dict | None


_BARRIERS = itertools.count()  # every process passes the same barriers in the same order


def _barrier(name: str) -> None:
    """Waits until every process gets here (no-op with one process).

    Uses the coordination service's barrier, which needs no collective: the first
    collective between CPU processes sets up a gloo context that gives up after 30 s, and
    on a loaded machine one process can reach the first barrier that much later (it
    reads and checks the data files itself). Falls back to a device sync where JAX has no
    such client.
    """
    if jax.process_count() == 1:
        return
    from jax._src import distributed  # the client jax.distributed.initialize made

    client = getattr(distributed.global_state, "client", None)
    if client is None or not hasattr(client, "wait_at_barrier"):
        multihost_utils.sync_global_devices(name)
        return
    client.wait_at_barrier(f"crystalgan_jax/{next(_BARRIERS)}/{name}", 30 * 60 * 1000)


def _config_json(spec: PopulationSpec, layout, ah, bh, sharding: MemberSharding) -> dict:
    config = runner._config_json(spec.base, layout, ah, bh)
    config["spec"].pop("seed")
    config["members"] = [{"name": m.name, "seed": m.seed,
                          "weights": dataclasses.asdict(m.weights)} for m in spec.members]
    config["processes"] = jax.process_count()
    config["padded_members"] = sharding.padded
    return config


def _check_resumable(path: Path, config: dict) -> None:
    """runner's check of the shared settings, then the members must be the same."""
    runner._check_resumable(path, config)
    if not path.exists():
        return
    saved = json.loads(path.read_text())
    if saved.get("members") != config["members"]:
        raise runner.ResumeMismatchError(
            f"{path}: cannot resume, the population was made with other members (seeds or "
            "swept weights); use the same flags, or --overwrite")
    if saved.get("padded_members") != config["padded_members"]:
        # the checkpoint holds the padded member axis; another device count pads otherwise
        raise runner.ResumeMismatchError(
            f"{path}: cannot resume, the member axis was padded to "
            f"{saved.get('padded_members')} rows over {len(saved.get('devices', []))} "
            f"device(s), here it is {config['padded_members']} over "
            f"{len(config['devices'])}; resume with as many devices")


def run(spec: PopulationSpec, log: Callable[[str], None] | None = None, on_trace=None,
        extra_files: dict[str, str] | None = None,
        devices: Sequence[jax.Device] | None = None,
        stop: threading.Event | None = None,
        until_epoch: int | None = None) -> PopulationResult | None:
    """Trains every member of ``spec`` in one program and writes every output.

    Args:
      spec: the shared run settings and the members.
      log: receives progress lines (default: stderr; prefixed by the process index when
        there are several).
      on_trace: called with the stage name whenever a stage's epochs are traced.
      extra_files: file name -> text, written into the population folder (process 0).
      devices: the mesh's devices (default: all devices of all processes).
      stop: once set, training stops before its next chunk as on Ctrl-C (the state is
        saved, :class:`runner.Interrupted` raised): how a run in another thread is
        interrupted, as signals reach the main thread only.
      until_epoch: train only up to this global epoch (e.g. ``epochs``: stage 1), save
        the state there and return None without writing outputs; a later run with
        ``resume`` goes on from it (experiments/table2.py shares stage 1 this way).
    """
    if log is None:
        prefix = f"[process {jax.process_index()}] " if jax.process_count() > 1 else ""
        log = lambda msg: print(prefix + msg, file=sys.stderr, flush=True)  # noqa: E731
    base = spec.base
    if any(m.weights.l7 > 0 for m in spec.members) and not any(base.train.clash_radii):
        radii = runner.covalent_radii(base.element_a, base.element_b)
        spec = dataclasses.replace(spec, base=dataclasses.replace(
            base, train=dataclasses.replace(base.train, clash_radii=radii)))
        base = spec.base
    cfg = static_config(base.train, spec.members)
    sharding = MemberSharding.over(len(spec.members), devices)
    out = Path(base.output_dir)
    runner.check_output(base)
    ah, bh = runner.load_domains(base, log)
    with contextlib.ExitStack() as held:
        held.enter_context(runner._signals_interrupt())  # SIGTERM saves like Ctrl-C
        if jax.process_index() == 0:  # one lock for the folder all processes share
            held.enter_context(runner.lock_output(out, log))
        return _run_locked(spec, base, cfg, sharding, ah, bh, log, on_trace, extra_files, stop,
                           until_epoch)


def _run_locked(spec: PopulationSpec, base: runner.RunSpec, cfg: train.TrainConfig,
                sharding: "MemberSharding", ah: io.Domain, bh: io.Domain,
                log: Callable[[str], None], on_trace, extra_files,
                stop: threading.Event | None = None,
                until_epoch: int | None = None) -> "PopulationResult | None":
    layout = encoding.Layout.fit(base.element_a, base.element_b, ah.structures + bh.structures,
                                 n_h=base.n_h, n_a=base.n_metal, n_b=base.n_metal)

    def encode(domain: io.Domain) -> encoding.Crystal:
        return encoding.encode_batch(domain.structures, layout, sources=domain.sources,
                                     dtype=np.float32)

    x_host, y_host = encode(ah), encode(bh)
    x, y = (sharding.put(c, sharding.replicated) for c in (x_host, y_host))
    lattices = np.concatenate([x_host.lattice, y_host.lattice])
    nets = train.Networks.build(layout.rows, train.length_scale(lattices), cfg)

    out = Path(base.output_dir)
    if jax.process_index() == 0 or not base.overwrite:
        # process 0 deletes (--overwrite); every process refuses a folder holding a run
        # without --resume, so that none waits at the barrier for one that stopped. The
        # folder may not exist yet for a process that gets here before process 0 made it.
        out.mkdir(parents=True, exist_ok=True)
        runner._prepare_output(base, log)
    _barrier("population: output folder ready")
    out.mkdir(parents=True, exist_ok=True)
    local = sharding.local_members()
    member_dirs = {i: out / "members" / spec.members[i].name for i in local}

    state = init_population(spec.members, nets, cfg, sharding)
    weights = sharding.put(sharding.pad(weight_rows(spec.members)), sharding.members)
    stage_ends = [(i + 1) * cfg.epochs for i in range(len(cfg.stages))]
    ckpt = Checkpoints(out / "checkpoints", every=base.checkpoint_every, stage_ends=stage_ends,
                       keep=[cfg.epochs] if cfg.stages[0] == "stage1" else [], log=log)
    config = _config_json(spec, layout, ah, bh, sharding)
    metrics: dict[int, list[dict]] = {i: [] for i in local}
    if base.resume and ckpt.latest_step() is not None:
        _check_resumable(out / "config.json", config)
        state = ckpt.restore(state)
        for i in local:
            metrics[i] = runner._read_metrics(member_dirs[i] / "metrics.jsonl",
                                              int(state.epoch), log)
        log(f"resumed {len(spec.members)} members from epoch {int(state.epoch)} in "
            f"{ckpt.directory}")
    elif base.resume:
        log(f"nothing to resume in {ckpt.directory}: starting from epoch 0")
    _barrier("population: resumable checked")
    if jax.process_index() == 0:
        (out / "config.json").write_text(json.dumps(config, indent=2))
        for name, text in (extra_files or {}).items():
            (out / name).write_text(text)
    for i in local:
        member_dirs[i].mkdir(parents=True, exist_ok=True)
        (member_dirs[i] / "metrics.jsonl").write_text(
            "".join(json.dumps(r) + "\n" for r in metrics[i]))
        member_config = runner._config_json(spec.member_spec(spec.members[i]), layout, ah, bh)
        (member_dirs[i] / "config.json").write_text(json.dumps(member_config, indent=2))
    log(f"{len(spec.members)} members ({len(local)} on this process) on "
        f"{len(sharding.mesh.devices)} device(s), padded to {sharding.padded}; "
        f"{len(ah)} {base.element_a}-H and {len(bh)} {base.element_b}-H structures; method "
        f"{cfg.method}, {cfg.epochs} epochs per stage")
    try:
        state = train_stages(base, cfg, out, member_dirs, x, y, nets, state, weights,
                             train.penalty_shifts(lattices, cfg), sharding, metrics, ckpt,
                             log, on_trace, stop, until_epoch)
        if until_epoch is not None and until_epoch < len(cfg.stages) * cfg.epochs:
            ckpt.save(state, force=True)  # (a no-op where this epoch is saved already)
            return None
    finally:
        ckpt.close()

    generated = _generate(state.members, nets, cfg, x, y, sharding)
    # each array to the host once, not once per member (S^2 copies from an accelerator)
    leaves, treedef = jax.tree_util.tree_flatten(generated)
    host = [local_rows(a) for a in leaves]
    reports: dict[int, dict | None] = {}
    if base.evaluate:
        from crystalgan_jax.materials import report as report_lib

        # the members share their training data: its evaluations are computed once
        criteria = runner.report_criteria(base)
        training_structures = ah.structures + bh.structures
        training_evaluations = report_lib.evaluate_training(
            training_structures, base.element_a, base.element_b, **criteria)
    for i in local:
        mine = jax.tree_util.tree_unflatten(treedef, [rows[i] for rows in host])
        files = runner.write_structures(mine, layout, member_dirs[i], log)
        reports[i] = None
        if base.evaluate:
            reports[i] = report_lib.write_run_report(
                member_dirs[i], files, training_structures, base.element_a, base.element_b,
                metrics[i], training_evaluations=training_evaluations, **criteria)
    _barrier("population: members written")
    pooled = None
    if base.evaluate and jax.process_index() == 0:
        pooled = write_pooled_report(out, spec.members, base.element_a, base.element_b)
        log(f"pooled: {pooled['counts']['unique']} unique strictly good structures from "
            f"{len(spec.members)} members in {out / 'candidates'}")
    _barrier("population: pooled report written")
    return PopulationResult(out, spec.members, sharding, state, metrics, reports, pooled)


def train_stages(base: runner.RunSpec, cfg: train.TrainConfig, out: Path,
                 member_dirs: dict[int, Path], x: encoding.Crystal, y: encoding.Crystal,
                 nets: train.Networks, state: PopulationState, weights: jax.Array,
                 shifts: jax.Array, sharding: MemberSharding, metrics: dict[int, list[dict]],
                 ckpt: Checkpoints, log: Callable[[str], None], on_trace=None,
                 stop: threading.Event | None = None, until: int | None = None
                 ) -> PopulationState:
    """:func:`runner.train_stages` for a population: every stage from ``state.epoch`` on.

    Each chunk's metrics are appended to each local member's ``metrics.jsonl`` before the
    state moves on, so Ctrl-C saves a state that the metrics files agree with.
    """
    files = {i: (d / "metrics.jsonl").open("a") for i, d in member_dirs.items()}
    epoch = int(state.epoch)
    try:
        for s_index, stage_name in enumerate(cfg.stages):
            start = s_index * cfg.epochs
            end = start + cfg.epochs if until is None else min(start + cfg.epochs, until)
            if epoch >= end:
                continue
            stage = train.STAGES[stage_name]
            data = _stage_data(stage_name, state.members, nets, x, y, sharding)
            sizes = [d.lattice.shape[1] for d in data]
            chunk = max(1, min(cfg.chunk_epochs, base.checkpoint_every, cfg.epochs))
            options = train.stage_compiler_options(  # each device trains all its members
                cfg, sizes, sharding.mesh.devices.flat[0].platform,
                members=sharding.padded // sharding.mesh.size)
            run_chunk = make_population_runner(stage, nets, cfg, shifts, sizes, sharding,
                                               on_trace, compiler_options=options)
            names = train.metric_names(stage, cfg)
            while epoch < end:
                if stop is not None and stop.is_set():
                    raise runner.Interrupted()  # saved below, as on Ctrl-C
                done = epoch - start
                n = runner.chunk_length(epoch, end, chunk, base.checkpoint_every)
                tic = time.perf_counter()
                active = sharding.put(np.arange(chunk) < n, sharding.replicated)
                new_members, chunk_metrics = run_chunk(state.members, weights, data, active)
                finite = bool(train.tree_all_finite((new_members, chunk_metrics)))
                rows = local_rows(chunk_metrics)
                rate = n / (time.perf_counter() - tic)
                if not finite:  # keep the last finite state, as a single run does
                    ckpt.save(state, force=True)
                    raise runner.DivergenceError(
                        f"training diverged: NaN or inf in {stage_name} within epochs "
                        f"{done + 1}..{done + n} of some member (see the members' "
                        f"metrics.jsonl). The last finite state (epoch {epoch}) is the "
                        f"checkpoint in {ckpt.directory} that --resume continues from.",
                        stage_name, done + 1, start + done + 1, epoch)
                new_state = PopulationState(
                    new_members, sharding.put(np.int32(epoch + n), sharding.replicated))
                with signals_held():  # the metrics on disk and the state move on together
                    for i, f in files.items():
                        runner.append_metric_rows(stage_name, names, rows[i][:n], start, done,
                                                  metrics[i], f)
                    epoch, state = epoch + n, new_state
                if metrics:
                    mean = {k: float(np.mean([m[-1][k] for m in metrics.values()]))
                            for k in names}
                    log(runner._format_progress(stage_name, done + n, cfg.epochs, mean, rate)
                        + f"  (mean of {len(metrics)} members)")
                ckpt.save(state)  # where the policies say: multiples of M, stage ends
    except KeyboardInterrupt as err:
        runner._save_interrupted(ckpt, state, err, log)
        raise
    finally:
        for f in files.values():
            f.close()
    return state


# --- the pooled report --------------------------------------------------------------------

COUNT_KEYS = ("generated", "ternary", "good_paper", "good_strict", "unique")


def write_pooled_report(out: Path, members: Sequence[Member], element_a: str,
                        element_b: str) -> dict[str, Any]:
    """``candidates/``, ``report.json`` and ``report.md`` from the members' reports.

    Every strictly good structure of every member is matched against all others
    (StructureMatcher, :func:`evaluation.unique_groups`); ``candidates/`` holds the first
    file of each group, named ``NNN_<member>_<direction>_<file>``.
    """
    rows, strict = [], []
    for index, m in enumerate(members):
        folder = out / "members" / m.name
        report = json.loads((folder / "report.json").read_text())
        rows.append({"member": m.name, "index": index, **m.settings(),
                     "counts": report["counts"]})
        for s in report["structures"]:
            if s["good_strict"]:
                path = folder / s["file"]
                strict.append({"member": m.name, "file": str(path.relative_to(out)),
                               "formula": s["formula"],
                               "spacegroup": s["spacegroup_symbol"],
                               "volume_per_atom_A3": s["volume_per_atom_A3"],
                               "min_distances_A": s["min_distances_A"],
                               "structure": io.read_structure(path)})
    labels = evaluation.unique_groups([s["structure"] for s in strict])
    candidates = out / "candidates"
    shutil.rmtree(candidates, ignore_errors=True)
    candidates.mkdir()
    groups: dict[int, list[dict]] = {}
    for s, label in zip(strict, labels):
        groups.setdefault(label, []).append(s)
    pooled_candidates = []
    for label, found in sorted(groups.items()):
        first = found[0]
        src = out / first["file"]
        stem = f"{label:03d}_{first['member']}_{'_'.join(Path(first['file']).parts[-2:])}"
        stem = stem.removesuffix(".vasp")
        shutil.copy(src, candidates / f"{stem}.vasp")
        shutil.copy(src.with_suffix(".cif"), candidates / f"{stem}.cif")
        pooled_candidates.append({
            "file": f"candidates/{stem}.vasp", "formula": first["formula"],
            "spacegroup": first["spacegroup"],
            "volume_per_atom_A3": first["volume_per_atom_A3"],
            "min_distances_A": first["min_distances_A"],
            "found_by": sorted({s["member"] for s in found}),
            "files": [s["file"] for s in found]})
    ranked = sorted(rows, key=lambda r: (-r["counts"]["unique"], -r["counts"]["good_strict"],
                                         -r["counts"]["good_paper"], r["index"]))
    totals = {k: sum(r["counts"][k] for r in rows) for k in COUNT_KEYS}
    totals["unique"] = len(groups)
    pooled = {"system": f"{element_a}-{element_b}-H", "members": ranked,
              "counts": totals, "candidates": pooled_candidates}
    (out / "report.json").write_text(json.dumps(pooled, indent=1))
    (out / "report.md").write_text(_pooled_markdown(pooled, members))
    return pooled


def _pooled_markdown(pooled: dict, members: Sequence[Member]) -> str:
    swept = members[0].swept
    lines = [f"# CrystalGAN population: {pooled['system']}, {len(members)} members", "",
             "Members ranked by unique strictly good structures (StructureMatcher groups "
             "within the member); each member's own report is in members/<name>/report.md.",
             "", "| rank | member | seed | " + "".join(f"{k} | " for k in swept)
             + "generated | ternary | good (paper) | good (strict) | unique |",
             "| ---: | --- | ---: | " + "---: | " * len(swept) + "---: | ---: | ---: | ---: | ---: |"]
    for rank, r in enumerate(pooled["members"], start=1):
        c = r["counts"]
        lines.append(f"| {rank} | {r['member']} | {r['seed']} | "
                     + "".join(f"{r[k]:g} | " for k in swept)
                     + " | ".join(str(c[k]) for k in COUNT_KEYS) + " |")
    t = pooled["counts"]
    lines += ["", f"All members together: {t['generated']} generated, {t['good_strict']} "
              f"strictly good, {t['unique']} unique across members (StructureMatcher).", "",
              "## Candidates for DFT (pooled)", ""]
    if not pooled["candidates"]:
        lines.append("No member produced a strictly good structure.")
    else:
        lines += ["One file per StructureMatcher group over all members, in candidates/.", "",
                  "| candidate | formula | space group | V/atom (A^3) | min distances (A) | "
                  "found by |", "| --- | --- | --- | ---: | --- | --- |"]
        for c in pooled["candidates"]:
            dists = ", ".join(f"{k} {v:.2f}" for k, v in c["min_distances_A"].items()
                              if v is not None)
            vol = c["volume_per_atom_A3"]
            lines.append(f"| {c['file']} | {c['formula']} | {c['spacegroup'] or '-'} | "
                         f"{'-' if vol is None else f'{vol:.2f}'} | {dists} | "
                         f"{', '.join(c['found_by'])} |")
    return "\n".join(lines) + "\n"
