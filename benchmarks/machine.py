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
