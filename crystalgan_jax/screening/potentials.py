"""The interatomic potentials screening can use, by name, as ASE calculators.

- ``chgnet``: CHGNet's pretrained model (:func:`crystalgan_jax.screening.relax.load_calculator`),
  the ``screen`` extra;
- ``emt``: ASE's EMT (Pd, Ni, Cu, Ag, Au, Pt, Al, H, ...), no extra: a fast stand-in for
  tests, not a materials model.

:func:`load` gives the calculator and its label (name and version, e.g. ``"CHGNet
0.3.0"``): the label goes into every output and into the hull cache's key, so relaxations
by different potentials or versions are never mixed. Nothing here imports torch until a
potential that needs it is loaded.
"""

from __future__ import annotations

import importlib.util

NAMES = ("chgnet", "emt")
# the extra each potential needs, and the module that tells whether it is installed
EXTRAS = {"chgnet": ("screen", "chgnet")}
INSTALL_HINT = ("pip install 'torch==2.13.0+cpu' && pip install -e '.[screen]' "
                "(the CPU build of PyTorch first, as .ci/run and run.sh do)")


class MissingExtra(RuntimeError):
    """A potential's optional dependencies are not installed (the message says how)."""


def check_installed(name: str) -> None:
    """Raises :class:`MissingExtra` (one line naming the install command) or ValueError."""
    if name not in NAMES:
        raise ValueError(f"unknown potential {name!r}; one of {', '.join(NAMES)}")
    if name in EXTRAS:
        extra, module = EXTRAS[name]
        if importlib.util.find_spec(module) is None:
            raise MissingExtra(f"the {name} potential needs the '{extra}' extra, not "
                               f"installed here: {INSTALL_HINT}")


def load(name: str, threads: int = 1):
    """``(calculator, label)`` of the potential ``name`` (:data:`NAMES`).

    Args:
      threads: PyTorch and BLAS threads of this process (CHGNet).
    Raises:
      MissingExtra: its extra is not installed.
    """
    check_installed(name)
    if name == "emt":
        import ase
        from ase.calculators.emt import EMT

        return EMT(), f"EMT (ASE {ase.__version__})"
    from crystalgan_jax.screening import relax

    calculator = relax.load_calculator(threads)
    return calculator, f"CHGNet {relax.model_version(calculator)}"
