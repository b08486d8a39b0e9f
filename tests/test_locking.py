"""One screening per folder: a second process is refused, a dead holder's lock taken over."""

import os
import signal
import subprocess
import sys

import pytest

from crystalgan_jax import locking
from tests.conftest import REPO

HOLD = ("import sys, time; from crystalgan_jax import locking\n"
        "with locking.lock_folder(sys.argv[1]):\n"
        "    print('locked', flush=True); sys.stdin.read()\n")


def holder(folder):
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], cwd=REPO,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_second_process_refused_then_released(tmp_path):
    folder = tmp_path / "screening"
    proc = holder(folder)
    try:
        with pytest.raises(locking.FolderLockedError, match=f"pid {proc.pid} on "):
            with locking.lock_folder(folder):
                pass
    finally:
        proc.stdin.close()  # the holder leaves its block and exits cleanly
        assert proc.wait(timeout=60) == 0
    assert (folder / ".lock").read_text() == ""  # released cleanly
    logs = []
    with locking.lock_folder(folder, logs.append) as path:
        assert f"pid {os.getpid()} on " in path.read_text()
    assert logs == []  # nothing stale to take over


def test_stale_lock_of_a_killed_process_is_taken_over(tmp_path):
    folder = tmp_path / "screening"
    proc = holder(folder)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    proc.stdin.close()
    assert f"pid {proc.pid} on " in (folder / ".lock").read_text()  # left behind
    logs = []
    with locking.lock_folder(folder, logs.append):
        pass
    assert len(logs) == 1 and "stale lock" in logs[0] and f"pid {proc.pid}" in logs[0]
