"""What every benchmark script shares: timers, the machine's best rates, and the stamp
(environment, git commit, date) of every results JSON.

Imported by the benchmark scripts beside it (``python benchmarks/train.py`` puts this
folder on the path): ``from common import ...``.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
STAMP_FIELDS = ("git_commit", "git_dirty", "date", "environment")


def median_time(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time (s) of ``repeats`` calls of ``fn``, each result blocked on where it
    holds JAX arrays (no untimed call first: warm up before where compilation counts)."""
    return statistics.median(call_times(fn, repeats))


def call_times(fn: Callable[[], object], repeats: int) -> list[float]:
    """Wall times (s) of ``repeats`` calls of ``fn``, each result blocked on."""
    times = []
    for _ in range(repeats):
        tic = time.perf_counter()
        _block(fn())
        times.append(time.perf_counter() - tic)
    return times


def _block(value):
    import sys

    if "jax" in sys.modules:  # no JAX import for the benchmarks that have none
        import jax

        return jax.block_until_ready(value)
    return value


def git_commit() -> tuple[str | None, bool | None]:
    """(HEAD's commit of the repository, whether tracked files differ from it), or
    (None, None) outside a git checkout."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=REPO, capture_output=True, text=True,
                               check=True).stdout.strip() != ""
        return commit, dirty
    except (OSError, subprocess.CalledProcessError):
        return None, None


def environment() -> dict:
    """Versions and hardware the figures were taken on (JAX's only where it is imported)."""
    import sys

    import numpy as np

    env = {"python": platform.python_version(), "numpy": np.__version__,
           "machine": platform.machine(), "cpu_count": os.cpu_count(),
           "load_average_1_5_15": list(os.getloadavg())}
    if "jax" in sys.modules:
        import jax
        import jaxlib

        env.update({"jax": jax.__version__, "jaxlib": jaxlib.__version__,
                    "device": str(jax.devices()[0]), "platform": jax.default_backend()})
    return env


def stamp(report: dict) -> dict:
    """``report`` with the git commit, the date (UTC, ISO 8601) and the environment; an
    ``environment`` the report has already keeps its entries over the measured ones."""
    commit, dirty = git_commit()
    return {"git_commit": commit, "git_dirty": dirty,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            **report, "environment": {**environment(), **report.get("environment", {})}}


def write_results(path: Path | str, report: dict) -> dict:
    """Writes ``report``, stamped (:func:`stamp`), as JSON to ``path``; returns it."""
    path = Path(path)
    stamped = stamp(report)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(stamped, indent=2, default=str) + "\n")
    return stamped


def matmul_rate(n: int = 1024, repeats: int = 20) -> dict:
    """Median float32 GFLOP/s of a jitted ``[n, n] @ [n, n]`` on the default device.

    Returns ``{"n", "repeats", "median_ms", "gflops"}``; 2 n^3 FLOP per product.
    """
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.PRNGKey(1), (n, n), jnp.float32)
    median = median_seconds(jax.jit(jnp.matmul), (a, b), repeats)
    return {"n": n, "repeats": repeats, "median_ms": 1e3 * median,
            "gflops": 2 * n**3 / median / 1e9}


def median_seconds(f, args: tuple, repeats: int) -> float:
    """Median wall time of ``f(*args)`` to its result, over ``repeats`` calls after one
    untimed call (the compilation)."""
    import jax

    jax.block_until_ready(f(*args))
    times = []
    for _ in range(repeats):
        tic = time.perf_counter()
        jax.block_until_ready(f(*args))
        times.append(time.perf_counter() - tic)
    return statistics.median(times)


def layer_products_rate(batch: int = 35, width: int = 100, group: int = 4, layers: int = 20,
                        repeats: int = 20) -> dict:
    """Median float32 GFLOP/s of a dense layer's training products at a model's shapes.

    The ceiling of a small MLP's training on this machine: each of the visible devices
    holds ``group`` independent problems (as a population's vmapped member groups) and
    runs, ``layers`` times in a row, the three products of a ``width``-unit layer's
    forward and backward pass on a ``batch``-row minibatch: ``y = x W``,
    ``dx = dy W^T``, ``dW = x^T dy``, 2 batch width^2 FLOPs each. Nothing else is
    computed (a scale and an add per product), so a training step, which also runs
    activations, losses and Adam, cannot go faster.

    Returns ``{"batch", "width", "group", "devices", "median_ms", "gflops"}``.
    """
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    devices = jax.devices()
    members = group * len(devices)
    split = NamedSharding(Mesh(np.array(devices), ("members",)), PartitionSpec("members"))
    x = jax.device_put(jax.random.normal(jax.random.PRNGKey(0), (members, batch, width),
                                         jnp.float32), split)
    w = jax.device_put(jax.random.normal(jax.random.PRNGKey(1), (members, width, width),
                                         jnp.float32) / np.sqrt(width), split)

    def chain(x, w):
        def layer(carry, _):
            x, grad = carry
            y = jnp.einsum("mbi,mio->mbo", x, w)  # forward
            dx = jnp.einsum("mbo,mio->mbi", y, w)  # input gradient
            dw = jnp.einsum("mbi,mbo->mio", x, y)  # weight gradient
            return (0.5 * dx, grad + dw), None
        return jax.lax.scan(layer, (x, jnp.zeros_like(w)), None, length=layers)[0]

    median = median_seconds(jax.jit(chain, out_shardings=(split, split)), (x, w), repeats)
    flops = 3 * 2 * batch * width * width * members * layers
    return {"batch": batch, "width": width, "group": group, "devices": len(devices),
            "median_ms": 1e3 * median, "gflops": flops / median / 1e9}


def define_screened_run_flags() -> None:
    """--run_dir and --side of the benchmarks that read a screened run (preselection.py,
    symmetrize.py)."""
    from absl import flags

    flags.DEFINE_string("run_dir", str(REPO / "runs" / "pdni"), "A screened run folder.")
    flags.DEFINE_enum("side", "generator", ["generator", "substitution"], "The run's "
                      "candidates, or the substitution baseline screened beside them.")


def screening_folder(run_dir: str | Path, side: str) -> Path:
    """Where a screened run keeps the screening of ``side`` ("generator" or "substitution")."""
    folder = Path(run_dir) / "screening"
    return folder / "substitution" if side == "substitution" else folder
