"""The run folder: ownership, the lock, resumption, the metrics file, interrupts.

One folder holds one run (a single run or a population); these are the checks and
writes every run makes on it, whatever it trains (:mod:`crystalgan_jax.pipeline.job`).
Nothing is lost on a crash, Ctrl-C or SIGTERM: an interrupt saves the state of the last
finished chunk (:func:`save_interrupted`), and the lock (:func:`lock_output`) is
released by the kernel however its holder ends.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import shutil
import signal
import threading
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from crystalgan_jax import locking
from crystalgan_jax.pipeline.errors import (Interrupted, OutputDirError, ResumeMismatchError,
                                            RunLockedError)
from crystalgan_jax.train.checkpoints import Checkpoints

LOCK_NAME = locking.LOCK_NAME
# Files whose presence makes a folder a run of ours (written before training starts).
RUN_MARKERS = ("config.json", "metrics.jsonl", "checkpoints")


def is_run(out: Path) -> bool:
    return any((out / name).exists() for name in RUN_MARKERS)


WRITE_PROBE = ".write-test-"  # + pid: the file that shows a folder is writable


def _foreign_contents(out: Path) -> list[str]:
    """Names in ``out`` (besides our lock and write probes) when ``out`` is not a run of
    ours, else []. (The processes of a population probe the folder at the same time.)"""
    if not out.is_dir() or is_run(out):
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
    """Holds the exclusive lock on ``out`` (created if missing) while the block runs
    (:func:`crystalgan_jax.locking.lock_folder`: released by the kernel however the holder
    ends, the holder named, a dead holder's lock taken over and logged).

    Raises:
      OutputDirError: ``out`` cannot be created or written.
      RunLockedError: another live process holds the lock.
    """
    with contextlib.ExitStack() as held:
        try:
            held.enter_context(locking.lock_folder(out, log, what="run"))
        except locking.FolderLockedError as err:
            raise RunLockedError(f"{err} (--output_dir)") from None
        except OSError as err:
            raise _output_error(out, err) from None
        yield


def check_output_path(out: Path) -> None:
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


def check_output(spec) -> None:
    """Everything about ``spec.output_dir`` that can be checked before reading any data.

    Raises:
      OutputDirError: see :func:`check_output_path`.
      FileExistsError: it holds a run and neither ``resume`` nor ``overwrite`` is set.
    """
    out = Path(spec.output_dir)
    check_output_path(out)
    if is_run(out) and not (spec.resume or spec.overwrite):
        raise FileExistsError(
            f"{out} already holds a run; pass resume=True (--resume) to continue it or "
            "overwrite=True (--overwrite) to start again")


def clear_run(out: Path) -> None:
    """Deletes everything in the run folder ``out`` but its lock (``--overwrite``)."""
    for child in out.iterdir():
        if child.name != LOCK_NAME:
            shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()


def prepare_output(spec, log: Callable[[str], None]) -> Path:
    """Under the lock: clears a run for ``overwrite``, refuses one without ``resume``."""
    out = Path(spec.output_dir)
    check_output_path(out)  # again under the lock: another run may have written meanwhile
    if is_run(out) and spec.overwrite:
        clear_run(out)
        log(f"--overwrite: the run in {out} was deleted")
    elif is_run(out) and not spec.resume:
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
def signals_interrupt() -> Iterator[None]:
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


# What must agree between a run and its resumption; the rest (resume, overwrite,
# evaluate, checkpoint_every, output_dir) may change.
_RESUME_KEYS = ("train", "seed", "element_a", "element_b", "n_h", "n_metal", "refine_from",
                "guide")


def _added_since(saved: dict, now: dict) -> dict:
    """``now`` without the settings that ``saved`` (an earlier version's config) lacks
    and that are at their off value here (None, False, 0, empty): a run made before a
    setting existed resumes under a version that has it, as long as it stays off."""
    return {k: v for k, v in now.items() if k in saved or v not in (None, False, 0, [], {})}


def check_resumable(path: Path, current: dict) -> None:
    """Raises ResumeMismatchError naming ``path`` (config.json) and what differs: the
    settings of :data:`_RESUME_KEYS`, the layout and inputs, and a population's members
    and the padding of its member axis (the checkpoint holds the padded axis)."""
    if not path.exists():
        return
    saved = json.loads(path.read_text())
    now = json.loads(json.dumps(current))  # tuples -> lists, as saved
    if isinstance(saved["spec"].get("train"), dict) and isinstance(now["spec"].get("train"), dict):
        now["spec"]["train"] = _added_since(saved["spec"]["train"], now["spec"]["train"])
    differ = [f"spec.{k}" for k in _RESUME_KEYS if saved["spec"].get(k) != now["spec"].get(k)]
    differ += [k for k in ("layout", "sources_ah", "sources_bh") if saved.get(k) != now.get(k)]
    if differ:
        raise ResumeMismatchError(
            f"{path}: cannot resume, the run was made with other settings "
            f"({', '.join(differ)} differ); use the same flags, or --overwrite")
    if saved.get("members") != now.get("members"):
        raise ResumeMismatchError(
            f"{path}: cannot resume, the population was made with other members (seeds or "
            "swept weights); use the same flags, or --overwrite")
    if saved.get("padded_members") != now.get("padded_members"):
        raise ResumeMismatchError(
            f"{path}: cannot resume, the member axis was padded to "
            f"{saved.get('padded_members')} rows over {len(saved.get('devices', []))} "
            f"device(s), here it is {now.get('padded_members')} over "
            f"{len(now.get('devices', []))}; resume with as many devices")


def read_metrics(path: Path, up_to_epoch: int, log: Callable[[str], None]) -> list[dict]:
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


def save_interrupted(ckpt: Checkpoints, state,
                      err: KeyboardInterrupt, log: Callable[[str], None]) -> None:
    ckpt.save(state, force=True)
    name = f" [{signal.Signals(err.signum).name}]" if isinstance(err, Interrupted) else ""
    log(f"interrupted: state of epoch {int(state.epoch)} saved in {ckpt.directory}; "
        f"continue with --resume{name}")




OUTPUTS_DONE = "outputs.json"  # written once every output of the trained state is written


def mark_outputs_written(out: Path, epoch: int) -> None:
    """Records that every output of the state at ``epoch`` is written (the last write of a
    run), so that ``--resume`` of a finished run goes on to what follows (the screening)
    without writing them again."""
    (out / OUTPUTS_DONE).write_text(json.dumps({"epoch": int(epoch)}) + "\n")


def outputs_written(out: Path) -> int | None:
    """The epoch whose outputs are all written in ``out``, or None."""
    try:
        return int(json.loads((out / OUTPUTS_DONE).read_text())["epoch"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def unmark_outputs(out: Path) -> None:
    """Forgets the record (before outputs are written again)."""
    (out / OUTPUTS_DONE).unlink(missing_ok=True)
