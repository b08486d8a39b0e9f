"""Relaxations with one potential over several worker processes: every core busy.

One relaxation is a chain of small potential calls (CHGNet on a 10-atom cell: ~0.05 s a
step on one core with :func:`crystalgan_jax.screening.relax.one_backward_pass`) that
neither batching nor more threads speed up on the CPU (``benchmarks/screening.py``), so
screening uses the cores by relaxing several structures at once, one per process. :class:`Relaxer` hands structures to ``workers`` processes
(``python -m crystalgan_jax.screening.workers``, each loading the potential once, one
thread each) and gives the relaxations back in input order, calling ``on_done`` with each
as soon as it ends (the screening journals it there). With ``workers=1`` it relaxes in
this process.

The workers run in their own session: Ctrl-C reaches only this process, which then stops
them (finished relaxations are already journaled). A worker that dies (the out-of-memory
killer on a collapsing cell, say) costs only its structure, reported as an "error"
relaxation, and is replaced.

Protocol (private to this module): frames of an 8-byte big-endian length and a pickle, on
the worker's stdin and on a pipe that is the worker's stdout (the worker sends what
libraries print to stderr instead).
"""

from __future__ import annotations

import os
import pickle
import queue
import struct
import subprocess
import sys
import threading
import time
from typing import Any, BinaryIO, Callable, Sequence

from pymatgen.core import Structure

from crystalgan_jax.screening import potentials
from crystalgan_jax.screening.relax import (DEFAULT_OPTIMIZER, Relaxation, check_optimizer,
                                            progress_line, relax)

# (name, structure, relax_cell)
Job = tuple[str, Structure, bool]
Log = Callable[[str], None]


def _send(stream: BinaryIO, obj: Any) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(struct.pack(">Q", len(data)) + data)
    stream.flush()


def _receive(stream: BinaryIO) -> Any:
    """The next frame's object; EOFError where the other side has gone."""
    head = stream.read(8)
    if len(head) < 8:
        raise EOFError("stream closed")
    (size,) = struct.unpack(">Q", head)
    data = stream.read(size)
    if len(data) < size:
        raise EOFError("stream closed mid-frame")
    return pickle.loads(data)


class _Worker:
    """One worker process and the thread that feeds it jobs from a shared queue."""

    def __init__(self, relaxer: "Relaxer"):
        self.relaxer = relaxer
        self.process: subprocess.Popen | None = None
        self.label: str | None = None

    def start(self) -> str:
        r = self.relaxer
        args = [sys.executable, "-m", "crystalgan_jax.screening.workers", r.potential,
                str(r.threads), repr(r.fmax), str(r.max_steps)]
        env = {**os.environ, "PYTHONWARNINGS": "ignore"}
        self.process = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        env=env, start_new_session=True)
        hello = _receive(self.process.stdout)
        if "error" in hello:
            self.stop()
            if hello.get("missing_extra"):
                raise potentials.MissingExtraError(hello["error"])
            raise RuntimeError(f"screening worker could not load {r.potential}: "
                               f"{hello['error']}")
        self.label = hello["label"]
        return self.label

    def run(self, jobs: queue.Queue, results: queue.Queue) -> None:
        """Takes (index, job) from ``jobs`` until None; puts (index, Relaxation) or
        (None, exception) into ``results``."""
        while True:
            item = jobs.get()
            if item is None:
                return
            index, (name, structure, cell), optimizer = item
            tic = time.perf_counter()
            try:
                if self.process is None or self.process.poll() is not None:
                    self.start()
                _send(self.process.stdin, (structure, cell, optimizer))
                results.put((index, _receive(self.process.stdout)))
            except (EOFError, BrokenPipeError, OSError) as err:
                code = self.process.poll() if self.process else None
                self.stop()
                results.put((index, Relaxation(
                    "error", f"worker process died ({code if code is not None else err}; "
                    "out of memory?)", 0, [], None, None, structure, None,
                    time.perf_counter() - tic)))
            except BaseException as err:  # e.g. the potential failed to load
                results.put((None, err))
                return

    def stop(self) -> None:
        if self.process is not None:
            if self.process.poll() is None:
                self.process.kill()
            self.process.wait()
            self.process = None


class Relaxer:
    """Relaxes lists of structures with one potential and one set of settings.

    Args:
      potential: a name of :data:`crystalgan_jax.screening.potentials.POTENTIALS`.
      fmax: convergence, largest force (eV/A; stress x cell through the cell filter).
      max_steps: optimizer steps at most.
      optimizer: ASE optimizer (:data:`crystalgan_jax.screening.relax.OPTIMIZERS`).
      hull_optimizer: the optimizer of the hull's solid phases (structures that start near
        a minimum: :meth:`relax` with ``optimizer=relaxer.hull_optimizer``); None:
        ``optimizer``.
      workers: processes relaxing at once (1: in this process).
      threads: PyTorch / BLAS threads of each process.

    Use as a context manager (or call :meth:`close`): the workers live until then, so
    that the hull, the candidates and the baseline of one screening share them.
    """

    def __init__(self, potential: str = "chgnet", *, fmax: float, max_steps: int,
                 optimizer: str = DEFAULT_OPTIMIZER, hull_optimizer: str | None = None,
                 workers: int = 1, threads: int = 1, log: Log | None = None):
        if workers < 1 or threads < 1:
            raise ValueError(f"workers and threads must be >= 1, got {workers}, {threads}")
        self.optimizer = check_optimizer(optimizer)
        self.hull_optimizer = check_optimizer(hull_optimizer or optimizer)
        potentials.check_installed(potential)
        self.potential, self.fmax, self.max_steps = potential, fmax, max_steps
        self.workers, self.threads = workers, threads
        self.log = log
        self.calculator = None  # in-process potential (workers == 1)
        self._label: str | None = None
        self._pool: list[_Worker] = []

    @property
    def label(self) -> str:
        """The potential's name and version, e.g. ``"CHGNet 0.3.0"`` (loads it)."""
        if self._label is None:
            self._start()
        return self._label

    @property
    def settings(self) -> dict[str, Any]:
        """What the relaxations depend on: fmax, max_steps, optimizer and the model."""
        return {"fmax": self.fmax, "max_steps": self.max_steps, "optimizer": self.optimizer,
                "model": self.label.split(" ", 1)[-1]}

    @property
    def hull_settings(self) -> dict[str, Any]:
        """:attr:`settings` of the hull's relaxations (the hull's journal and cache key):
        its solid phases are relaxed with :attr:`hull_optimizer`."""
        return {**self.settings, "optimizer": self.hull_optimizer}

    def _start(self) -> None:
        tic = time.perf_counter()
        if self.workers == 1:
            self.calculator, self._label = potentials.load(self.potential, self.threads)
        else:
            self._pool = [_Worker(self) for _ in range(self.workers)]
            self._label = self._pool[0].start()
            for worker in self._pool[1:]:  # the first tells whether the potential loads
                worker.start()
        if self.log:
            self.log(f"{self._label} loaded in {time.perf_counter() - tic:.1f}s "
                     f"({self.workers} process(es), {self.threads} thread(s) each)")

    def in_process_calculator(self):
        """The potential loaded in this process (for single points), loaded once."""
        if self.calculator is None:
            self.calculator, self._label = potentials.load(self.potential, self.threads)
        return self.calculator

    def relax(self, jobs: Sequence[Job], on_done: Callable[[str, Relaxation], None] | None
              = None, progress: Log | None = None, tag: str = "relax",
              optimizer: str | None = None) -> list[Relaxation]:
        """Relaxes every ``(name, structure, relax_cell)``; relaxations in input order.

        ``on_done(name, relaxation)`` is called in this thread as each one ends;
        ``optimizer`` (default: the relaxer's) is that of these relaxations.
        """
        if not jobs:
            return []
        optimizer = check_optimizer(optimizer or self.optimizer)
        if self._label is None or (self.workers > 1 and not self._pool):
            self._start()
        out: list[Relaxation | None] = [None] * len(jobs)
        tic = time.perf_counter()

        def finished(index: int, r: Relaxation, done: int) -> None:
            out[index] = r
            if on_done:
                on_done(jobs[index][0], r)
            if progress:
                progress(progress_line(tag, done, len(jobs), jobs[index][0], r,
                                       time.perf_counter() - tic))

        if self.workers == 1:
            for k, (name, structure, cell) in enumerate(jobs):
                finished(k, relax(structure, self.calculator, fmax=self.fmax,
                                  max_steps=self.max_steps, relax_cell=cell,
                                  optimizer=optimizer), k + 1)
            return out
        todo: queue.Queue = queue.Queue()
        results: queue.Queue = queue.Queue()
        for index, job in enumerate(jobs):
            todo.put((index, job, optimizer))
        threads = []
        for worker in self._pool:
            todo.put(None)
            threads.append(threading.Thread(target=worker.run, args=(todo, results),
                                            daemon=True))
            threads[-1].start()
        try:
            for done in range(1, len(jobs) + 1):
                while True:  # a timeout keeps Ctrl-C responsive
                    try:
                        index, r = results.get(timeout=0.5)
                        break
                    except queue.Empty:
                        continue
                if index is None:
                    raise r
                finished(index, r, done)
        except BaseException:
            self.close()
            raise
        for t in threads:
            t.join()
        return out

    def close(self) -> None:
        """Stops the worker processes (a later :meth:`relax` starts new ones)."""
        for worker in self._pool:
            worker.stop()
        self._pool = []

    def __enter__(self) -> "Relaxer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _serve(potential: str, threads: int, fmax: float, max_steps: int) -> None:
    """A worker's loop: loads the potential, then relaxes what arrives until stdin closes."""
    channel = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # what libraries print goes to stderr, not into the frames
    requests = sys.stdin.buffer
    try:
        calculator, label = potentials.load(potential, threads)
    except potentials.MissingExtraError as err:
        _send(channel, {"error": str(err), "missing_extra": True})
        return
    except Exception as err:
        _send(channel, {"error": f"{type(err).__name__}: {err}"})
        return
    _send(channel, {"label": label})
    while True:
        try:
            structure, cell, optimizer = _receive(requests)
        except EOFError:
            return
        _send(channel, relax(structure, calculator, fmax=fmax, max_steps=max_steps,
                             relax_cell=cell, optimizer=optimizer))


if __name__ == "__main__":
    import warnings

    warnings.simplefilter("ignore")
    name, n_threads, f_max, steps = sys.argv[1:5]
    _serve(name, int(n_threads), float(f_max), int(steps))
