"""One training run end to end: data -> stages (with checkpoints) -> structure files.

:func:`run` is what ``experiments/train.py`` calls with its parsed flags. It writes into
``output_dir``:

* ``structures/stage1/{AHB,BHA}/NNN.vasp`` and ``.cif`` (step-1 outputs) and
  ``structures/final/{AHB,BHA}/NNN.vasp`` and ``.cif`` (the generated ternaries; the GAN
  baseline writes ``final/GAN``), real element symbols;
* ``metrics.jsonl``: one line per epoch and stage with every logged loss;
* ``checkpoints/`` (Orbax; see :mod:`crystalgan_jax.train.checkpoints`);
* ``config.json``, and the report of :mod:`crystalgan_jax.materials.report` (``report.json``,
  ``report.md``, plots).

Nothing is lost on a crash, Ctrl-C or SIGTERM: checkpoints are synchronous, and an
interrupt (SIGINT or SIGTERM, see :class:`Interrupted`) saves the state of the last
finished chunk of epochs before it propagates. The output folder belongs to one run: it
is locked for the whole run (:func:`lock_output`), a folder holding anything but a run
of ours is refused, and training that produces NaN or inf stops
(:class:`DivergenceError`) with the last finite state as the checkpoint ``--resume``
takes.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import errno
import fcntl
import json
import math
import os
import shutil
import signal
import socket
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from crystalgan_jax.core import cells, encoding
from crystalgan_jax.materials import io
from crystalgan_jax.pipeline import provenance
from crystalgan_jax import train
from crystalgan_jax.train.checkpoints import CheckpointError, Checkpoints, signals_held

# Rows a block is padded to at most unless n_h / n_metal raise it: every structure is
# padded to the largest one, so one big supercell makes every step pay for it (a 4x4x4
# PdH supercell took 17 GB and 435 s). The largest reference structure has 18 H, 6 metal.
MAX_BLOCK_ROWS = 32
# Seeds are PRNGKey seeds: jax folds larger ones onto this range (2**32 gives seed 0's run).
MAX_SEED = 2**32 - 1
LOCK_NAME = ".lock"
# Files whose presence makes a folder a run of ours (written before training starts).
RUN_MARKERS = ("config.json", "metrics.jsonl", "checkpoints")


class RunError(Exception):
    """A run that cannot start or go on; the message says why and what to do."""


class OutputDirError(RunError):
    """The output folder cannot be used (not ours, not creatable, not writable)."""


class RunLockedError(RunError):
    """Another live process holds the output folder's lock."""


class DivergenceError(RunError):
    """Training produced NaN or inf; the last finite state is checkpointed.

    Attributes:
      stage: stage name; epoch: epoch within the stage; global_epoch: over all stages;
      saved_epoch: the epoch of the checkpoint ``--resume`` continues from (or None).
    """

    def __init__(self, message: str, stage: str, epoch: int, global_epoch: int,
                 saved_epoch: int | None):
        super().__init__(message)
        self.stage, self.epoch = stage, epoch
        self.global_epoch, self.saved_epoch = global_epoch, saved_epoch


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM during a run; ``signum`` says which (exit code 128 + signum)."""

    def __init__(self, signum: int = signal.SIGINT):
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """What a run trains on and where it writes.

    Attributes:
      data_ah, data_bh: per domain, a folder of POSCAR/CIF files, an authors' ``.mat``
        file, or one file of structures that ASE reads (extxyz, .traj, an ASE database).
      element_a, element_b: the metals A and B.
      output_dir: where everything goes.
      train: hyperparameters.
      seed: PRNG seed; the only source of randomness.
      checkpoint_every: epochs between checkpoints (M): one is saved at every multiple of
        M (global epochs; chunks are cut to end there) and at the end of each stage.
      resume: continue from the newest intact checkpoint in ``output_dir``.
      overwrite: delete the run in ``output_dir`` first (a folder that is not a run of
        ours is never deleted); excludes ``resume``.
      n_h, n_metal: padding rows of the H and of each metal block (None: from the data,
        refusing a structure with more than :data:`MAX_BLOCK_ROWS` atoms in a block).
      evaluate: write the evaluation report after training.
    """

    data_ah: str
    data_bh: str
    element_a: str
    element_b: str
    output_dir: str
    train: train.TrainConfig = train.TrainConfig()
    seed: int = 0
    checkpoint_every: int = 100
    resume: bool = False
    overwrite: bool = False
    n_h: int | None = None
    n_metal: int | None = None
    evaluate: bool = True

    def __post_init__(self):
        if self.checkpoint_every < 1:
            raise ValueError(f"checkpoint_every must be at least 1, got {self.checkpoint_every}")
        if self.resume and self.overwrite:
            raise ValueError("resume and overwrite (--resume, --overwrite) exclude each other: "
                             "--overwrite deletes the run that --resume would continue")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) \
                or not 0 <= self.seed <= MAX_SEED:
            raise ValueError(f"seed must be an integer in [0, {MAX_SEED}], got {self.seed}")
        for name in ("n_h", "n_metal"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        check_elements(self.element_a, self.element_b)
        if not str(self.output_dir).strip():
            raise ValueError("output_dir must not be empty")


def check_elements(element_a: str, element_b: str) -> None:
    """Raises ValueError unless A and B are two different chemical elements other than H."""
    from pymatgen.core import Element

    for flag, symbol in (("element_a", element_a), ("element_b", element_b)):
        if not Element.is_valid_symbol(symbol):
            raise ValueError(f"{flag}: {symbol!r} is not a chemical element symbol")
        if symbol == io.HYDROGEN:
            raise ValueError(f"{flag}: the metals A and B cannot be H (H is the third element)")
    if element_a == element_b:
        raise ValueError(f"element_a and element_b are both {element_a}: a ternary A-B-H "
                         "needs two different metals")


@dataclasses.dataclass
class RunResult:
    """What :func:`run` leaves in memory (all of it is also on disk)."""

    output_dir: Path
    layout: encoding.Layout
    state: train.TrainState
    files: dict[str, dict[str, list[Path]]]
    metrics: list[dict]
    report: dict | None
    spec: RunSpec | None = None  # as trained (learned settings filled in)


def covalent_radii(element_a: str, element_b: str) -> tuple[float, float, float]:
    """Covalent radii (Angstrom) of H, A and B, as the strict criterion takes them."""
    from crystalgan_jax.materials.evaluation import covalent_radius

    return tuple(covalent_radius(s) for s in ("H", element_a, element_b))


def load_domains(spec: RunSpec, log: Callable[[str], None] | None = None
                 ) -> tuple[io.Domain, io.Domain]:
    """Reads the AH and BH domains (folders or ``.mat`` files) and checks their sizes.

    Warnings of the readers (duplicate inputs) go to ``log`` as ``warning: ...`` lines.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", io.DuplicateStructureWarning)
        ah = io.read_domain(spec.data_ah, spec.element_a, mat_block=encoding.A_BLOCK + 1)
        bh = io.read_domain(spec.data_bh, spec.element_b, mat_block=encoding.B_BLOCK + 1)
    for w in caught:
        if log is not None and issubclass(w.category, io.DuplicateStructureWarning):
            log(f"warning: {w.message}")
        elif not issubclass(w.category, io.DuplicateStructureWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    check_sizes((ah, bh), spec)
    return ah, bh


def check_sizes(domains: tuple[io.Domain, ...], spec: RunSpec) -> None:
    """Refuses a structure with more atoms in a block than the block's rows.

    The limit is ``spec.n_h`` / ``spec.n_metal`` where set, else :data:`MAX_BLOCK_ROWS`.

    Raises:
      io.StructureFileError: naming the structure, its count and how to allow it.
    """
    for domain in domains:
        for structure, source in zip(domain.structures, domain.sources):
            for symbol, limit, flag in ((io.HYDROGEN, spec.n_h, "n_h"),
                                        (domain.metal, spec.n_metal, "n_metal")):
                count = int(structure.composition[symbol])
                if count > (limit or MAX_BLOCK_ROWS):
                    why = (f"more than --{flag}={limit}" if limit else
                           f"more than the {MAX_BLOCK_ROWS} rows a block is padded to by "
                           "default (every structure is padded to the largest)")
                    raise io.StructureFileError(
                        source, f"{count} {symbol} atoms: {why}; pass --{flag}={count} "
                        "to allow it (memory and time grow with it)")


def _is_run(out: Path) -> bool:
    return any((out / name).exists() for name in RUN_MARKERS)


WRITE_PROBE = ".write-test-"  # + pid: the file that shows a folder is writable


def _foreign_contents(out: Path) -> list[str]:
    """Names in ``out`` (besides our lock and write probes) when ``out`` is not a run of
    ours, else []. (The processes of a population probe the folder at the same time.)"""
    if not out.is_dir() or _is_run(out):
        return []
    return sorted(p.name for p in out.iterdir()
                  if p.name != LOCK_NAME and not p.name.startswith(WRITE_PROBE))


def _output_error(out: Path, err: OSError) -> OutputDirError:
    reason = err.strerror or str(err)
    if err.errno in (errno.ENOTDIR, errno.EEXIST):
        reason = "a part of the path is a file, not a folder"
    return OutputDirError(f"{out}: cannot use this output folder: {reason}")


@contextlib.contextmanager
def lock_output(out: Path, log: Callable[[str], None]) -> Iterator[None]:
    """Holds an exclusive lock on ``out`` (created if missing) while the block runs.

    The lock is ``fcntl.flock`` on ``out/.lock``, which the kernel releases when the holder
    exits in any way (a SIGKILL too), so a lock left by a dead process is never in the way;
    the file names its holder (pid, host, start time) for the refusal message, and a
    takeover of a dead holder's lock is logged.

    Raises:
      OutputDirError: ``out`` cannot be created or written.
      RunLockedError: another live process holds the lock.
    """
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd = os.open(out / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise _output_error(out, err) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 512, 0).decode(errors="replace").strip() or "unknown"
            raise RunLockedError(
                f"{out} is in use by another run ({holder}); wait for it to end or choose "
                "another --output_dir") from None
        previous = os.pread(fd, 512, 0).decode(errors="replace").strip()
        if previous:
            log(f"{out / LOCK_NAME}: stale lock of {previous} (no longer running) taken over")
        me = f"pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}"
        os.ftruncate(fd, 0)
        os.pwrite(fd, me.encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)  # an empty lock file: released cleanly
    finally:
        os.close(fd)


def _check_output_path(out: Path) -> None:
    """Refuses before any training an output folder that is not ours or cannot be made.

    Raises:
      OutputDirError: ``out`` is a file, holds files that are not a run of ours (they are
        named), or a path that cannot be created (a parent is a file, no permission, a
        name too long).
    """
    try:
        if out.exists() and not out.is_dir():
            raise OutputDirError(f"{out}: cannot use this output folder: it is a file")
        foreign = _foreign_contents(out)
    except OSError as err:  # a name too long, a parent that cannot be read
        raise _output_error(out, err) from None
    if foreign:
        listed = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise OutputDirError(
            f"{out} is not empty and holds no run of ours ({listed}); nothing was written. "
            "Choose an empty or new --output_dir (--overwrite only replaces a run)")


def check_output(spec: RunSpec) -> None:
    """Everything about ``spec.output_dir`` that can be checked before reading any data.

    Raises:
      OutputDirError: see :func:`_check_output_path`.
      FileExistsError: it holds a run and neither ``resume`` nor ``overwrite`` is set.
    """
    out = Path(spec.output_dir)
    _check_output_path(out)
    if _is_run(out) and not (spec.resume or spec.overwrite):
        raise FileExistsError(
            f"{out} already holds a run; pass resume=True (--resume) to continue it or "
            "overwrite=True (--overwrite) to start again")


def clear_run(out: Path) -> None:
    """Deletes everything in the run folder ``out`` but its lock (``--overwrite``)."""
    for child in out.iterdir():
        if child.name != LOCK_NAME:
            shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()


def _prepare_output(spec: RunSpec, log: Callable[[str], None]) -> Path:
    """Under the lock: clears a run for ``overwrite``, refuses one without ``resume``."""
    out = Path(spec.output_dir)
    _check_output_path(out)  # again under the lock: another run may have written meanwhile
    if _is_run(out) and spec.overwrite:
        clear_run(out)
        log(f"--overwrite: the run in {out} was deleted")
    elif _is_run(out) and not spec.resume:
        raise FileExistsError(
            f"{out} already holds a run; pass resume=True (--resume) to continue it or "
            "overwrite=True (--overwrite) to start again")
    try:
        probe = out / f"{WRITE_PROBE}{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise _output_error(out, err) from None
    return out


@contextlib.contextmanager
def _signals_interrupt() -> Iterator[None]:
    """SIGTERM raises :class:`Interrupted` like Ctrl-C does (main thread only).

    Schedulers stop jobs with SIGTERM; handled as SIGINT, it saves the state first.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise Interrupted(signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class ResumeMismatchError(RunError, ValueError):
    """``--resume`` with settings that differ from those the checkpoint was made with."""


# What must agree between a run and its resumption; the rest (resume, overwrite,
# evaluate, checkpoint_every, output_dir) may change.
_RESUME_KEYS = ("train", "seed", "element_a", "element_b", "n_h", "n_metal")


def _check_resumable(path: Path, current: dict) -> None:
    """Raises ResumeMismatchError naming ``path`` (config.json) and the fields that differ."""
    if not path.exists():
        return
    saved = json.loads(path.read_text())
    now = json.loads(json.dumps(current))  # tuples -> lists, as saved
    differ = [f"spec.{k}" for k in _RESUME_KEYS if saved["spec"].get(k) != now["spec"].get(k)]
    differ += [k for k in ("layout", "sources_ah", "sources_bh") if saved.get(k) != now.get(k)]
    if differ:
        raise ResumeMismatchError(
            f"{path}: cannot resume, the run was made with other settings "
            f"({', '.join(differ)} differ); use the same flags, or --overwrite")


def _read_metrics(path: Path, up_to_epoch: int, log: Callable[[str], None]) -> list[dict]:
    """Metrics lines of epochs already covered by the restored checkpoint.

    A line cut short by a hard kill is dropped with a message; its epoch is re-run.
    """
    if not path.exists():
        return []
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if line.strip():
                log(f"{path}, line {number}: incomplete metrics line dropped")
    return [r for r in rows if r["global_epoch"] <= up_to_epoch]


def _format_progress(stage: str, epoch: int, epochs: int, row: dict, rate: float) -> str:
    losses = "  ".join(f"{k} {v:.4g}" for k, v in row.items()
                       if (k.startswith("L_") or k == "outside_images") and v is not None)
    eta = (epochs - epoch) / rate if rate > 0 else float("nan")
    return f"[{stage}] epoch {epoch}/{epochs}  {losses}  {rate:.1f} epochs/s  eta {eta:.0f}s"


def _json_value(value: float) -> float | None:
    """A metric for metrics.jsonl: NaN and inf become null, so every line is valid JSON."""
    return value if math.isfinite(value) else None


def append_metric_rows(stage_name: str, names: Sequence[str], values: np.ndarray, start: int,
                       done: int, rows: list[dict], file) -> None:
    """One ``metrics.jsonl`` row per epoch of a chunk: appended to ``rows`` and written to
    the open ``file`` (flushed). Row ``i`` of ``values`` ``[epochs, len(names)]`` is the
    stage's epoch ``done + i + 1`` and the run's ``start + done + i + 1``; NaN and inf
    are written as null (:func:`_json_value`)."""
    for i, v in enumerate(values):
        row = {"stage": stage_name, "epoch": done + i + 1, "global_epoch": start + done + i + 1}
        row.update(zip(names, (_json_value(float(x)) for x in v)))
        rows.append(row)
        file.write(json.dumps(row, allow_nan=False) + "\n")
    file.flush()


def _save_interrupted(ckpt: Checkpoints, state: train.TrainState,
                      err: KeyboardInterrupt, log: Callable[[str], None]) -> None:
    ckpt.save(state, force=True)
    name = f" [{signal.Signals(err.signum).name}]" if isinstance(err, Interrupted) else ""
    log(f"interrupted: state of epoch {int(state.epoch)} saved in {ckpt.directory}; "
        f"continue with --resume{name}")


def _diverged(stage_name: str, stage: train.Stage, cfg: train.TrainConfig,
              chunk_metrics: np.ndarray, n: int, start: int, done: int,
              state: train.TrainState, ckpt: Checkpoints, metrics: list[dict],
              metrics_file) -> DivergenceError:
    """Logs the chunk's rows up to the first non-finite one, saves ``state`` (the last
    finite one) and returns the error to raise."""
    names = train.metric_names(stage, cfg)
    bad_rows = np.flatnonzero(~np.all(np.isfinite(chunk_metrics[:n]), axis=1))
    last = int(bad_rows[0]) if bad_rows.size else n - 1
    append_metric_rows(stage_name, names, chunk_metrics[:last + 1], start, done, metrics,
                       metrics_file)
    if bad_rows.size:
        what = ", ".join(k for k, v in zip(names, chunk_metrics[last]) if not np.isfinite(v))
    else:
        what = "the parameters or optimizer state"
    ckpt.save(state, force=True)
    saved = int(state.epoch)
    epoch = done + last + 1
    return DivergenceError(
        f"training diverged: {what} became NaN or inf in {stage_name} at epoch {epoch} "
        f"(global epoch {start + epoch}). The last finite state (epoch {saved}) is the "
        f"checkpoint in {ckpt.directory} that --resume continues from; metrics.jsonl marks "
        "the non-finite values as null. Try a lower --learning_rate or other loss weights "
        "(with --overwrite).", stage_name, epoch, start + epoch, saved)


def chunk_length(epoch: int, stage_end: int, chunk: int, every: int) -> int:
    """Epochs of the next chunk from global ``epoch``: at most ``chunk``, ending at the
    stage end or the next multiple of ``every``, where the checkpoint policy saves."""
    return min(chunk, stage_end - epoch, every - epoch % every)


def train_stages(spec: RunSpec, out: Path, x: encoding.Crystal, y: encoding.Crystal,
                 nets: train.Networks, state: train.TrainState, shifts: jax.Array,
                 metrics: list[dict], ckpt: Checkpoints,
                 log: Callable[[str], None], on_trace=None,
                 compiling: dict[str, concurrent.futures.Future] | None = None
                 ) -> train.TrainState:
    """Runs every stage of ``spec.train`` from ``state.epoch`` on, checkpointing as it goes.

    ``shifts``: the geometric penalty's lattice shifts (:func:`train.penalty_shifts`).
    ``compiling``: the stages' programs from :func:`compile_stages`, started earlier;
    a stage missing from it is started here, with the stages after it.
    Chunks end at multiples of ``spec.checkpoint_every`` (global epochs), where ``ckpt``'s
    save policy writes a checkpoint, and at stage ends.

    Raises:
      DivergenceError: a loss, parameter or optimizer moment became NaN or inf; the last
        finite state is saved first.
      KeyboardInterrupt (or :class:`Interrupted`): after saving the last finished chunk.
    """
    cfg = spec.train
    every = spec.checkpoint_every
    chunk = max(1, min(cfg.chunk_epochs, every, cfg.epochs))
    compiling = dict(compiling or {})
    metrics_file = (out / "metrics.jsonl").open("a")
    try:
        for s_index, stage_name in enumerate(cfg.stages):
            start = s_index * cfg.epochs
            if int(state.epoch) >= start + cfg.epochs:
                continue
            stage = train.STAGES[stage_name]
            data = train.stage_data(stage_name, state, nets, x, y)
            # not started by the caller (or a resume fell back to an older checkpoint):
            # this stage and the later ones start compiling now
            missing = [name for name in cfg.stages[s_index:] if name not in compiling]
            if missing:
                compiling.update(compile_stages(spec, missing, state, nets, x, y, shifts,
                                                on_trace))
            runner, compile_s = compiling[stage_name].result()
            if compile_s is not None:
                quick = train.stage_compiler_options(
                    cfg, [d.lattice.shape[0] for d in data], jax.default_backend()) is not None
                log(f"[{stage_name}] compiled in {compile_s:.1f} s ({chunk} epochs per call"
                    + ("; quick compilation for a short stage" if quick else "") + ")")
            ahead = compile_s is not None
            stage_epochs, stage_s = 0, 0.0
            while int(state.epoch) < start + cfg.epochs:
                epoch = int(state.epoch)
                done = epoch - start
                n = chunk_length(epoch, start + cfg.epochs, chunk, every)
                tic = time.perf_counter()
                # ``state`` moves on only once this chunk's metrics are on disk and it is
                # finite, so an interrupt anywhere (JAX returns before it computes, so
                # usually while we wait here) or a divergence saves a state that the
                # metrics file agrees with
                new_state, chunk_metrics = runner(state, data, jnp.arange(chunk) < n)
                chunk_metrics = np.asarray(chunk_metrics)
                finite = (bool(np.all(np.isfinite(chunk_metrics))) and bool(
                    train.tree_all_finite((new_state.params, new_state.opt_state))))
                elapsed = time.perf_counter() - tic
                if compile_s is None:  # this call compiled: count it as compile time
                    compile_s = elapsed
                else:
                    stage_epochs, stage_s = stage_epochs + n, stage_s + elapsed
                rate = n / elapsed
                if not finite:
                    raise _diverged(stage_name, stage, cfg, chunk_metrics, n, start, done,
                                    state, ckpt, metrics, metrics_file)
                with signals_held():  # the metrics on disk and the state move on together
                    append_metric_rows(stage_name, train.metric_names(stage, cfg),
                                       chunk_metrics[:n], start, done, metrics, metrics_file)
                    state = new_state
                log(_format_progress(stage_name, done + n, cfg.epochs, metrics[-1], rate))
                ckpt.save(state)  # where the policies say: multiples of M, stage ends
            if stage_epochs:
                log(f"[{stage_name}] done: {stage_epochs} epochs in {stage_s:.1f} s "
                    f"({stage_epochs / stage_s:.1f} epochs/s steady) + {compile_s:.1f} s "
                    "compiling" + ("" if ahead else " and the first chunk"))
    except KeyboardInterrupt as err:
        _save_interrupted(ckpt, state, err, log)
        raise
    finally:
        metrics_file.close()
    return state


def compile_stages(spec: RunSpec, stages: Sequence[str], state, nets: train.Networks,
                   x: encoding.Crystal, y: encoding.Crystal, shifts: jax.Array, on_trace=None,
                   lowerer: concurrent.futures.ThreadPoolExecutor | None = None
                   ) -> dict[str, concurrent.futures.Future]:
    """Starts building the stages' chunk runners in two threads: one traces and lowers
    each stage in turn, the other compiles (or loads from the cache) what it lowered.

    XLA compiles without the GIL, so the first stage's compilation overlaps whatever the
    caller does next (the initialisation), and stage 3's overlaps stage 1's training.
    Tracing holds the GIL and XLA does not: stage 3 is traced while stage 1 compiles,
    and a stage's runner is handed over only once every stage is lowered, so that the
    training in the caller's thread then overlaps only compilation. Python work in two
    threads at once slows both (each waits for the GIL at every switch): tracing stage 3
    while stage 1 trained and checkpointed took 1.8-2.1 s instead of 0.8 s. Compilations
    run one at a time: on a 2-core machine, compiling both stages at once delayed the
    start of training by the whole of stage 3's compilation. ``state`` may be abstract
    (``jax.eval_shape`` of :func:`train.init_state`): only shapes are used.
    Each future gives ``(runner, compile seconds or None)`` (see :func:`_compile_lowered`).

    ``lowerer``: a one-thread executor of the caller's for the tracing, which the caller
    shuts down; work it submits there after this call runs once every stage is traced
    (:func:`_run_locked` queues the report's inputs there, which also wait for the
    compilations). By default a thread of its own.
    """
    cfg = spec.train
    chunk = max(1, min(cfg.chunk_epochs, spec.checkpoint_every, cfg.epochs))
    own = lowerer is None
    if own:
        lowerer = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="lower")
    compiler = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="compile")
    lowered = {name: lowerer.submit(_lower_stage, name, state, nets, x, y, cfg, shifts, chunk,
                                    on_trace) for name in stages}
    futures = {name: compiler.submit(_compile_lowered, lowered[name], list(lowered.values()))
               for name in stages}
    for executor in (lowerer, compiler) if own else (compiler,):
        executor.shutdown(wait=False)  # the threads end with their work
    return futures


class _Lowered(NamedTuple):
    runner: Callable  # as given
    lowered: Any  # jax.stages.Lowered, or None for a runner that is not a jax.jit function
    seconds: float  # tracing and lowering


def _lower_stage(stage_name: str, state: train.TrainState, nets: train.Networks,
                 x: encoding.Crystal, y: encoding.Crystal, cfg: train.TrainConfig,
                 shifts: jax.Array, chunk: int, on_trace=None) -> _Lowered:
    """The chunk runner of one stage, lowered for the shapes of its data; needs no
    trained parameters, so it can run ahead."""
    data = jax.eval_shape(lambda s, a, b: train.stage_data(stage_name, s, nets, a, b),
                          state, x, y)
    sizes = [d.lattice.shape[0] for d in data]
    options = train.stage_compiler_options(cfg, sizes, jax.default_backend())
    runner = train.make_chunk_runner(train.STAGES[stage_name], nets, cfg, shifts, sizes,
                                        on_trace, options)
    return _lower(runner, state, data, jnp.arange(chunk) < chunk)


def _lower(runner: Callable, *args) -> _Lowered:
    if not hasattr(runner, "lower"):
        return _Lowered(runner, None, 0.0)
    tic = time.perf_counter()
    lowered = runner.lower(*args)
    return _Lowered(runner, lowered, time.perf_counter() - tic)


def _compile_lowered(lowered: _Lowered | concurrent.futures.Future,
                     after: Sequence[concurrent.futures.Future] = ()
                     ) -> tuple[Callable, float | None]:
    """The compiled runner of :func:`_lower`'s result and the seconds both steps took,
    returned once the futures ``after`` are done too (and raising the first of their
    errors: a stage that cannot be traced fails the run before any training).

    Compiled ahead of its first call so that the epochs/s of the progress lines are
    steady rates and the compile time is reported on its own. A runner that is not a
    ``jax.jit`` function (e.g. wrapped by a caller) is returned as it is, with None: then
    its first call compiles.
    """
    if isinstance(lowered, concurrent.futures.Future):
        lowered = lowered.result()
    if lowered.lowered is None:
        compiled, seconds = lowered.runner, None
    else:
        tic = time.perf_counter()
        compiled = lowered.lowered.compile()
        seconds = lowered.seconds + time.perf_counter() - tic
    for future in after:
        future.result()
    return compiled, seconds


def write_structures(generated: dict[str, dict[str, encoding.Crystal]], layout: encoding.Layout,
                     out: Path, log: Callable[[str], None]) -> dict[str, dict[str, list[Path]]]:
    """Decodes and writes every generated crystal as POSCAR (.vasp) and CIF.

    A sample that does not decode (no atoms, or a degenerate cell) is skipped; file
    numbers keep the sample index, so gaps show which. The skipped samples are summarised
    in one ``log`` line per kind (count per reason, the first few named) and listed one by
    one at ``--verbosity=1``. Files of an earlier pass (a resumed run) are removed first,
    so none of them can be mistaken for this run's.
    """
    shutil.rmtree(out / "structures", ignore_errors=True)
    files: dict[str, dict[str, list[Path]]] = {}
    skipped: dict[str, dict[str, list[str]]] = {}  # kind -> reason -> samples
    for kind, directions in generated.items():
        files[kind] = {}
        for direction, crystals in directions.items():
            folder = out / "structures" / kind / direction
            folder.mkdir(parents=True, exist_ok=True)
            paths = []
            crystals = jax.tree_util.tree_map(np.asarray, crystals)
            for i in range(crystals.lattice.shape[0]):
                one = encoding.index(crystals, i)
                reason = _undecodable(one)
                if reason:
                    logging.vlog(1, "skipped %s/%s/%03d: %s", kind, direction, i, reason)
                    skipped.setdefault(kind, {}).setdefault(_reason_kind(reason), []).append(
                        f"{direction}/{i:03d}")
                    continue
                structure = encoding.decode(one, layout)
                path = folder / f"{i:03d}.vasp"
                io.write_poscar(structure, path, comment=f"{kind} {direction} {i:03d}")
                io.write_cif(structure, path.with_suffix(".cif"))
                paths.append(path)
            files[kind][direction] = paths
    for kind, reasons in skipped.items():
        total = sum(len(v) for v in files[kind].values()) + sum(map(len, reasons.values()))
        log(f"skipped {sum(map(len, reasons.values()))} of {total} {kind} samples: "
            + "; ".join(f"{len(names)} {reason} ({_first_few(names)})"
                        for reason, names in reasons.items()))
    return files


def _reason_kind(reason: str) -> str:
    """The reason without its numbers, so that like failures are counted together."""
    return reason.split(" (")[0]


def _first_few(names: list[str], shown: int = 3) -> str:
    return ", ".join(names[:shown]) + (f", ... {len(names) - shown} more" if len(names) > shown else "")


# Below this spacing of lattice planes (Angstrom) a generated cell is no crystal, and
# pymatgen's CIF reader refuses it; such samples are logged and not written.
MIN_PLANE_SPACING = 0.1


def _undecodable(crystal: encoding.Crystal) -> str | None:
    if not any(np.any(np.asarray(m) > 0.5) for m in crystal.masks):
        return "no atom has occupancy > 0.5"
    lattice = np.asarray(crystal.lattice, np.float64)
    if abs(np.linalg.det(lattice)) < io.MIN_CELL_VOLUME:
        return "degenerate cell (zero volume)"
    spacing = float(cells.plane_spacings(lattice).min())
    if spacing < MIN_PLANE_SPACING:
        return f"degenerate cell (lattice planes {spacing:.3g} A apart)"
    return None


def prepare(spec: RunSpec, log: Callable[[str], None] | None = None):
    """Reads, checks and encodes the domains and builds the networks.

    Returns:
      (spec with learned settings filled in, AH domain, BH domain, layout, x, y, networks);
      x and y are the encoded domains (float32 JAX arrays).
    """
    ah, bh = load_domains(spec, log)
    spec = _learned_settings(spec, ah, bh)
    layout = encoding.Layout.fit(spec.element_a, spec.element_b, ah.structures + bh.structures,
                                 n_h=spec.n_h, n_a=spec.n_metal, n_b=spec.n_metal)

    def encode(domain: io.Domain) -> encoding.Crystal:
        batch = encoding.encode_batch(domain.structures, layout, sources=domain.sources,
                                      dtype=np.float32)
        return jax.tree_util.tree_map(jnp.asarray, batch)

    x, y = encode(ah), encode(bh)
    lattices = np.concatenate([np.asarray(x.lattice), np.asarray(y.lattice)])
    nets = train.Networks.build(layout.rows, train.length_scale(lattices), spec.train)
    return spec, ah, bh, layout, x, y, nets


def run(spec: RunSpec, log: Callable[[str], None] | None = None, on_trace=None,
        extra_files: dict[str, str] | None = None) -> RunResult:
    """Trains ``spec.train.method`` on the two domains and writes every output.

    Every input is read and checked, and the output folder checked and locked, before any
    training. SIGTERM is handled like Ctrl-C while it runs (:class:`Interrupted`).

    Args:
      spec: what to train on and where to write.
      log: receives progress lines (default: absl ``logging.info``, so ``--verbosity``
        and ``--log_dir`` of a script apply).
      on_trace: called with the stage name whenever a stage's epochs are traced.
      extra_files: file name -> text, written into the output directory before training
        (train.py records its flags this way, so a crashed run still has them).

    Raises:
      io.StructureFileError: bad input (file, line or row, what is wrong).
      OutputDirError, RunLockedError, FileExistsError, ResumeMismatchError: the output
        folder cannot be used by this run.
      CheckpointError: ``resume`` and no intact checkpoint is left.
      DivergenceError: training produced NaN or inf.
      Interrupted / KeyboardInterrupt: SIGTERM / SIGINT, after saving.
    """
    log = log or logging.info
    if spec.train.weights.l7 > 0 and not any(spec.train.clash_radii):
        spec = dataclasses.replace(spec, train=dataclasses.replace(
            spec.train, clash_radii=covalent_radii(spec.element_a, spec.element_b)))
    out = Path(spec.output_dir)
    check_output(spec)
    prepared = prepare(spec, log)
    with _signals_interrupt(), lock_output(out, log):
        return _run_locked(prepared, log, on_trace, extra_files)


def _run_locked(prepared: tuple, log: Callable[[str], None], on_trace,
                extra_files: dict[str, str] | None) -> RunResult:
    spec, ah, bh, layout, x, y, nets = prepared
    cfg = spec.train
    out = _prepare_output(spec, log)
    lattices = np.concatenate([np.asarray(x.lattice), np.asarray(y.lattice)])
    shifts = train.penalty_shifts(lattices, cfg)
    key = jax.random.PRNGKey(spec.seed)
    stage_ends = [(i + 1) * cfg.epochs for i in range(len(cfg.stages))]
    ckpt = Checkpoints(out / "checkpoints", every=spec.checkpoint_every, stage_ends=stage_ends,
                       keep=[cfg.epochs] if cfg.stages[0] == "stage1" else [], log=log)
    # a resumed run past a stage's end does not compile that stage (should its newest
    # checkpoint prove damaged, train_stages compiles what it then needs)
    resumed = (ckpt.latest_step() or 0) if spec.resume else 0
    todo = [name for name, end in zip(cfg.stages, stage_ends) if resumed < end]
    # before the compile threads start: its git calls and file reads are ~10 ms alone,
    # ~0.7 s while another thread traces (a wait for the GIL at each)
    config = _config_json(spec, layout, ah, bh)
    lowerer = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="lower")
    compiling = compile_stages(spec, todo, jax.eval_shape(
        lambda k: train.init_state(k, nets, cfg), key), nets, x, y, shifts, on_trace,
        lowerer)
    # the report's inputs on the tracing thread once every stage is compiled: then they
    # take the core that the training leaves (one of two on the 2-core machine), and the
    # outputs no longer wait for their imports
    inputs = (lowerer.submit(_after, compiling.values(), report_inputs, spec, ah, bh)
              if spec.evaluate else None)
    lowerer.shutdown(wait=False)
    state = train.init_state(key, nets, cfg)
    metrics: list[dict] = []
    try:
        if spec.resume and ckpt.latest_step() is not None:
            _check_resumable(out / "config.json", config)
            state = ckpt.restore(state)
            metrics = _read_metrics(out / "metrics.jsonl", int(state.epoch), log)
            log(f"resumed from epoch {int(state.epoch)} in {ckpt.directory}")
        elif spec.resume:
            log(f"nothing to resume in {ckpt.directory}: starting from epoch 0")
        (out / "metrics.jsonl").write_text(
            "".join(json.dumps(r, allow_nan=False) + "\n" for r in metrics))
        (out / "config.json").write_text(json.dumps(config, indent=2))
        for name, text in (extra_files or {}).items():
            (out / name).write_text(text)
        log(f"{len(ah)} {spec.element_a}-H and {len(bh)} {spec.element_b}-H structures; "
            f"rows H/A/B = {layout.rows}; method {cfg.method}, {cfg.epochs} epochs per stage")
        state = train_stages(spec, out, x, y, nets, state, shifts, metrics, ckpt, log,
                             on_trace, compiling)
    finally:
        ckpt.close()
    files, report = write_outputs(spec, state, nets, x, y, layout, ah, bh, out, metrics, log,
                                  inputs)
    return RunResult(out, layout, state, files, metrics, report, spec)


def _after(futures: Iterable[concurrent.futures.Future], fun: Callable, *args) -> Any:
    """``fun(*args)`` once every one of ``futures`` is done, whatever its outcome."""
    concurrent.futures.wait(list(futures))
    return fun(*args)


class ReportInputs(NamedTuple):
    """What a run's report needs besides its generated structures: nothing of it depends on
    training (:func:`report_inputs`)."""

    options: dict  # the criteria, keyword options of report.write_report
    references: list  # structures a new candidate must not match
    training: list  # the training structures' evaluations (report.evaluate_training)


def report_criteria(spec: RunSpec) -> dict:
    """The criteria a run's report judges by, as keyword options of
    :func:`crystalgan_jax.materials.report.write_report`: the run's d1, d2 and constrained classes."""
    cfg = spec.train
    return {"d1": cfg.d1, "d2": cfg.d2,
            "classes": encoding.class_symbols(cfg.classes, spec.element_a, spec.element_b)}


def report_inputs(spec: RunSpec, ah: io.Domain, bh: io.Domain) -> ReportInputs:
    """The report's criteria, its reference structures
    (:func:`crystalgan_jax.materials.candidates.reference_structures`) and the training structures'
    evaluations. Importing what the report needs (matplotlib, pymatgen's structure matcher)
    is most of it: ~0.8 s of the ~3 s of outputs, on the 2-core machine."""
    from crystalgan_jax.materials import candidates
    from crystalgan_jax.materials import report as report_lib

    options = report_criteria(spec)
    references = candidates.reference_structures(ah.structures, bh.structures,
                                                 spec.element_a, spec.element_b)
    training = report_lib.evaluate_training(ah.structures + bh.structures, spec.element_a,
                                            spec.element_b, **options)
    return ReportInputs(options, references, training)


def write_outputs(spec: RunSpec, state: train.TrainState, nets: train.Networks,
                  x: encoding.Crystal, y: encoding.Crystal, layout: encoding.Layout,
                  ah: io.Domain, bh: io.Domain, out: Path, metrics: list[dict],
                  log: Callable[[str], None],
                  inputs: ReportInputs | concurrent.futures.Future | None = None
                  ) -> tuple[dict, dict | None]:
    """Generates from a trained ``state`` with ``spec.train``'s sampling settings, writes the
    structures (snapped where ``snap_symprec`` > 0) and, if ``spec.evaluate``, the report
    with the novelty count. Returns (files, report).

    ``inputs``: :func:`report_inputs` for ``spec``, or its future, computed ahead; computed
    here where None. Separate from training so that sampling-only variants
    (experiments/ablation.py) reuse one trained state.
    """
    cfg = spec.train
    generated = train.generate(state, nets, cfg, x, y, jax.random.fold_in(state.key, 1))
    files = write_structures(generated, layout, out, log)
    if cfg.snap_symprec > 0:
        _snap_files(files.get("final", {}), cfg.snap_symprec, log)
    report = None
    if spec.evaluate:
        from crystalgan_jax.materials import report as report_lib

        if inputs is None:
            inputs = report_inputs(spec, ah, bh)
        elif isinstance(inputs, concurrent.futures.Future):
            inputs = inputs.result()
        report = report_lib.write_run_report(out, files, ah.structures + bh.structures,
                                             spec.element_a, spec.element_b, metrics,
                                             references=inputs.references,
                                             training_evaluations=inputs.training,
                                             **inputs.options)
    from crystalgan_jax.materials import export

    extxyz, database = export.write_exports(
        out, files.get("final", {}), report,
        {"seed": spec.seed, "method": cfg.method,
         "system": f"{spec.element_a}-{spec.element_b}-H"})
    log(f"final structures also in {extxyz} and {database} "
        f"(e.g. `ase db {database} good_strict=True`)")
    return files, report


def _learned_settings(spec: RunSpec, ah: io.Domain, bh: io.Domain) -> RunSpec:
    """crystalgan_plus: distance windows and the smallest plane spacing from the training data.

    Only where the configuration asks for them and leaves them unset, so a resumed run
    (whose config.json holds them) compares equal.
    """
    cfg = spec.train
    changes = {}
    if cfg.window_weight > 0 and not cfg.pair_windows:
        from crystalgan_jax.materials import candidates

        changes["pair_windows"] = candidates.learn_windows(
            ah.structures, bh.structures, spec.element_a, spec.element_b,
            cfg.window_percentiles, cfg.d1, cfg.d2)
    if cfg.spacing_weight > 0 and cfg.min_plane_spacing == 0:
        lattices = np.array([s.lattice.matrix for s in ah.structures + bh.structures])
        changes["min_plane_spacing"] = round(float(cells.plane_spacings(lattices).min()), 4)
    if not changes:
        return spec
    return dataclasses.replace(spec, train=dataclasses.replace(cfg, **changes))


def _snap_files(files: dict[str, list[Path]], symprec: float,
                log: Callable[[str], None]) -> None:
    """Rewrites each structure file that has a space group above P1 at ``symprec`` as its
    idealised primitive standard cell (:func:`crystalgan_jax.materials.candidates.snap_to_symmetry`)."""
    from crystalgan_jax.materials import candidates

    snapped = total = 0
    for paths in files.values():
        for path in paths:
            total += 1
            structure = io.read_structure(path)
            new, number = candidates.snap_to_symmetry(structure, symprec)
            if number > 1:
                snapped += 1
                io.write_poscar(new, path, comment=f"{path.stem} snapped to space group {number}")
                io.write_cif(new, path.with_suffix(".cif"))
    log(f"symmetry: {snapped} of {total} final structures snapped (symprec {symprec} A)")


def _config_json(spec: RunSpec, layout: encoding.Layout, ah: io.Domain, bh: io.Domain) -> dict:
    return {"spec": dataclasses.asdict(spec), "layout": dataclasses.asdict(layout),
            "sources_ah": list(ah.sources), "sources_bh": list(bh.sources),
            "jax": jax.__version__, "devices": [str(d) for d in jax.devices()],
            "versions": provenance.versions(), "code": provenance.git_commit(),
            "inputs_sha256": provenance.input_hashes(list(ah.sources) + list(bh.sources))}
