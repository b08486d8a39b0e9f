"""A run end to end, single or population: inputs -> stages (with checkpoints) -> outputs.

:func:`run` is what ``experiments/train.py`` calls with its parsed flags. A single run is
a population of one member whose folder is the run's own
(:meth:`~crystalgan_jax.pipeline.spec.PopulationSpec.single`): both take every step
here, and differ only in the compiled program (:mod:`crystalgan_jax.pipeline.trainers`).

A run's (or member's) folder holds ``metrics.jsonl`` (one line per epoch and stage with
every logged loss), ``config.json``, and what :mod:`crystalgan_jax.pipeline.outputs`
writes. A population's folder::

    members/<name>/        one member, in the layout of a single run; <name> is e.g.
                           seed_3 or seed_3_l5_0.1 (swept weights only)
    candidates/, report.*  the pooled outputs (:mod:`crystalgan_jax.pipeline.pooled`)
    checkpoints/           Orbax checkpoints of the whole population
    config.json            the base run spec and the members

Nothing is lost on a crash, Ctrl-C or SIGTERM: checkpoints are synchronous, and an
interrupt saves the state of the last finished chunk before it propagates. The folder
belongs to one run: it is locked for the whole run, a folder holding anything but a run of
ours is refused, and training that produces NaN or inf stops
(:class:`~crystalgan_jax.pipeline.errors.DivergenceError`) with the last finite state as
the checkpoint ``--resume`` takes. With several processes each trains, writes and
evaluates the members held by its devices; process 0 prepares the folder and writes the
pooled outputs once all are done.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import itertools
import json
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import jax
from absl import logging

from crystalgan_jax.core import encoding
from crystalgan_jax.pipeline import folder, loop, outputs, pooled, provenance, rounds
from crystalgan_jax.pipeline.prepare import Prepared, prepare, with_clash_radii
from crystalgan_jax.pipeline.spec import Member, PopulationSpec, RunSpec
from crystalgan_jax.pipeline.trainers import PopulationTrainer, SingleTrainer
from crystalgan_jax import train
from crystalgan_jax.train import population
from crystalgan_jax.train.checkpoints import Checkpoints


@dataclasses.dataclass
class RunResult:
    """What a single run leaves in memory (all of it is also on disk)."""

    output_dir: Path
    layout: encoding.Layout
    state: train.TrainState
    files: dict[str, dict[str, list[Path]]]
    metrics: list[dict]
    report: dict | None
    spec: RunSpec | None = None  # as trained (learned settings filled in)
    timing: dict[str, float] = dataclasses.field(default_factory=dict)  # seconds by phase


@dataclasses.dataclass
class PopulationResult:
    """What a population leaves in memory on this process (all of it is also on disk).

    ``metrics``, ``files`` and ``reports`` cover this process's members; ``pooled`` is the
    pooled report (process 0 only, with evaluation).
    """

    output_dir: Path
    members: tuple[Member, ...]
    sharding: population.MemberSharding
    state: population.PopulationState
    metrics: dict[int, list[dict]]
    reports: dict[int, dict | None]
    pooled: dict | None
    files: dict[int, dict] = dataclasses.field(default_factory=dict)
    spec: PopulationSpec | None = None  # as trained (learned settings filled in)
    timing: dict[str, float] = dataclasses.field(default_factory=dict)  # seconds by phase


def run(spec: RunSpec | PopulationSpec, log: Callable[[str], None] | None = None,
        on_trace=None, extra_files: dict[str, str] | None = None,
        devices: Sequence[jax.Device] | None = None, stop: threading.Event | None = None,
        until_epoch: int | None = None) -> RunResult | PopulationResult | None:
    """Trains ``spec`` (a single run, or a population) and writes every output.

    Every input is read and checked, and the output folder checked and locked, before any
    training. SIGTERM is handled like Ctrl-C while it runs.

    Args:
      spec: what to train on and where to write; a :class:`RunSpec` is the population of
        one member :meth:`PopulationSpec.single`.
      log: receives progress lines (default: absl ``logging.info``, so ``--verbosity``
        and ``--log_dir`` of a script apply; prefixed by the process index when there are
        several processes).
      on_trace: called with the stage name whenever a stage's epochs are traced.
      extra_files: file name -> text, written into the output folder before training
        (train.py records its flags this way, so a crashed run still has them).
      devices: a population's mesh (default: all devices of all processes).
      stop: once set, training stops before its next chunk as on Ctrl-C (the state is
        saved, :class:`~crystalgan_jax.pipeline.errors.Interrupted` raised): how a run in
        another thread is interrupted, as signals reach the main thread only.
      until_epoch: train only up to this global epoch, save the state there and return
        None without writing outputs; a later run with ``resume`` goes on from it
        (experiments/table2.py shares stage 1 this way).

    Returns:
      :class:`RunResult` for a single run, :class:`PopulationResult` for a population.

    Raises:
      io.StructureFileError: bad input (file, line or row, what is wrong).
      OutputDirError, RunLockedError, FileExistsError, ResumeMismatchError: the output
        folder cannot be used by this run.
      CheckpointError: ``resume`` and no intact checkpoint is left.
      DivergenceError: training produced NaN or inf.
      Interrupted / KeyboardInterrupt: SIGTERM / SIGINT, after saving.
    """
    pop = spec if isinstance(spec, PopulationSpec) else PopulationSpec.single(spec)
    if log is None:
        prefix = f"[process {jax.process_index()}] " if jax.process_count() > 1 else ""
        log = lambda msg: logging.info("%s%s", prefix, msg)  # noqa: E731
    pop = with_clash_radii(pop)
    folder.check_output(pop.base)
    prepared = prepare(pop.base, log)
    pop = dataclasses.replace(pop, base=prepared.spec)
    trainer = (SingleTrainer(pop, prepared) if pop.single_run
               else PopulationTrainer(pop, prepared, devices))
    out = Path(pop.base.output_dir)
    with contextlib.ExitStack() as held:
        held.enter_context(folder.signals_interrupt())  # SIGTERM saves like Ctrl-C
        if jax.process_index() == 0:  # one lock for the folder all processes share
            held.enter_context(folder.lock_output(out, log))
        return _run_locked(pop, prepared, trainer, log, on_trace, extra_files, stop,
                           until_epoch)


def config_json(spec: RunSpec, prepared: Prepared) -> dict:
    """A run's (or member's) ``config.json``: its spec, layout, inputs and provenance."""
    ah, bh = prepared.ah, prepared.bh
    return {"spec": dataclasses.asdict(spec), "layout": dataclasses.asdict(prepared.layout),
            "sources_ah": list(ah.sources), "sources_bh": list(bh.sources),
            "jax": jax.__version__, "devices": [str(d) for d in jax.devices()],
            "versions": provenance.versions(), "code": provenance.git_commit(),
            "inputs_sha256": provenance.input_hashes(list(ah.sources) + list(bh.sources)
                                                     + list(prepared.guide_sources))}


def population_config(pop: PopulationSpec, prepared: Prepared,
                      sharding: population.MemberSharding) -> dict:
    """A population's ``config.json``: the base spec (no seed), the members, the padding."""
    config = config_json(pop.base, prepared)
    config["spec"].pop("seed")
    config["members"] = [{"name": m.name, "seed": m.seed,
                          "weights": dataclasses.asdict(m.weights)} for m in pop.members]
    config["processes"] = jax.process_count()
    config["padded_members"] = sharding.padded
    return config


_BARRIERS = itertools.count()  # every process passes the same barriers in the same order


def barrier(name: str) -> None:
    """Waits until every process gets here (no-op with one process).

    Uses the coordination service's barrier, which needs no collective: the first
    collective between CPU processes sets up a context that gives up after 30 s, and on a
    loaded machine one process can reach the first barrier that much later. Falls back to
    a device sync where JAX has no such client.
    """
    if jax.process_count() == 1:
        return
    from jax._src import distributed  # the client jax.distributed.initialize made
    from jax.experimental import multihost_utils

    client = getattr(distributed.global_state, "client", None)
    if client is None or not hasattr(client, "wait_at_barrier"):
        multihost_utils.sync_global_devices(name)
        return
    client.wait_at_barrier(f"crystalgan_jax/{next(_BARRIERS)}/{name}", 30 * 60 * 1000)


def _after(futures: Iterable[concurrent.futures.Future], fun: Callable, *args) -> Any:
    """``fun(*args)`` once every one of ``futures`` is done, whatever its outcome."""
    concurrent.futures.wait(list(futures))
    return fun(*args)


def _run_locked(pop: PopulationSpec, prepared: Prepared, trainer, log: Callable[[str], None],
                on_trace, extra_files: dict[str, str] | None,
                stop: threading.Event | None, until_epoch: int | None
                ) -> RunResult | PopulationResult | None:
    base, cfg = pop.base, trainer.cfg
    out = Path(base.output_dir)
    tic = time.perf_counter()
    if jax.process_index() == 0 or not base.overwrite:
        # process 0 deletes (--overwrite); every process refuses a folder holding a run
        # without --resume, so that none waits at the barrier for one that stopped
        out.mkdir(parents=True, exist_ok=True)
        folder.prepare_output(base, log)
    barrier("output folder ready")
    local = trainer.local_members()
    member_dirs = {i: pop.member_dir(pop.members[i]) for i in local}
    stage_ends = [(i + 1) * cfg.epochs for i in range(len(cfg.trained_stages))]
    ckpt = Checkpoints(out / "checkpoints", every=base.checkpoint_every, stage_ends=stage_ends,
                       keep=[cfg.epochs] if cfg.trained_stages[0] == "stage1" else [], log=log)
    # a resumed run past a stage's end does not compile that stage (should its newest
    # checkpoint prove damaged, the loop compiles what it then needs)
    resumed = (ckpt.latest_step() or 0) if base.resume else 0
    todo = [name for name, end in zip(cfg.trained_stages, stage_ends) if resumed < end]
    # before the compile threads start: its git calls and file reads wait for the GIL
    # at every step while another thread traces
    config = (config_json(base, prepared) if pop.single_run
              else population_config(pop, prepared, trainer.sharding))
    lowerer = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="lower")
    compiling = loop.compile_stages(trainer, todo, trainer.abstract_state(),
                                    loop.chunk_epochs(cfg, base.checkpoint_every), on_trace,
                                    lowerer)
    # the report's inputs on the tracing thread once every stage is compiled: they then
    # take the core that the training leaves, and the outputs no longer wait for them
    inputs = (lowerer.submit(_after, compiling.values(), outputs.report_inputs, base,
                             prepared.ah, prepared.bh) if base.evaluate else None)
    lowerer.shutdown(wait=False)
    state = trainer.init_state()
    metrics: dict[int, list[dict]] = {i: [] for i in local}
    try:
        if base.resume and ckpt.latest_step() is not None:
            folder.check_resumable(out / "config.json", config)
            state = ckpt.restore(state)
            epoch = trainer.epoch(state)
            metrics = {i: folder.read_metrics(member_dirs[i] / "metrics.jsonl", epoch, log)
                       for i in local}
            log(f"resumed {'' if pop.single_run else f'{len(pop.members)} members '}"
                f"from epoch {epoch} in {ckpt.directory}")
        else:
            if base.resume:
                log(f"nothing to resume in {ckpt.directory}: starting from epoch 0")
            if base.refine_from:
                state = rounds.start_from(pop, trainer, state, log)
        barrier("resumable checked")
        if jax.process_index() == 0:
            (out / "config.json").write_text(json.dumps(config, indent=2))
            for name, text in (extra_files or {}).items():
                (out / name).write_text(text)
        for i in local:
            member_dirs[i].mkdir(parents=True, exist_ok=True)
            (member_dirs[i] / "metrics.jsonl").write_text(
                "".join(json.dumps(r, allow_nan=False) + "\n" for r in metrics[i]))
            if not pop.single_run:
                member = config_json(pop.member_spec(pop.members[i]), prepared)
                (member_dirs[i] / "config.json").write_text(json.dumps(member, indent=2))
        ah, bh, layout = prepared.ah, prepared.bh, prepared.layout
        who = ("" if pop.single_run else
               f"{len(pop.members)} members ({len(local)} on this process) on "
               f"{len(trainer.sharding.mesh.devices)} device(s), padded to "
               f"{trainer.sharding.padded}; ")
        log(f"{who}{len(ah)} {base.element_a}-H and {len(bh)} {base.element_b}-H structures; "
            f"rows H/A/B = {layout.rows}; method {cfg.method}, {cfg.epochs} epochs per stage")
        names = None if pop.single_run else {i: pop.members[i].name for i in local}
        state = loop.train_stages(trainer, cfg, base.checkpoint_every, member_dirs, state,
                                  metrics, ckpt, log, on_trace, compiling, stop, until_epoch,
                                  names)
        if until_epoch is not None and until_epoch < stage_ends[-1]:
            ckpt.save(state, force=True)  # (a no-op where this epoch is saved already)
            return None
    finally:
        ckpt.close()

    epoch = trainer.epoch(state)
    timing = {"training": round(time.perf_counter() - tic, 2)}  # compilation included
    if base.resume and folder.outputs_written(out) == epoch == stage_ends[-1]:
        log(f"training ended and every output of epoch {epoch} is in {out}: kept")
        result = _written_result(pop, prepared, trainer, state, metrics, member_dirs)
        result.timing = timing
        return result
    if jax.process_index() == 0:
        folder.unmark_outputs(out)
    generated = trainer.generate(state)
    if pop.single_run:
        files, report = outputs.write_member_outputs(base, generated[0], layout, ah, bh, out,
                                                     metrics[0], log, inputs)
        timing["outputs"] = round(time.perf_counter() - tic - timing["training"], 2)
        folder.mark_outputs_written(out, epoch)
        return RunResult(out, layout, state, files, metrics[0], report, base, timing)
    jobs = [(pop.member_spec(pop.members[i]), generated.pop(i), member_dirs[i], metrics[i])
            for i in local]
    written = outputs.write_members(jobs, layout, ah, bh, log, inputs, base.output_workers)
    del jobs  # the samples are on disk now
    files = {i: f for i, (f, _) in zip(local, written)}
    reports = {i: r for i, (_, r) in zip(local, written)}
    timing["outputs"] = round(time.perf_counter() - tic - timing["training"], 2)
    barrier("members written")
    pooled_report = None
    if base.evaluate and jax.process_index() == 0:
        ready = inputs.result() if isinstance(inputs, concurrent.futures.Future) else inputs
        pooled_report = pooled.write_pooled_report(
            out, pop.members, base.element_a, base.element_b,
            training=ready.training if ready else None,
            criteria=ready.options if ready else None)
        log(f"pooled: {pooled_report['counts']['unique']} unique strictly good structures "
            f"from {len(pop.members)} members in {out / 'candidates'}")
    if jax.process_index() == 0:
        folder.mark_outputs_written(out, epoch)
    timing["pooling"] = round(time.perf_counter() - tic - sum(timing.values()), 2)
    barrier("pooled report written")
    return PopulationResult(out, pop.members, trainer.sharding, state, metrics, reports,
                            pooled_report, files, pop, timing)


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def _written_result(pop: PopulationSpec, prepared: Prepared, trainer, state,
                    metrics: dict[int, list[dict]], member_dirs: dict[int, Path]
                    ) -> RunResult | PopulationResult:
    """The result of a finished run whose outputs are on disk (read back, not rewritten)."""
    out = Path(pop.base.output_dir)
    reports = {i: _read_json(d / "report.json") for i, d in member_dirs.items()}
    if pop.single_run:
        return RunResult(out, prepared.layout, state, {}, metrics[0], reports[0], pop.base)
    pooled_report = _read_json(out / "report.json") if jax.process_index() == 0 else None
    return PopulationResult(out, pop.members, trainer.sharding, state, metrics, reports,
                            pooled_report, {}, pop)
