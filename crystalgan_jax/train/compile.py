"""How hard XLA works at compiling: the quick options for programs a run calls once.

XLA's CPU backend compiles a program's kernels with its fusion emitters and LLVM at -O2
by default; with the older LLVM IR emitters at -O0 it compiles sooner and runs slower,
the better choice for a program that runs only briefly (initialisation, a stage's data,
generation, a short stage's chunk runner: see
:func:`crystalgan_jax.train.steps.stage_compiler_options`).
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np


QUICK_COMPILE = {"xla_backend_optimization_level": 0, "xla_cpu_use_fusion_emitters": False}
QUICK_COMPILE_STEPS = 16


@functools.cache
def quick_compile_options() -> dict[str, Any]:
    """The options of :data:`QUICK_COMPILE` that the installed XLA accepts.

    An option XLA does not know fails every compilation that passes it, and XLA drops
    options as its backends move on; each is tried once, on a one-line program.
    """
    known = {}
    for name, value in QUICK_COMPILE.items():
        try:
            jax.jit(jnp.negative, compiler_options={name: value}).lower(
                np.float32(0)).compile()
        except Exception:  # e.g. JaxRuntimeError: No such compile option
            continue
        known[name] = value
    return known


def quick_jit(fun: Callable, **jit_kwargs) -> Callable:
    """``jax.jit(fun, **jit_kwargs)`` compiled with :func:`quick_compile_options` on CPU.

    For programs a run calls once or once per stage (initialisation, a stage's data,
    generation): on a short run their compilation is on the critical path, and their
    running time is small at any optimisation level. On other platforms XLA's
    defaults. Called inside another trace it is a plain nested
    ``jax.jit`` (JAX takes compiler options only at the top level; the outer program's
    apply).
    """
    default = jax.jit(fun, **jit_kwargs)
    quick: list[Callable] = []  # made at the first call on CPU: the options need XLA

    @functools.wraps(fun)
    def call(*args, **kwargs):
        traced = any(isinstance(leaf, jax.core.Tracer)
                     for leaf in jax.tree_util.tree_leaves((args, kwargs)))
        if traced or jax.default_backend() != "cpu":
            return default(*args, **kwargs)
        if not quick:
            quick.append(jax.jit(fun, compiler_options=quick_compile_options(), **jit_kwargs))
        return quick[0](*args, **kwargs)

    return call
