"""What this machine does at its best, for the benchmarks to compare against.

Imported by the benchmark scripts beside it (``python benchmarks/train.py`` puts this
folder on the path).
"""

from __future__ import annotations

import statistics
import time


def matmul_rate(n: int = 1024, repeats: int = 20) -> dict:
    """Median float32 GFLOP/s of a jitted ``[n, n] @ [n, n]`` on the default device.

    Returns ``{"n", "repeats", "median_ms", "gflops"}``; 2 n^3 FLOP per product.
    """
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.PRNGKey(1), (n, n), jnp.float32)
    f = jax.jit(jnp.matmul)
    jax.block_until_ready(f(a, b))  # compile outside the timing
    times = []
    for _ in range(repeats):
        tic = time.perf_counter()
        jax.block_until_ready(f(a, b))
        times.append(time.perf_counter() - tic)
    median = statistics.median(times)
    return {"n": n, "repeats": repeats, "median_ms": 1e3 * median,
            "gflops": 2 * n**3 / median / 1e9}
