"""Runs train.py as several JAX processes on this machine, talking over localhost.

    python experiments/local_cluster.py --num_processes=2 -- \
        --flagfile=experiments/pdni_paper.flags --seeds=0,1,2,3 --output_dir=runs/pdni_pop

Starts ``--num_processes`` copies of ``train.py`` with ``--coordinator_address`` (a free
localhost port), ``--num_processes`` and ``--process_id`` added, so that
``jax.distributed.initialize`` joins them into one cluster: each trains the members held by
its devices, process 0 writes the pooled outputs. ``--devices_per_process=K`` gives each
process K CPU devices (``XLA_FLAGS=--xla_force_host_platform_device_count=K``). It is the
same code path as a real multi-host run (see docs/running.md, "Populations"), on one machine.
Every line a process prints is prefixed with its index; the exit status is the first
non-zero one of the processes.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

TRAIN = Path(__file__).resolve().parent / "train.py"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _relay(index: int, stream) -> None:
    for line in stream:
        print(f"[{index}] {line}", end="", file=sys.stderr, flush=True)


def launch(train_args: list[str], num_processes: int, devices_per_process: int = 1,
           timeout: float | None = None) -> int:
    """Runs the processes to completion; returns 0 or the first non-zero exit status."""
    address = f"localhost:{free_port()}"
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices_per_process}"}
    procs = []
    for pid in range(num_processes):
        cmd = [sys.executable, str(TRAIN), *train_args, f"--coordinator_address={address}",
               f"--num_processes={num_processes}", f"--process_id={pid}"]
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    relays = [threading.Thread(target=_relay, args=(i, p.stdout), daemon=True)
              for i, p in enumerate(procs)]
    for t in relays:
        t.start()
    codes = []
    try:
        for p in procs:
            codes.append(p.wait(timeout=timeout))
    finally:
        for p in procs:  # one failed or we were interrupted: do not leave the others waiting
            if p.poll() is None:
                p.kill()
                p.wait()
    for t in relays:
        t.join()
    return next((c for c in codes if c != 0), 0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     usage="%(prog)s [--num_processes N] -- TRAIN_FLAGS...")
    parser.add_argument("--num_processes", type=int, default=2)
    parser.add_argument("--devices_per_process", type=int, default=1)
    args, rest = parser.parse_known_args()
    if rest and rest[0] == "--":
        rest = rest[1:]
    if args.num_processes < 1 or args.devices_per_process < 1:
        parser.error("--num_processes and --devices_per_process must be at least 1")
    return launch(rest, args.num_processes, args.devices_per_process)


if __name__ == "__main__":
    sys.exit(main())
