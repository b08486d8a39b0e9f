"""The stage loop every run trains through, single or population: compiled stage
programs, chunks of epochs, metrics on disk, checkpoints, divergence and interrupts.
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from crystalgan_jax.pipeline import folder
from crystalgan_jax.pipeline.errors import DivergenceError, Interrupted
from crystalgan_jax.pipeline.trainers import Lowered
from crystalgan_jax import train
from crystalgan_jax.train.checkpoints import Checkpoints, signals_held


def chunk_epochs(cfg: train.TrainConfig, checkpoint_every: int) -> int:
    """Epochs one call of a stage's program runs at most."""
    return max(1, min(cfg.chunk_epochs, checkpoint_every, cfg.epochs))


def chunk_length(epoch: int, stage_end: int, chunk: int, every: int) -> int:
    """Epochs of the next chunk from global ``epoch``: at most ``chunk``, ending at the
    stage end or the next multiple of ``every``, where the checkpoint policy saves."""
    return min(chunk, stage_end - epoch, every - epoch % every)


def compile_stages(trainer, stages: Sequence[str], state, chunk: int, on_trace=None,
                   lowerer: concurrent.futures.ThreadPoolExecutor | None = None
                   ) -> dict[str, concurrent.futures.Future]:
    """Starts building the stages' programs in two threads: one traces and lowers each
    stage in turn (``trainer.lower_stage``), the other compiles what it lowered.

    XLA compiles without the GIL, so a stage's compilation overlaps whatever the caller
    does next, and stage 3's overlaps stage 1's training. Tracing holds the GIL: a
    stage's program is handed over only once every stage is lowered, so that the
    training in the caller's thread then overlaps only compilation; compilations run one
    at a time, so that the first stage's is not slowed by the next one's. ``state`` may
    be abstract (``trainer.abstract_state()``): only shapes are used. Each future gives
    ``(program, compile seconds or None, quick)``; None where the program compiles at its
    first call.

    ``lowerer``: a one-thread executor of the caller's for the tracing, which the caller
    shuts down; work it submits there after this call runs once every stage is traced.
    By default a thread of its own.
    """
    own = lowerer is None
    if own:
        lowerer = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="lower")
    compiler = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="compile")
    lowered = {name: lowerer.submit(trainer.lower_stage, name, state, chunk, on_trace)
               for name in stages}
    futures = {name: compiler.submit(compile_lowered, lowered[name], list(lowered.values()))
               for name in stages}
    for executor in (lowerer, compiler) if own else (compiler,):
        executor.shutdown(wait=False)  # the threads end with their work
    return futures


def compile_lowered(lowered: Lowered | concurrent.futures.Future,
                    after: Sequence[concurrent.futures.Future] = ()
                    ) -> tuple[Callable, float | None, bool]:
    """The compiled program of a :class:`Lowered`, the seconds both steps took (None where
    it compiles at its first call) and whether it compiles quickly; returned once the
    futures ``after`` are done too (raising the first of their errors: a stage that cannot
    be traced fails the run before any training)."""
    if isinstance(lowered, concurrent.futures.Future):
        lowered = lowered.result()
    if lowered.lowered is None:
        compiled, seconds = lowered.fn, None
    else:
        tic = time.perf_counter()
        compiled = lowered.lowered.compile()
        seconds = lowered.seconds + time.perf_counter() - tic
    for future in after:
        future.result()
    return compiled, seconds, lowered.quick


def format_progress(stage: str, epoch: int, epochs: int, row: dict, rate: float) -> str:
    """One progress line: the stage's epoch, its losses, epochs/s and the time left."""
    losses = "  ".join(f"{k} {v:.4g}" for k, v in row.items()
                       if (k.startswith("L_") or k == "outside_images") and v is not None)
    eta = (epochs - epoch) / rate if rate > 0 else float("nan")
    return f"[{stage}] epoch {epoch}/{epochs}  {losses}  {rate:.1f} epochs/s  eta {eta:.0f}s"


def _mean_row(metrics: dict[int, list[dict]], names: Sequence[str]) -> dict:
    """The members' last rows, averaged (a single member's row as it is)."""
    rows = [m[-1] for m in metrics.values()]
    if len(rows) == 1:
        return rows[0]
    return {k: float(np.mean([r[k] if r[k] is not None else np.nan for r in rows]))
            for k in names}


def diverged(stage_name: str, names: Sequence[str], rows: dict[int, np.ndarray], n: int,
             start: int, done: int, state, ckpt: Checkpoints, metrics: dict[int, list[dict]],
             files: dict[int, Any], member_names: dict[int, str] | None) -> DivergenceError:
    """Writes each member's rows up to the first non-finite one of any member, saves
    ``state`` (the last finite one) and returns the error to raise."""
    bad = {i: np.flatnonzero(~np.all(np.isfinite(r[:n]), axis=1)) for i, r in rows.items()}
    firsts = {i: int(b[0]) for i, b in bad.items() if b.size}
    last = min(firsts.values()) if firsts else n - 1
    for i, r in rows.items():
        folder.append_metric_rows(stage_name, names, r[:last + 1], start, done, metrics[i],
                                  files[i])
    culprits = [i for i, f in firsts.items() if f == last]
    if culprits:
        what = ", ".join(dict.fromkeys(k for i in culprits
                                       for k, v in zip(names, rows[i][last])
                                       if not np.isfinite(v)))
    else:
        what = "the parameters or optimizer state"
    if member_names and culprits:
        what += " of member " + ", ".join(member_names[i] for i in culprits)
    ckpt.save(state, force=True)
    saved = int(state.epoch)
    epoch = done + last + 1
    return DivergenceError(
        f"training diverged: {what} became NaN or inf in {stage_name} at epoch {epoch} "
        f"(global epoch {start + epoch}). The last finite state (epoch {saved}) is the "
        f"checkpoint in {ckpt.directory} that --resume continues from; metrics.jsonl marks "
        "the non-finite values as null. Try a lower --learning_rate or other loss weights "
        "(with --overwrite).", stage_name, epoch, start + epoch, saved)


def train_stages(trainer, cfg: train.TrainConfig, every: int, member_dirs: dict[int, Path],
                 state, metrics: dict[int, list[dict]], ckpt: Checkpoints,
                 log: Callable[[str], None], on_trace=None,
                 compiling: dict[str, concurrent.futures.Future] | None = None,
                 stop: threading.Event | None = None, until: int | None = None,
                 member_names: dict[int, str] | None = None):
    """Runs every stage of ``cfg`` from the state's epoch on, checkpointing as it goes.

    Each chunk's metric rows are appended to each local member's ``metrics.jsonl``
    before the state moves on, so an interrupt saves a state that the metrics files agree
    with. Chunks end at multiples of ``every`` (global epochs), where ``ckpt``'s policy
    saves, and at stage ends.

    Args:
      trainer: a :mod:`crystalgan_jax.pipeline.trainers` trainer.
      member_dirs: local member index -> its folder.
      compiling: the stages' programs from :func:`compile_stages`, started earlier; a
        stage missing from it is started here, with the stages after it.
      stop: once set, training stops before its next chunk as on Ctrl-C.
      until: train only up to this global epoch.
      member_names: names for the divergence message (a population's members).

    Raises:
      DivergenceError: a loss, parameter or optimizer moment became NaN or inf; the last
        finite state is saved first.
      KeyboardInterrupt (or :class:`Interrupted`): after saving the last finished chunk.
    """
    chunk = chunk_epochs(cfg, every)
    compiling = dict(compiling or {})
    files = {i: (d / "metrics.jsonl").open("a") for i, d in member_dirs.items()}
    try:
        for s_index, stage_name in enumerate(cfg.trained_stages):
            start = s_index * cfg.epochs
            end = start + cfg.epochs if until is None else min(start + cfg.epochs, until)
            if trainer.epoch(state) >= end:
                continue
            stage = train.STAGES[stage_name]
            names = train.metric_names(stage, cfg)
            data = trainer.stage_data(stage_name, state)
            # not started by the caller (or a resume fell back to an older checkpoint):
            # this stage and the later ones start compiling now
            missing = [name for name in cfg.trained_stages[s_index:] if name not in compiling]
            if missing:
                compiling.update(compile_stages(trainer, missing, state, chunk, on_trace))
            fn, compile_s, quick = compiling[stage_name].result()
            if compile_s is not None:
                log(f"[{stage_name}] compiled in {compile_s:.1f} s ({chunk} epochs per call"
                    + ("; quick compilation for a short stage" if quick else "") + ")")
            ahead = compile_s is not None
            stage_epochs, stage_s = 0, 0.0
            while trainer.epoch(state) < end:
                if stop is not None and stop.is_set():
                    raise Interrupted()  # saved below, as on Ctrl-C
                epoch = trainer.epoch(state)
                done = epoch - start
                n = chunk_length(epoch, end, chunk, every)
                tic = time.perf_counter()
                # ``state`` moves on only once this chunk's metrics are on disk and it is
                # finite, so an interrupt anywhere or a divergence saves a state that the
                # metrics files agree with
                new_state, rows, finite = trainer.run_chunk(fn, state, data, n, chunk)
                elapsed = time.perf_counter() - tic
                if compile_s is None:  # this call compiled: count it as compile time
                    compile_s = elapsed
                else:
                    stage_epochs, stage_s = stage_epochs + n, stage_s + elapsed
                if not finite:
                    raise diverged(stage_name, names, rows, n, start, done, state, ckpt,
                                   metrics, files, member_names)
                with signals_held():  # the metrics on disk and the state move on together
                    for i, f in files.items():
                        folder.append_metric_rows(stage_name, names, rows[i][:n], start,
                                                  done, metrics[i], f)
                    state = new_state
                if metrics:
                    line = format_progress(stage_name, done + n, cfg.epochs,
                                           _mean_row(metrics, names), n / elapsed)
                    log(line + (f"  (mean of {len(metrics)} members)"
                                if len(metrics) > 1 else ""))
                ckpt.save(state)  # where the policies say: multiples of M, stage ends
            if stage_epochs:
                log(f"[{stage_name}] done: {stage_epochs} epochs in {stage_s:.1f} s "
                    f"({stage_epochs / stage_s:.1f} epochs/s steady) + {compile_s:.1f} s "
                    "compiling" + ("" if ahead else " and the first chunk"))
    except KeyboardInterrupt as err:
        folder.save_interrupted(ckpt, state, err, log)
        raise
    finally:
        for f in files.values():
            f.close()
    return state
