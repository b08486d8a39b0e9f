"""The screening's symmetry pass: which relaxed candidates restart from a symmetric cell,
and which relaxation is reported (EMT stands in for CHGNet)."""

import numpy as np
import pytest
from ase.calculators.emt import EMT
from pymatgen.core import Lattice, Structure

from crystalgan_jax.materials import candidates, evaluation
from crystalgan_jax.screening import relax as screening, symmetry_pass


def _distorted_fcc(shift: float) -> Structure:
    """Conventional fcc Pd4 with one atom moved by ``shift`` A: P1-like at 0.1 A, fcc at 0.5 A."""
    s = Structure(Lattice.cubic(3.95), ["Pd"] * 4,
                  [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    s.translate_sites([1], [shift / 3.95, 0.7 * shift / 3.95, 0.0], frac_coords=True)
    return s


def _as_relaxed(structure: Structure) -> screening.Relaxation:
    """A "converged" first relaxation that ended in ``structure`` (EMT's energy of it)."""
    r = screening.relax(structure, EMT(), fmax=1e3, max_steps=0)
    assert r.converged
    return r


def test_a_candidate_that_gains_symmetry_restarts_and_the_lower_is_kept():
    distorted = _distorted_fcc(0.3)
    assert evaluation.spacegroup(distorted, evaluation.SYMPREC)[1] < 225
    first = _as_relaxed(distorted)
    symmetric = _as_relaxed(Structure(Lattice.cubic(3.95), ["Pd"], [[0, 0, 0]]))
    named = [("bent.vasp", distorted), ("fcc.vasp", symmetric.final)]
    jobs = symmetry_pass.jobs(named, [first, symmetric], symprec=0.5)
    # the fcc cell has nothing to gain; the bent one becomes fcc's primitive cell
    assert [j.name for j in jobs] == ["bent.vasp" + symmetry_pass.SUFFIX]
    job = jobs[0]
    assert job.index == 0 and job.spacegroup_snapped == 225 and len(job.structure) == 1
    second = screening.relax(job.structure, EMT(), fmax=0.05, max_steps=100)
    reported, info = symmetry_pass.keep_lower(first, second, job, 0.5)
    assert second.energy_per_atom < first.energy_per_atom
    assert info["kept"] and info["energy_change_eV_per_atom"] == pytest.approx(
        second.energy_per_atom - first.energy_per_atom)
    assert reported.final is second.final and reported.initial is first.initial
    assert reported.steps == first.steps + second.steps
    # the trajectory stays in the first's units: its last value per atom is the final energy
    assert reported.energies[-1] / len(first.initial) == pytest.approx(second.energy_per_atom)
    # a second relaxation that ends higher (or does not converge) is not kept
    worse = screening.relax(_distorted_fcc(0.6), EMT(), fmax=1e3, max_steps=0)
    kept, info = symmetry_pass.keep_lower(second, worse, job, 0.5)
    assert kept is second and not info["kept"]
    unconverged = screening.relax(job.structure, EMT(), fmax=1e-9, max_steps=1)
    assert not unconverged.converged
    kept, info = symmetry_pass.keep_lower(first, unconverged, job, 0.5)
    assert kept is first and not info["kept"] and info["status"] == "not_converged"


def test_unconverged_candidates_are_not_restarted():
    distorted = _distorted_fcc(0.3)
    r = screening.relax(distorted, EMT(), fmax=1e-9, max_steps=1)
    assert not r.converged
    assert symmetry_pass.jobs([("bent", distorted)], [r], symprec=0.5) == []
    assert np.isfinite(r.energy_per_atom)


def test_screen_script_runs_the_pass_journals_it_and_resumes(tmp_path):
    import json
    import sys

    from crystalgan_jax.materials import io
    from tests.conftest import REPO
    from tests.test_screening import rocksalt, run_screen, ternary

    for metal, a in (("Pd", 4.1), ("Ni", 3.7)):
        io.write_poscar(rocksalt(metal, a), tmp_path / f"{metal}H" / "rocksalt.vasp")
    bent = ternary()
    bent.translate_sites([2], [0.06, 0.04, 0.03], frac_coords=True)  # one H off its site
    low = evaluation.spacegroup(bent, evaluation.SYMPREC)[1]
    assert candidates.snap_to_symmetry(bent, 0.5)[1] > low
    folder = tmp_path / "candidates"
    io.write_poscar(bent, folder / "bent.vasp")
    # fmax so large that the first relaxation ends where it starts: the bent cell, which
    # the pass symmetrises (0.5 A) and relaxes again
    cmd = [sys.executable, str(REPO / "experiments" / "screen.py"), f"--structures={folder}",
           f"--data_ah={tmp_path / 'PdH'}", f"--data_bh={tmp_path / 'NiH'}", "--element_a=Pd",
           "--element_b=Ni", "--potential=emt", "--fmax=1000", "--max_steps=5",
           "--symmetrize=0.5", "--workers=1"]

    def run():
        return run_screen(cmd, tmp_path)

    first = run()
    assert "[symmetrize] 1/1" in first.stderr
    out = folder / "screening"
    result = json.loads((out / "screening.json").read_text())
    row = result["structures"][0]
    p = row["symmetry_pass"]
    assert p["spacegroup_first"] == low and p["spacegroup_snapped"] > low
    assert p["kept"] == (p["energy_change_eV_per_atom"] < 0)
    assert result["settings"]["symmetry_pass"] == {"symprec_A": 0.5, "restarted": 1,
                                                   "kept": int(p["kept"])}
    if p["kept"]:  # the reported structure is the symmetric one, and so are its files
        assert row["displacement"]["spacegroup_after"][1] > low
        relaxed = io.read_structure(out / row["relaxed_file"])
        assert evaluation.spacegroup(relaxed, evaluation.SYMPREC)[1] > low
    names = [json.loads(line).get("name") for line in
             (out / "relaxations.jsonl").read_text().splitlines()]
    assert "bent.vasp" + symmetry_pass.SUFFIX in names
    second = run()  # both relaxations come back from the journal
    assert "[symmetrize]" not in second.stderr and "[screen]" not in second.stderr
    again = json.loads((out / "screening.json").read_text())
    assert again["structures"][0]["symmetry_pass"] == p
