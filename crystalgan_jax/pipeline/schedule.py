"""Table 2's rows as populations, scheduled over the devices: one population per method,
the stage 1 that several methods share trained once, the longest chains first.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import threading
import time
from pathlib import Path
from typing import Callable, Sequence

import jax

from crystalgan_jax.pipeline.folder import clear_run
from crystalgan_jax.pipeline.job import run as run_job
from crystalgan_jax.pipeline.spec import PopulationSpec, make_members
from crystalgan_jax.pipeline.tables import method_config, stderr_log, summarize_table2


# Relative cost of one method's population, for sharing the work out over devices
# (wall times of Table 2's rows on the 2-core machine, one device each: docs/results.md), and of
# the stage 1 that several methods share (:func:`stage1_group`).
COST = {"gan": 1.0, "discogan": 1.5, "nocons": 3.5, "crystalgan": 3.5,
        "crystalgan+clash": 6.5, "crystalgan_plus": 7.0}
STAGE1_COST = 1.4


def table2_specs(base, methods: Sequence[str], seeds: Sequence[int], out: Path, *,
                 clash_weight: float = 1.0, plus: dict | None = None) -> dict:
    """Method -> the population of its seeds in ``out/<method>`` (one compiled program per
    method); building them checks every seed and method.

    A row's runs are members that write as single runs do (``write_files="all"`` where
    ``base`` leaves it "auto", and their figures): the table's screening reads each run's
    structure files, and its reader reads each run's report.
    """

    specs = {}
    files = "all" if base.write_files == "auto" else base.write_files
    for method in methods:
        train_cfg = method_config(base.train, method, clash_weight=clash_weight, plus=plus)
        specs[method] = PopulationSpec(
            dataclasses.replace(base, output_dir=str(Path(out) / method), train=train_cfg,
                                write_files=files, member_figures=True),
            make_members(list(seeds), train_cfg.weights))
    return specs


@dataclasses.dataclass
class Job:
    """One population run of :func:`train_methods`: a method, or the stage 1 it shares."""

    name: str
    cost: float
    run: Callable  # (device or None, stop event) -> (job.run's result, wall s)
    after: tuple[str, ...] = ()  # jobs that must be done first
    priority: float = 0.0  # cost of the longest chain from here: the order jobs start in


def stage1_group(specs: dict) -> list[str]:
    """The methods whose stage 1 is one and the same training, in ``specs`` order.

    CrystalGAN with or without the constraints or the clash term differ only in l5, l6,
    l7 (and the clash radii), none of which stage 1 uses: with the same seeds their
    stage-1 runs are identical, so one is trained and the others start from its
    checkpoint (tests/test_population.py checks that this equals training each). With
    several processes nothing is shared: the checkpoint copy is not coordinated.
    """
    if jax.process_count() > 1:
        return []

    def key(spec):
        cfg = spec.base.train
        if cfg.method not in ("crystalgan", "nocons"):
            return None
        weights = dataclasses.replace(cfg.weights, l5=0.0, l6=0.0, l7=0.0)
        return (dataclasses.replace(cfg, method="crystalgan", weights=weights,
                                    clash_radii=(0.0, 0.0, 0.0)),
                tuple(m.seed for m in spec.members))

    keys = {m: key(spec) for m, spec in specs.items()}
    first = next((k for k in keys.values() if k is not None), None)
    group = [m for m, k in keys.items() if k is not None and k == first]
    return group if len(group) > 1 else []


def _resumed(spec):
    return dataclasses.replace(spec, base=dataclasses.replace(spec.base, resume=True,
                                                              overwrite=False))


def _start_from_stage1(leader: Path, follower, epochs: int) -> None:
    """``follower``'s folder set up to resume from ``leader``'s stage-1 checkpoint (and
    its members' metrics), unless it holds a checkpoint of its own (``--resume``)."""

    out = Path(follower.base.output_dir)
    if follower.base.resume and any((out / "checkpoints").glob("[0-9]*")):
        return
    if out.exists():  # --overwrite (check_output refused a run otherwise)
        clear_run(out)
    shutil.copytree(leader / "checkpoints" / str(epochs), out / "checkpoints" / str(epochs))
    for member in follower.members:
        (out / "members" / member.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(leader / "members" / member.name / "metrics.jsonl",
                    out / "members" / member.name / "metrics.jsonl")


def train_population(name: str, spec, log: Callable[[str], None], device=None, stop=None,
                     until_epoch=None):
    """``job.run`` of ``spec`` (on ``device`` alone where given); returns
    (its result, wall seconds)."""
    where = f" on {device}" if device is not None else ""
    log(f"== {name}, seeds {', '.join(str(m.seed) for m in spec.members)}{where}")
    tic = time.perf_counter()
    prefix = f"[process {jax.process_index()}] " if jax.process_count() > 1 else ""
    result = run_job(spec, devices=None if device is None else [device], stop=stop,
                            until_epoch=until_epoch,
                            log=lambda msg: log(f"{prefix}[{name}] {msg}"))
    return result, round(time.perf_counter() - tic, 1)


def make_jobs(specs: dict, log: Callable[[str], None] = stderr_log) -> list[Job]:
    """One job per method; where methods share stage 1, a job for it that they wait for."""
    group = stage1_group(specs)
    jobs = []
    if group:
        leader = specs[group[0]]
        epochs = leader.base.train.epochs
        jobs.append(Job("stage1", STAGE1_COST,
                        lambda device, stop: train_population(
                            f"stage 1 of {', '.join(group)}", leader, log, device, stop,
                            until_epoch=epochs)))
    for method, spec in specs.items():
        if method not in group:
            jobs.append(Job(method, COST[method],
                            lambda device, stop, m=method, sp=spec: train_population(
                                m, sp, log, device, stop)))
            continue

        def follow(device, stop, m=method, sp=spec):
            leader_dir = Path(specs[group[0]].base.output_dir)
            if m != group[0]:
                _start_from_stage1(leader_dir, sp, sp.base.train.epochs)
            log(f"[{m}] stage 1 from {leader_dir} (the same training)")
            return train_population(m, _resumed(sp), log, device, stop)
        jobs.append(Job(method, COST[method] - STAGE1_COST, follow, after=("stage1",)))
    for job in jobs:
        job.priority = job.cost + max((j.cost for j in jobs if job.name in j.after), default=0)
    return jobs


def run_jobs(jobs: Sequence[Job], workers: Sequence) -> dict:
    """Job name -> its result. Jobs run on ``workers`` (devices, or [None]: all devices
    for each job), longest chain first, a job once those it waits for are done; the
    first worker in the calling thread (signals reach the main thread), the others in
    threads. Ctrl-C or an error in one stops the others before their next chunk."""
    pending, done, results, errors = list(jobs), set(), {}, []
    stop, changed = threading.Event(), threading.Condition()

    def next_job() -> Job | None:
        with changed:
            while pending and not stop.is_set():
                ready = [j for j in pending if set(j.after) <= done]
                if ready:
                    job = max(ready, key=lambda j: j.priority)
                    pending.remove(job)
                    return job
                changed.wait()
            return None

    def work(device) -> None:
        try:
            while (job := next_job()) is not None:
                results[job.name] = job.run(device, stop)
                with changed:
                    done.add(job.name)
                    changed.notify_all()
        except BaseException as err:  # Ctrl-C included: the others stop and save
            errors.append(err)
            stop.set()
            with changed:
                changed.notify_all()

    threads = [threading.Thread(target=work, args=(d,), name=f"tables-{d}")
               for d in workers[1:]]
    for thread in threads:
        thread.start()
    work(workers[0])
    for thread in threads:
        thread.join()
    if errors:  # an interrupt first: the exit code says which signal
        raise next((e for e in errors if isinstance(e, KeyboardInterrupt)), errors[0])
    return results


def train_methods(specs: dict, log: Callable[[str], None] = stderr_log) -> dict:
    """Job name (each method, and "stage1" where some share it) -> (its trained
    population, or None for the shared stage 1; wall seconds of the job).

    A method's seeds are split over all devices when they divide evenly. Otherwise
    (3 seeds on a 2-core machine) a device would train padding, and the jobs run side by
    side instead, one device each (:func:`run_jobs`). Methods that share stage 1 wait
    for it.
    """
    devices = jax.devices()
    n_seeds = len(next(iter(specs.values())).members)
    side_by_side = not (jax.process_count() > 1 or len(devices) == 1 or len(specs) == 1
                        or n_seeds % len(devices) == 0)
    return run_jobs(make_jobs(specs, log), devices if side_by_side else [None])


def table2_rows(specs: dict, trained: dict) -> dict[str, dict] | None:
    """Table 2's rows of the trained methods (process 0; None on the others): every
    member's counts from its report.json, the summary, the wall time and, for the
    methods that shared stage 1, where it was trained."""
    if jax.process_index() != 0:
        return None
    group = stage1_group(specs)
    table = {}
    for method in specs:
        result, wall = trained[method]
        runs = []
        for m in result.members:
            folder = result.output_dir / "members" / m.name
            runs.append({"seed": m.seed, "output_dir": str(folder), "counts": json.loads(
                (folder / "report.json").read_text())["counts"]})
        table[method] = {"runs": runs, "wall_s": wall,
                         "summary": summarize_table2([r["counts"] for r in runs])}
        if method in group:  # its wall time is stage 3 and the outputs
            table[method]["stage1"] = {"trained_in": group[0], "wall_s": trained["stage1"][1]}
    return table
