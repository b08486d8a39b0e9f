"""DFT check: settings, a tiny GPAW calculation, the journal resuming after a real signal.

GPAW tests skip (with the reason) where the ``dft`` extra cannot be imported; they run at a
low cutoff and few k-points, a second or two per calculation.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from ase.build import bulk
from pymatgen.core import Lattice, Structure
from pymatgen.io.ase import AseAtomsAdaptor

from crystalgan_jax.materials import io
from crystalgan_jax.screening import dft, dft_check
from crystalgan_jax.screening.hull import reference_structure
from crystalgan_jax.screening.system_hull import Phase, SystemHull
from tests.conftest import REPO
from tests.screening_fakes import fake_energy_per_atom, relaxation

TINY = dft.DFTSettings(cutoff_eV=200.0, kpoint_density=1.5, h2_box=5.0, max_scf=60)
TINY_FLAGS = ["--cutoff=200", "--kpoint_density=1.5", "--h2_box=5", "--max_scf=60"]


def needs_gpaw():
    reason = dft.available()
    if reason:
        pytest.skip(reason)


def rocksalt(metal: str, a: float) -> Structure:
    return Structure(Lattice([[0, a / 2, a / 2], [a / 2, 0, a / 2], [a / 2, a / 2, 0]]),
                     [metal, "H"], [[0, 0, 0], [0.5, 0.5, 0.5]])


def test_settings_mesh_and_estimate():
    pd = AseAtomsAdaptor.get_structure(bulk("Pd", cubic=True))  # a = 3.89 A
    n = dft.kpoint_mesh(pd, 3.0)
    assert n == (5, 5, 5)  # ceil(3.0 * 2 pi / 3.89) = ceil(4.85)
    assert dft.kpoint_mesh(pd, 0.01) == (1, 1, 1)
    assert dft.irreducible_kpoints(pd, n) < 125  # cubic symmetry folds the mesh
    assert dft.spin_polarised(rocksalt("Ni", 3.7)) and not dft.spin_polarised(pd)
    assert dft.valence_electrons(rocksalt("Pd", 4.1)) == 11
    small, big = (dft.estimate_seconds(rocksalt("Pd", 4.1), k, 400.0) for k in (4, 8))
    assert big > small > dft.SECONDS_OVERHEAD
    # spin doubles the electronic part
    ni, pd_ = rocksalt("Ni", 4.1), rocksalt("Pd", 4.1)
    assert (dft.estimate_seconds(ni, 4, 400.0) - dft.SECONDS_OVERHEAD) == pytest.approx(
        2 * (dft.estimate_seconds(pd_, 4, 400.0) - dft.SECONDS_OVERHEAD))
    for bad in ({"smearing": "gaussian"}, {"cutoff_eV": 0.0}, {"max_scf": -1}):
        with pytest.raises(ValueError):
            dft.DFTSettings(**bad)
    h2 = dft.h2_reference(0.75, 8.0)
    assert h2.get_distance(0, 1) == pytest.approx(0.75) and h2.volume == pytest.approx(512)


def test_report_section_is_replaced(tmp_path):
    report = tmp_path / "report.md"
    assert not dft_check.write_section(report, "## DFT check\n\nx\n")
    report.write_text("# Run\n\n## DFT check\n\nold\n\n## Screening (CHGNet)\n\nkept\n")
    assert dft_check.write_section(report, "## DFT check\n\nnew\n")
    text = report.read_text()
    assert "old" not in text and text.count("## DFT check") == 1
    assert "new" in text and "kept" in text


def test_tiny_dft_calculations():
    needs_gpaw()
    pd = dft.single_point(dft.Task("Pd", AseAtomsAdaptor.get_structure(bulk("Pd"))), TINY)
    h2 = dft.single_point(dft.Task("H", dft.h2_reference(0.75, 5.0), (1, 1, 1)), TINY)
    ni = dft.single_point(dft.Task("Ni", AseAtomsAdaptor.get_structure(bulk("Ni"))), TINY)
    for r in (pd, h2, ni):
        assert r.ok and r.reason is None, r.reason
        assert r.seconds > 0 and r.estimate_s > 0
    assert h2.kpts == [1, 1, 1] and h2.n_kpoints == 1 and not h2.spin
    assert ni.spin and ni.magmom is not None and 0.3 < ni.magmom < 1.0  # fcc Ni, ~0.6 mu_B
    assert pd.magmom is None
    # the same H2 stretched: higher energy (the bond is near 0.75 A in PBE)
    stretched = dft.single_point(dft.Task("H", dft.h2_reference(1.0, 5.0), (1, 1, 1)), TINY)
    assert stretched.energy_eV > h2.energy_eV + 0.3
    # too few SCF iterations: reported, not raised
    short = dft.single_point(dft.Task("Pd", AseAtomsAdaptor.get_structure(bulk("Pd"))),
                             dft.DFTSettings(cutoff_eV=200.0, kpoint_density=1.5, max_scf=2))
    assert short.status == "not_converged" and "SCF not converged" in short.reason
    assert short.energy_eV is None


def fake_run(tmp_path):
    """A run folder whose screening (fake energies) and hull cache verify.py can read."""
    phases = []
    for symbol in ("Pd", "Ni", "H"):
        s, _ = reference_structure(symbol)
        phases.append(Phase("element", symbol, relaxation(s, fake_energy_per_atom(s))))
    pdh = rocksalt("Pd", 4.1)
    phases.append(Phase("training", "000 PdH", relaxation(pdh, fake_energy_per_atom(pdh))))
    system = SystemHull(("Pd", "Ni", "H"), phases, "testkey")
    (tmp_path / "cache" / "hulls").mkdir(parents=True)
    (tmp_path / "cache" / "hulls" / "testkey.json").write_text(json.dumps(system.to_json()))
    hull = system.hull()
    run = tmp_path / "run"
    folder = run / "screening"
    cand = rocksalt("Pd", 4.0)
    io.write_poscar(cand, folder / "relaxed" / "cand.vasp")
    e = fake_energy_per_atom(cand) + 0.05
    from crystalgan_jax.screening.hull import energetics

    form, e_hull = energetics(hull.phase_diagram(), cand.composition, e)
    result = {"stability_threshold_eV_per_atom": 0.1,
              "settings": {"potential": "Fake 1.0", "hull": hull.to_json(),
                           "hull_cache": "testkey"},
              "structures": [{"name": "cand.vasp", "formula": "Pd1 H1",
                              "relaxation": {"energy_per_atom_eV": e},
                              "formation_energy_eV_per_atom": form,
                              "e_hull_eV_per_atom": e_hull,
                              "relaxed_file": "relaxed/cand.vasp"}]}
    (folder / "screening.json").write_text(json.dumps(result))
    (run / "report.md").write_text("# Run\n\n## Screening (CHGNet)\n\nx\n")
    return run


def test_selection_of_candidates_and_hull_phases(tmp_path, monkeypatch):
    run = fake_run(tmp_path)
    monkeypatch.setenv("CRYSTALGAN_CACHE", str(tmp_path / "cache"))
    result = dft_check.read_screening(run / "screening")
    cands = dft_check.top_candidates(result, run / "screening", 3)
    assert [r["name"] for r, _ in cands] == ["cand.vasp"]
    system = dft_check.load_system_hull(result)
    phases = dft_check.hull_phases(result, system, cands, "decomposition")
    assert list(phases) == ["Pd", "Ni", "H", "training: 000 PdH"]
    tasks = dft_check.tasks(phases, cands, TINY)
    assert [t.name for t in tasks][-1] == "candidate: cand.vasp"
    h = next(t for t in tasks if t.name == "H")
    assert h.kpts == (1, 1, 1) and h.structure.lattice.a == pytest.approx(5.0)
    monkeypatch.setenv("CRYSTALGAN_CACHE", str(tmp_path / "elsewhere"))
    with pytest.raises(dft_check.CheckError, match="hull cache"):
        dft_check.load_system_hull(result)


def test_journal_resumes_after_a_real_signal(tmp_path):
    needs_gpaw()
    run = fake_run(tmp_path)
    journal = run / "screening" / "dft_journal.jsonl"
    cmd = [sys.executable, str(REPO / "experiments" / "verify.py"), f"--run_dir={run}",
           "--top=2", *TINY_FLAGS]
    env = {**os.environ, "CRYSTALGAN_CACHE": str(tmp_path / "cache"), "JAX_PLATFORMS": "cpu"}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if journal.exists() and len(journal.read_text().splitlines()) >= 2:
            break  # the first calculation is journaled
        time.sleep(0.05)
    assert proc.poll() is None, "the check ended before it could be interrupted"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "interrupted" in err and "run the same command again" in err
    done = len(journal.read_text().splitlines()) - 1
    assert 1 <= done < 5 and not (run / "screening" / "dft_check.json").exists()
    assert "estimated" in err  # the estimate came before the first calculation
    second = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"{done} DFT calculations reused" in second.stderr
    computed = [line for line in second.stderr.splitlines() if line.startswith("[dft] ")
                and "/" in line.split()[1]]
    assert len(computed) == 5 - done  # only what was left
    check = json.loads((run / "screening" / "dft_check.json").read_text())
    calc = check["calculations"]
    assert all(r["status"] == "converged" for r in calc.values())
    # the DFT formation energy of the candidate, by hand from the journaled energies
    e = {k: v["energy_per_atom"] for k, v in calc.items()}
    by_hand = e["candidate: cand.vasp"] - (e["Pd"] + e["H"]) / 2
    row = check["candidates"][0]
    assert row["DFT"]["formation_energy_eV_per_atom"] == pytest.approx(by_hand, abs=1e-6)
    # E_hull against the DFT hull of Pd, Ni, H2 and the PdH phase (same composition)
    hull_at_pdh = min(e["training: 000 PdH"], (e["Pd"] + e["H"]) / 2)
    assert row["DFT"]["e_hull_eV_per_atom"] == pytest.approx(
        e["candidate: cand.vasp"] - hull_at_pdh, abs=1e-6)
    mae = check["mae"]["Fake 1.0"]
    assert mae["n_e_hull"] == 1 and mae["n_formation"] == 2
    assert mae["e_hull_eV_per_atom"] == pytest.approx(
        abs(row["Fake 1.0"]["e_hull_eV_per_atom"] - row["DFT"]["e_hull_eV_per_atom"]))
    assert "## DFT check" in (run / "report.md").read_text()
    assert "## Screening (CHGNet)" in (run / "report.md").read_text()
    assert "MAE E_form" in (run / "screening" / "dft_check.md").read_text()


def test_verify_without_gpaw_is_a_one_line_hint(tmp_path):
    blocker = tmp_path / "blocked" / "gpaw"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('gpaw hidden by the test')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "blocked"), str(REPO)])}
    proc = subprocess.run([sys.executable, str(REPO / "experiments" / "verify.py"),
                           f"--run_dir={tmp_path}"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()
    assert len(last) == 1 and last[0].startswith("error: the DFT check needs GPAW")
    assert "pip install" in last[0] and "apt-get install -y libxc-dev" in last[0]


def test_core_package_never_imports_gpaw_or_torch():
    code = ("import sys, crystalgan_jax.screening.dft, crystalgan_jax.screening.dft_check, "
            "crystalgan_jax.screening.potentials, crystalgan_jax.screening.consensus, "
            "crystalgan_jax.screening.second_opinion; print(sorted(m for m in sys.modules if "
            "m.split('.')[0] in ('torch', 'gpaw', 'sevenn', 'chgnet')))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=REPO, timeout=300, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]"


def test_potentials_error_against_dft_on_hand_made_energies():
    """Each potential's MAE against DFT, for the screening's potential and for single points."""
    from crystalgan_jax.screening.hull import Hull

    pd = Structure(Lattice.cubic(3.9), ["Pd"], [[0, 0, 0]])
    ni = Structure(Lattice.cubic(3.5), ["Ni"], [[0, 0, 0]])
    h2 = dft.h2_reference(0.75, 5.0)
    pdh = rocksalt("Pd", 4.1)
    cand = Structure(Lattice.cubic(4.0), ["Pd", "Ni", "H", "H"],
                     [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    phases = {"Pd": pd, "Ni": ni, "H": h2, "training: PdH": pdh}
    dft_e = {"Pd": -5.0, "Ni": -5.5, "H": -3.4, "training: PdH": -4.4,
             "candidate: c.vasp": -4.5}

    def result_of(name, e):
        n = len(cand) if name.startswith("candidate") else len(phases[name])
        return dft.DFTResult(name, "converged", None, e * n, e, n, [1, 1, 1], 1, False, None,
                             1.0, 1.0)
    computed = {k: result_of(k, v) for k, v in dft_e.items()}
    # the screening's potential: every energy DFT's - 0.2 eV/atom, its candidate 0.05 higher
    shifted = {k: v - 0.2 for k, v in dft_e.items()}
    hull = Hull.build(("Pd", "Ni", "H"), {e: shifted[e] for e in ("Pd", "Ni", "H")},
                      [("training: PdH", pdh.composition, shifted["training: PdH"])])
    result = {"settings": {"potential": "P", "hull": hull.to_json()}}
    row = {"name": "c.vasp", "relaxation": {"energy_per_atom_eV": shifted["candidate: c.vasp"]
                                            + 0.05}}
    exact = {k: v + 1.0 for k, v in dft_e.items()}  # a constant per atom: no error at all
    check = dft_check.evaluate(result, phases, [(row, cand)], computed,
                               {"S": exact, "T": {**exact, "candidate: c.vasp": None}})
    assert check["potentials"] == ["P", "S", "T"]
    # P: the candidate's formation energy and E_hull are 0.05 off, PdH's formation energy not
    assert check["mae"]["P"]["e_hull_eV_per_atom"] == pytest.approx(0.05)
    assert check["mae"]["P"]["formation_energy_eV_per_atom"] == pytest.approx(0.025)
    assert check["mae"]["P"]["n_formation"] == 2
    assert check["mae"]["S"]["e_hull_eV_per_atom"] == pytest.approx(0.0, abs=1e-9)
    assert check["mae"]["S"]["formation_energy_eV_per_atom"] == pytest.approx(0.0, abs=1e-9)
    # a single point that failed counts for nothing
    assert check["mae"]["T"]["n_e_hull"] == 0 and check["mae"]["T"]["n_formation"] == 1
    assert "S, T: single points on the same structures as DFT" in dft_check.markdown({
        **check, "settings": TINY.to_json(), "phase_set": "decomposition",
        "calculations": {}, "timing_s": {"dft": 1.0, "estimate": 1.0}})
