"""Two potentials: consensus verdicts, the potentials' registry, SevenNet, screen.py --potentials.

The consensus tests use hand-made energies; the SevenNet ones skip where the ``sevennet``
extra is missing and relax 1-2 atom cells for a few steps.
"""

import json
import os
import subprocess
import sys

import pytest
from pymatgen.core import Lattice, Structure

from crystalgan_jax.materials import io
from crystalgan_jax.screening import consensus, potentials, second_opinion
from crystalgan_jax.screening import relax as relaxing
from tests.conftest import REPO
from tests.test_screening import rocksalt, ternary

T = 0.1  # eV/atom


def test_verdicts_on_hand_made_energies():
    assert consensus.verdict(0.02, 0.05, T) == "both stable"
    assert consensus.verdict(T, T, T) == "both stable"  # the threshold itself is stable
    assert consensus.verdict(0.02, 0.25, T) == "disagree"
    assert consensus.verdict(0.3, -0.01, T) == "disagree"
    assert consensus.verdict(0.3, 0.2, T) == "both unstable"
    assert consensus.verdict(None, 0.0, T) == "unknown"
    assert consensus.verdict(0.0, float("nan"), T) == "unknown"


def test_compare_rank_and_agreement():
    primary = {"a": 0.30, "b": 0.05, "c": -0.02, "d": 0.08, "e": None, "f": 0.5}
    second = {"a": 0.20, "b": 0.25, "c": 0.04, "d": 0.00, "e": 0.01}  # f missing
    rows = consensus.compare(list(primary), primary, second, T)
    by = {r["name"]: r for r in rows}
    assert [r["name"] for r in rows] == list(primary)
    assert by["a"]["difference"] == pytest.approx(-0.10, abs=1e-12)
    assert by["b"]["difference"] == pytest.approx(0.20, abs=1e-12)
    assert by["e"]["difference"] is None and by["f"]["e_hull_second"] is None
    assert {n: r["consensus"] for n, r in by.items()} == {
        "a": "both unstable", "b": "disagree", "c": "both stable", "d": "both stable",
        "e": "unknown", "f": "unknown"}
    # both stable first (c mean 0.01 before d mean 0.04), then disagree, unstable, unknown
    # (e's only value 0.01 before f's 0.5)
    assert [r["name"] for r in consensus.rank(rows)] == ["c", "d", "b", "a", "e", "f"]
    counts = consensus.agreement(rows)
    assert counts == {"both stable": 2, "disagree": 1, "both unstable": 1, "unknown": 2,
                      "agree": 3, "known": 4}
    md = consensus.markdown(rows, "CHGNet 0.3.0", "SevenNet-l3i5 (sevenn 0.13.0)", T,
                            "single_point", {"c": "PdNiH2"})
    assert md.startswith("## Second opinion")
    table = [line for line in md.splitlines() if line.startswith("| 1 |")]
    assert table == ["| 1 | c | PdNiH2 | -0.020 | 0.040 | 0.060 | both stable |"]


def test_ties_in_mean_are_broken_by_the_larger_e_hull():
    rows = consensus.compare(["x", "y"], {"x": 0.0, "y": 0.04}, {"x": 0.08, "y": 0.04}, T)
    assert [r["name"] for r in consensus.rank(rows)] == ["y", "x"]


def test_parse_names_and_bad_input():
    assert potentials.parse_names("chgnet, SevenNet") == ["chgnet", "sevennet"]
    for bad, match in (("", "no potential"), ("chgnet,mace", "unknown potential mace"),
                       ("emt,emt", "twice")):
        with pytest.raises(ValueError, match=match):
            potentials.parse_names(bad)
    with pytest.raises(ValueError, match="unknown potential"):
        potentials.load("mace")


def test_missing_extra_is_a_one_line_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "sevenn", None)  # import sevenn now raises ImportError
    with pytest.raises(potentials.MissingExtraError) as err:
        potentials.load("sevennet")
    text = str(err.value)
    assert "\n" not in text and "pip install -e '.[sevennet]'" in text


def test_screen_script_missing_extra_exits_with_the_hint(tmp_path):
    blocker = tmp_path / "blocked" / "sevenn"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('sevenn hidden by the test')\n")
    for metal, a in (("Pd", 4.1), ("Ni", 3.7)):
        io.write_poscar(rocksalt(metal, a), tmp_path / f"{metal}H" / "rocksalt.vasp")
    io.write_poscar(ternary(), tmp_path / "candidates" / "good.vasp")
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "CRYSTALGAN_CACHE": str(tmp_path / "cache"),
           "PYTHONPATH": os.pathsep.join([str(tmp_path / "blocked"), str(REPO)])}
    proc = subprocess.run(
        [sys.executable, str(REPO / "experiments" / "screen.py"),
         f"--structures={tmp_path / 'candidates'}", f"--data_ah={tmp_path / 'PdH'}",
         f"--data_bh={tmp_path / 'NiH'}", "--element_a=Pd", "--element_b=Ni",
         "--potentials=emt,sevennet"], cwd=REPO, capture_output=True, text=True,
        timeout=300, env=env)
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: the sevennet potential needs the sevenn package")
    assert "pip install" in last and "Traceback" not in proc.stderr


def test_emt_single_point_and_relaxation_judgements():
    calculator, name = potentials.load("emt")
    assert name.startswith("EMT (ASE ")
    cell = rocksalt("Pd", 4.3)  # stretched: a relaxation lowers the energy
    sp = second_opinion.single_point(cell, calculator)
    own = second_opinion.judgement(relaxing.relax(cell, calculator, fmax=0.05, max_steps=30))
    assert sp.ok and own.ok and sp.steps == 0 and own.steps > 0
    assert own.energy_per_atom < sp.energy_per_atom
    assert calculator.seconds > 0
    bad = second_opinion.single_point(Structure(Lattice.cubic(3), ["Mg"], [[0, 0, 0]]),
                                      calculator)  # EMT has no Mg
    assert not bad.ok and bad.status == "error" and bad.reason


@pytest.fixture(scope="module")
def sevennet():
    pytest.importorskip("sevenn", reason="needs the sevennet extra: pip install -e '.[sevennet]'")
    return potentials.load("sevennet", threads=1)


def test_tiny_sevennet_relaxation(sevennet):
    calculator, name = sevennet
    assert name.startswith("SevenNet-l3i5 (sevenn ")
    import torch

    assert torch.get_num_threads() == 1
    cell = rocksalt("Pd", 4.3)  # 2 atoms, stretched from ~4.1 A
    r = relaxing.relax(cell, calculator, fmax=0.05, max_steps=8)
    assert r.ok and r.steps > 0 and r.final is not None
    assert r.energies[-1] < r.energies[0]  # FIRE went downhill
    assert r.final.volume < cell.volume  # and shrank the stretched cell
    assert -6.0 < r.energy_per_atom < -2.0  # a Pd-H compound on the MP scale, eV/atom
    assert calculator.seconds > 0


def test_screen_script_with_two_potentials(tmp_path, sevennet):
    for metal, a in (("Pd", 4.1), ("Ni", 3.7)):
        io.write_poscar(rocksalt(metal, a), tmp_path / f"{metal}H" / "rocksalt.vasp")
    folder = tmp_path / "candidates"
    io.write_poscar(ternary(), folder / "good.vasp")
    io.write_poscar(rocksalt("Pd", 4.1), folder / "pdh.vasp")
    cmd = [sys.executable, str(REPO / "experiments" / "screen.py"), f"--structures={folder}",
           f"--data_ah={tmp_path / 'PdH'}", f"--data_bh={tmp_path / 'NiH'}",
           "--element_a=Pd", "--element_b=Ni", "--max_steps=3", "--only=all",
           "--potentials=emt,sevennet"]
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "CRYSTALGAN_CACHE": str(tmp_path / "cache")}

    def run():
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600,
                              env=env)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc

    run()
    out = folder / "screening"
    result = json.loads((out / "screening.json").read_text())
    primary, second = result["settings"]["potentials"]
    assert primary.startswith("EMT") and second.startswith("SevenNet-l3i5")
    assert result["second_opinion"]["mode"] == "relax"  # screen.py's default
    threshold = result["stability_threshold_eV_per_atom"]
    for row in result["structures"]:
        e1 = row["e_hull_eV_per_atom"]
        e2 = row["second_opinion"]["e_hull_eV_per_atom"]
        assert row["e_hull_by_potential"] == {primary: e1, second: e2}
        assert e2 is not None and row["e_hull_difference_eV_per_atom"] == pytest.approx(
            e2 - e1, abs=1e-9)
        assert row["consensus"] == consensus.verdict(e1, e2, threshold)
    # the second potential's hull: the same phases, its own energies
    names1 = [e["name"] for e in result["settings"]["hull"]["entries"]]
    names2 = [e["name"] for e in result["second_opinion"]["hull"]["entries"]]
    assert names1 == names2
    assert result["second_opinion"]["hull_cache"] != result["settings"]["hull_cache"]
    md = (out / "screening.md").read_text()
    assert md.count("## Second opinion") == 1 and "SevenNet-l3i5 (sevenn" in md
    # a rerun reuses every judgement and the cached hulls
    second_run = run()
    assert "2 judgements reused" in second_run.stderr
    assert "[second sevennet-l3i5]" not in second_run.stderr
    again = json.loads((out / "screening.json").read_text())
    assert [r["consensus"] for r in again["structures"]] == [
        r["consensus"] for r in result["structures"]]
    assert (out / "screening.md").read_text().count("## Second opinion") == 1
