"""The interatomic potentials screening can use, by name: one registry, lazy imports.

- ``chgnet``: CHGNet's pretrained model (:func:`crystalgan_jax.screening.relax.load_calculator`),
  the ``screen`` extra;
- ``sevennet``: SevenNet-l3i5 (:data:`SEVENNET_MODEL`), the ``sevennet`` extra;
- ``emt``: ASE's EMT (Pd, Ni, Cu, Ag, Au, Pt, Al, H, C, N, O), no extra; a fast stand-in for
  tests, not a judge of hydrides.

:func:`load` returns ``(calculator, name with version)``, e.g.
``"SevenNet-l3i5 (sevenn 0.13.0)"``; the name goes into the hull's cache key and into every
output. A potential whose package is missing raises :class:`MissingExtraError`, whose
message is one line naming the pip command.

Which SevenNet. The ``sevenn`` wheel ships three checkpoints that load offline
(SevenNet-0, SevenNet-l3i5, SevenNet-MF-0); its other models are downloaded when loaded,
which fails without a network. SevenNet-l3i5 is used: of the three it is the best at
telling stable from unstable crystals (Matbench Discovery, unique-prototype split, F1 0.76
against 0.61 for CHGNet 0.3.0), it is trained on the same MPtrj data (PBE/PBE+U, Materials
Project scale) as CHGNet, so the two hulls are on one energy scale, and MF-0 needs a
choice of fidelity head for no gain on this data. Its cost: measured on 2 busy cores, one
thread, a 4-atom fcc Pd cell, 0.2-0.3 s per energy and forces call against 0.08 s for
SevenNet-0 (load 2.2 s for either): a 200-step relaxation of a small cell is under a
minute.

Importing this module loads neither torch nor any potential.
"""

from __future__ import annotations

import contextlib
import io as stdio
import time
import warnings
from typing import Any, Callable

POTENTIALS = ("chgnet", "sevennet", "emt")
SEVENNET_MODEL = "7net-l3i5"  # sevenn's name of the bundled SevenNet-l3i5 checkpoint
SEVENNET_LABEL = "SevenNet-l3i5"
# pip command that installs each potential's package (with the CPU build of torch first)
INSTALL = {"chgnet": "pip install 'torch==2.13.0+cpu' && pip install -e '.[screen]'",
           "sevennet": "pip install 'torch==2.13.0+cpu' && pip install -e '.[sevennet]'",
           "emt": "pip install ase"}


# the module each potential's package provides (checked without importing it)
MODULES = {"chgnet": "chgnet", "sevennet": "sevenn", "emt": "ase"}


class MissingExtraError(RuntimeError):
    """A potential's package is not installed; the message is one line with the fix."""


def check_installed(name: str) -> None:
    """Raises ValueError (unknown name) or :class:`MissingExtraError` (one line naming the
    pip command), without importing the potential's package (torch takes seconds)."""
    import importlib.util

    if name not in LOADERS:
        raise ValueError(f"unknown potential {name}: choose from {', '.join(POTENTIALS)}")
    if importlib.util.find_spec(MODULES[name]) is None:
        raise MissingExtraError(f"the {name} potential needs the {MODULES[name]} package, "
                                f"not installed here: {INSTALL[name]}")


def parse_names(text: str) -> list[str]:
    """``"chgnet,sevennet"`` -> ``["chgnet", "sevennet"]`` (first: the primary).

    Raises:
      ValueError: an unknown name, a repeated one, or none at all (one-line message).
    """
    names = [n.strip().lower() for n in text.split(",") if n.strip()]
    if not names:
        raise ValueError("no potential given: use e.g. --potentials=chgnet,sevennet")
    unknown = [n for n in names if n not in POTENTIALS]
    if unknown:
        raise ValueError(f"unknown potential {', '.join(unknown)}: choose from "
                         f"{', '.join(POTENTIALS)}")
    if len(set(names)) != len(names):
        raise ValueError(f"a potential is named twice in {text!r}")
    return names


def pin_threads(threads: int, with_torch: bool = True) -> None:
    """PyTorch's intra-op threads (``with_torch``) and this process's BLAS / OpenMP pools
    (threadpoolctl, where installed), from now on. Set explicitly: with the default (all
    cores) processes sharing the cores slow each other down many times over; measured on 2
    busy cores, each 3x3 LAPACK call of ASE's FrechetCellFilter took 1-20 ms with
    OpenBLAS's default threads against 0.01 ms with one, and a 10-step relaxation 38 s
    against 13 s."""
    if with_torch:
        import torch

        torch.set_num_threads(threads)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # (EMT without the screen extra)
        return
    threadpool_limits(limits=threads)  # stays in force: not used as a context manager


def timed(calculator) -> Any:
    """Adds ``calculator.seconds``: the wall time spent in its ``calculate`` (s)."""
    calculator.seconds = 0.0
    inner = calculator.calculate

    def timed(*args, **kwargs):
        tic = time.perf_counter()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return inner(*args, **kwargs)
        finally:
            calculator.seconds += time.perf_counter() - tic

    calculator.calculate = timed
    return calculator


def _need(module: str, potential: str) -> None:
    """Imports ``module`` or raises :class:`MissingExtraError` naming the pip command."""
    import importlib

    try:
        importlib.import_module(module)
    except ImportError as err:
        raise MissingExtraError(f"the {potential} potential needs the {module} package "
                                f"({err}): {INSTALL[potential]}") from None


def _chgnet(threads: int, device: str):
    _need("chgnet", "chgnet")
    from crystalgan_jax.screening import relax

    calculator = relax.load_calculator(threads, device)
    return calculator, f"CHGNet {relax.model_version(calculator)}"


def _sevennet(threads: int, device: str):
    _need("sevenn", "sevennet")
    pin_threads(threads)
    import sevenn
    from sevenn.calculator import SevenNetCalculator

    with contextlib.redirect_stdout(stdio.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch and e3nn warnings on load
        calculator = SevenNetCalculator(SEVENNET_MODEL, device=device)
    return timed(calculator), f"{SEVENNET_LABEL} (sevenn {sevenn.__version__})"


def _emt(threads: int, device: str):
    import ase
    from ase.calculators.emt import EMT

    pin_threads(threads, with_torch=False)  # the cell filter's 3x3 LAPACK calls
    return timed(EMT()), f"EMT (ASE {ase.__version__})"


LOADERS: dict[str, Callable[[int, str], tuple[Any, str]]] = {
    "chgnet": _chgnet, "sevennet": _sevennet, "emt": _emt}


def load(name: str, threads: int = 1, device: str = "cpu") -> tuple[Any, str]:
    """A potential as an ASE calculator, and its name with version.

    Args:
      name: one of :data:`POTENTIALS`.
      threads: torch intra-op threads and BLAS/OpenMP pool size of this process (as
        :func:`crystalgan_jax.screening.relax.load_calculator`; EMT uses none).
      device: "cpu" or "cuda" (torch potentials).
    Returns:
      ``(calculator, "name version")``; the calculator has ``seconds``, its wall time in
      ``calculate`` so far.
    Raises:
      ValueError: unknown name or threads < 1.
      MissingExtraError: the potential's package is not installed.
    """
    if name not in LOADERS:
        raise ValueError(f"unknown potential {name}: choose from {', '.join(POTENTIALS)}")
    if threads < 1:
        raise ValueError(f"threads must be at least 1, got {threads}")
    return LOADERS[name](threads, device)
