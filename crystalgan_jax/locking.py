"""One process at a time per folder: an advisory lock with its holder named.

The one lock of the package: a run folder (:func:`crystalgan_jax.pipeline.folder.lock_output`)
and a screening folder hold it the same way. ``fcntl.flock`` on ``<folder>/.lock``, which
the kernel releases however the holder ends (SIGKILL too), so a lock left by a dead
process never stands in the way; the file names its holder (pid, host, start time) for
the refusal message, and taking over a dead holder's lock is logged.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import time
from pathlib import Path
from typing import Callable, Iterator

LOCK_NAME = ".lock"


class FolderLockedError(RuntimeError):
    """Another live process holds the folder's lock; the message names it."""


@contextlib.contextmanager
def lock_folder(folder: Path, log: Callable[[str], None] | None = None,
                what: str = "screening") -> Iterator[Path]:
    """Holds an exclusive lock on ``folder`` (created if missing) while the block runs.

    Args:
      folder: the folder to lock; the lock file is ``folder/.lock``.
      log: told when a dead holder's lock is taken over.
      what: what the folder is in use by, for the refusal message.
    Yields:
      The lock file's path.
    Raises:
      FolderLockedError: another live process holds the lock.
      OSError: the folder cannot be created or the lock file opened.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 512, 0).decode(errors="replace").strip() or "unknown"
            raise FolderLockedError(f"{folder} is in use by another {what} ({holder}); wait "
                                    "for it to end or choose another folder") from None
        previous = os.pread(fd, 512, 0).decode(errors="replace").strip()
        if previous and log:
            log(f"{path}: stale lock of {previous} (no longer running) taken over")
        me = (f"pid {os.getpid()} on {socket.gethostname()}, "
              f"since {time.strftime('%Y-%m-%d %H:%M:%S')}")
        os.ftruncate(fd, 0)
        os.pwrite(fd, me.encode(), 0)
        try:
            yield path
        finally:
            os.ftruncate(fd, 0)  # an empty lock file: released cleanly
    finally:
        os.close(fd)
