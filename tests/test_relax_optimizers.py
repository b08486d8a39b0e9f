"""relax() with each ASE optimizer on the FrechetCellFilter (EMT: no torch, a second)."""

import pytest
from pymatgen.core import Lattice, Structure

from crystalgan_jax.screening import relax as screening

pytest.importorskip("ase.calculators.emt")


@pytest.mark.parametrize("optimizer", screening.OPTIMIZERS)
def test_each_optimizer_relaxes_downhill(optimizer):
    from ase.calculators.emt import EMT

    a = 4.3  # strained rocksalt PdH
    s = Structure(Lattice([[0, a / 2, a / 2], [a / 2, 0, a / 2], [a / 2, a / 2, 0]]),
                  ["Pd", "H"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    r = screening.relax(s, EMT(), fmax=0.05, max_steps=200, optimizer=optimizer)
    assert r.converged, r.reason
    assert r.energies[-1] < r.energies[0] - 1e-3
    assert r.max_force <= 0.05 + 1e-9


def test_unknown_optimizer_is_refused():
    s = Structure(Lattice.cubic(3.0), ["Pd"], [[0, 0, 0]])
    with pytest.raises(ValueError, match="optimizer must be one of"):
        screening.relax(s, None, optimizer="MDMin")
