"""CHGNet screening: relaxation that never raises, the hull, S.U.N. counts, screen.py.

Relaxations here take a few FIRE steps on cells of 1-3 atoms, so the whole file stays
well under a minute; tests that need CHGNet skip where the ``screen`` extra is missing.
"""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from pymatgen.core import Composition, Lattice, Structure

from crystalgan_jax.materials import io
from crystalgan_jax.screening import hull as hulls, relax as screening, verdicts
from tests.conftest import REPO

STEPS = 4  # FIRE steps per relaxation: enough to move, few enough to be fast


@pytest.fixture(scope="module")
def calculator():
    pytest.importorskip("chgnet", reason="needs the screen extra: pip install -e '.[screen]'")
    return screening.load_calculator(threads=1)


def rocksalt(metal: str, a: float) -> Structure:
    """Primitive rocksalt M-H (2 atoms), lattice constant ``a`` (Angstrom)."""
    return Structure(Lattice([[0, a / 2, a / 2], [a / 2, 0, a / 2], [a / 2, a / 2, 0]]),
                     [metal, "H"], [[0, 0, 0], [0.5, 0.5, 0.5]])


def clash() -> Structure:
    """A Pd-Ni-H cell with Pd and Ni 0.3 A apart: no potential relaxes this sensibly."""
    return Structure(Lattice.cubic(4.0), ["Pd", "Ni", "H"],
                     [[0, 0, 0], [0.3, 0, 0], [2, 2, 2]], coords_are_cartesian=True)


def ternary() -> Structure:
    """A plausible Pd-Ni-H cell: rocksalt-like, Ni on one Pd site (4 atoms)."""
    a = 4.0
    return Structure(Lattice([[0, a, 0], [a / 2, 0, a / 2], [a / 2, 0, -a / 2]]),
                     ["Pd", "Ni", "H", "H"],
                     [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0, 0], [0, 0.5, 0.5]])


def test_core_package_never_imports_torch():
    code = ("import sys, crystalgan_jax.pipeline.job, crystalgan_jax.train, "
            "crystalgan_jax.screening.relax, crystalgan_jax.screening.hull, "
            "crystalgan_jax.screening.verdicts, crystalgan_jax.materials.report; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'chgnet')))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"}, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]"


def test_hull_of_known_energies():
    # A-H edge: elements at 0 eV/atom, AH at -1, A3H at -0.2 (above the A..AH tie line,
    # which is at -0.5 there), AH2 at -0.4 (above AH..H, -2/3 there)
    hull = hulls.Hull.build(["Pd", "H"], {"Pd": 0.0, "H": 0.0},
                                [("ah", Composition("PdH"), -1.0),
                                 ("a3h", Composition("Pd3H"), -0.2),
                                 ("ah2", Composition("PdH2"), -0.4)])
    diagram = hull.phase_diagram()
    cases = {"PdH": (-1.0, 0.0), "Pd3H": (-0.2, 0.3), "PdH2": (-0.4, 2 / 3 - 0.4)}
    for formula, (energy, e_hull) in cases.items():
        formation, above = hulls.energetics(diagram, Composition(formula), energy)
        assert formation == pytest.approx(energy, abs=1e-9)
        assert above == pytest.approx(e_hull, abs=1e-9)
    # a new phase below the hull gets a negative energy above it
    _, below = hulls.energetics(diagram, Composition("PdH"), -1.25)
    assert below == pytest.approx(-0.25, abs=1e-9)
    assert hulls.Hull.from_json(hull.to_json()) == hull
    with pytest.raises(ValueError, match="Ni"):
        hulls.Hull.build(["Pd", "H"], {"Pd": 0.0, "H": 0.0},
                             [("x", Composition("NiH"), -1.0)])


def test_unrelaxable_structure_is_reported_not_fatal(calculator):
    named = [("clash", clash()), ("ternary", ternary())]
    relaxations = screening.relax_all(named, calculator, fmax=0.05, max_steps=STEPS)
    bad, good = relaxations
    assert bad.status in ("diverged", "error") and bad.reason
    assert not bad.ok
    assert good.ok and good.final is not None and 0 < good.steps <= STEPS
    assert len(good.energies) == good.steps + 1
    assert math.isfinite(good.energy_per_atom)
    # FIRE goes downhill from the start (allowing for its overshoots)
    assert good.energies[-1] <= good.energies[0] + 1e-3 * len(named[1][1])

    hull = hulls.Hull.build(["Pd", "Ni", "H"], {"Pd": -5.0, "Ni": -5.5, "H": -3.3}, [])
    result = verdicts.screen(named, relaxations, hull, "Pd", "Ni",
                              novelty_references={"training": [rocksalt("Pd", 4.1)],
                                                  "substitution": [ternary()]},
                              evaluation_options={"d1": 1.8, "d2": 3.0})
    counts = result["counts"]
    assert counts["screened"] == 2 and counts["failed"] == 1 and counts["relaxed"] == 1
    rows = {row["name"]: row for row in result["structures"]}
    assert rows["clash"]["e_hull_eV_per_atom"] is None and rows["clash"]["stable"] is False
    # the relaxed ternary still matches its unrelaxed self, which is in the substitution set
    assert rows["ternary"]["matches"] == {"training": None, "substitution": 0}
    assert rows["ternary"]["novel"] is False and counts["sun"] == 0
    assert rows["ternary"]["after"]["ternary"]
    md = verdicts.markdown(result, "test", {"fmax": 0.05, "max_steps": STEPS})
    assert "diverged" in md or "error" in md


def lower_hull_distance(points: list[tuple[float, float]], x: float, y: float) -> float:
    """Height of (x, y) above the lower convex hull of ``points`` (x in [0, 1]), by hand."""
    best = math.inf
    for x1, y1 in points:  # the hull below x is the lowest chord over x
        for x2, y2 in points:
            if x1 <= x <= x2 and x1 < x2:
                best = min(best, y1 + (y2 - y1) * (x - x1) / (x2 - x1))
            elif x1 == x2 == x:
                best = min(best, y1)
    return y - best


def test_training_binaries_lie_on_the_hull_they_build(calculator):
    binaries = [("PdH", rocksalt("Pd", 4.1)), ("PdH strained", rocksalt("Pd", 4.5)),
                ("NiH", rocksalt("Ni", 3.7)), ("NiH strained", rocksalt("Ni", 4.1))]
    references = hulls.elemental_references(["Pd", "Ni", "H"], calculator, fmax=0.05,
                                                max_steps=STEPS)
    assert references["H"].final.lattice.abc == pytest.approx((hulls.H2_BOX,) * 3)
    relaxed = screening.relax_all(binaries, calculator, fmax=0.05, max_steps=STEPS)
    assert all(r.ok for r in relaxed)
    hull = hulls.hull_from_relaxations(["Pd", "Ni", "H"], references,
                                           [(n, r) for (n, _), r in zip(binaries, relaxed)])
    diagram = hull.phase_diagram()
    mu = {s: r.energy_per_atom for s, r in references.items()}
    by_edge: dict[str, list] = {"Pd": [], "Ni": []}
    for (name, s), r in zip(binaries, relaxed):
        metal = name[:2]
        formation = r.energy_per_atom - (mu[metal] + mu["H"]) / 2  # M1 H1
        by_edge[metal].append((name, formation))
    for metal, rows in by_edge.items():
        points = [(0.0, 0.0), (1.0, 0.0)] + [(0.5, f) for _, f in rows]
        for name, formation in rows:
            r = relaxed[[n for n, _ in binaries].index(name)]
            f, e_hull = hulls.energetics(diagram, r.final.composition, r.energy_per_atom)
            assert f == pytest.approx(formation, abs=1e-6)
            assert e_hull == pytest.approx(lower_hull_distance(points, 0.5, formation),
                                           abs=1e-6)
            assert e_hull >= -1e-9  # nothing lies below the hull it builds
        lowest = min(f for _, f in rows)
        # the lowest of each composition is on the hull exactly when it is below the elements
        _, e_lowest = hulls.energetics(diagram, Composition(f"{metal}H"),
                                           lowest + (mu[metal] + mu["H"]) / 2)
        assert e_lowest == pytest.approx(max(lowest, 0.0), abs=1e-6)


def run_screen(cmd: list[str], tmp_path) -> subprocess.CompletedProcess:
    """experiments/screen.py as ``cmd`` with a hull cache in ``tmp_path``; must exit 0."""
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "JAX_PLATFORMS": "cpu",
                               "CRYSTALGAN_CACHE": str(tmp_path / "cache")})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_screen_script_writes_and_resumes(tmp_path):
    pytest.importorskip("chgnet", reason="needs the screen extra: pip install -e '.[screen]'")
    for metal, a in (("Pd", 4.1), ("Ni", 3.7)):
        io.write_poscar(rocksalt(metal, a), tmp_path / f"{metal}H" / "rocksalt.vasp")
    folder = tmp_path / "candidates"
    io.write_poscar(ternary(), folder / "good.vasp")
    io.write_poscar(clash(), folder / "sub" / "clash.vasp")
    cmd = [sys.executable, str(REPO / "experiments" / "screen.py"), f"--structures={folder}",
           f"--data_ah={tmp_path / 'PdH'}", f"--data_bh={tmp_path / 'NiH'}",
           "--element_a=Pd", "--element_b=Ni", "--max_steps=2", "--fmax=0.05"]

    def run():
        return run_screen(cmd, tmp_path)

    first = run()
    assert "[screen] 2/2" in first.stderr and "eta" in first.stderr
    out = folder / "screening"
    result = json.loads((out / "screening.json").read_text())
    assert result["counts"]["screened"] == 2 and result["counts"]["failed"] == 1
    assert json.loads(first.stdout.strip().splitlines()[-1]) == result["counts"]
    rows = {r["name"]: r for r in result["structures"]}
    assert set(rows) == {"good.vasp", "sub/clash.vasp"}
    relaxed = out / rows["good.vasp"]["relaxed_file"]
    from ase.io import read as ase_read

    ours, theirs = io.read_structure(relaxed), ase_read(relaxed)
    assert ours.composition == Composition("PdNiH2")
    assert len(theirs) == 4 and sorted(theirs.get_chemical_symbols()) == ["H", "H", "Ni", "Pd"]
    assert np.allclose(ours.lattice.matrix, theirs.cell[:], atol=1e-6)
    assert "good.vasp" in (out / "screening.md").read_text()
    # the same command again reuses every relaxation from the journals
    second = run()
    assert "2 relaxations reused" in second.stderr and "[screen]" not in second.stderr
    assert json.loads((out / "screening.json").read_text())["counts"] == result["counts"]
    assert "read from the cache" in second.stderr and "[hull]" not in second.stderr
    hull_names = [e["name"] for e in result["settings"]["hull"]["entries"]]
    assert {"alloy: L1_2 Pd3Ni", "alloy: L1_2 PdNi3", "alloy: L1_0 PdNi",
            "alloy: B2 PdNi"} <= set(hull_names)


def test_dense_cell_is_refused_before_chgnet():
    # PdH6 of the reference data (1.92 A^3 per atom): CHGNet's angle graph would need GBs
    h = [[.25, .5, 0], [.75, .5, 0], [.75, 0, .5], [.5, .75, 0], [.5, 0, .75], [.5, 0, .25],
         [.5, .25, 0], [0, .75, .5], [0, .5, .75], [0, .5, .25], [0, .25, .5], [.25, 0, .5]]
    dense = Structure(Lattice.cubic(2.995), ["H"] * 12 + ["Pd"] * 2,
                      h + [[.5, .5, .5], [0, 0, 0]])
    centres, *_ = dense.get_neighbor_list(screening.BOND_CUTOFF)  # pymatgen as reference
    from pymatgen.io.ase import AseAtomsAdaptor

    assert screening.angle_count(AseAtomsAdaptor.get_atoms(dense)) == int(
        (np.bincount(centres) ** 2).sum()) > screening.MAX_ANGLES
    r = screening.relax(dense, calculator=None)  # refused before the potential is called
    assert r.status == "error" and r.reason.startswith("refused") and r.final is None
    sparse = Structure(Lattice.cubic(20.0), ["Pd"], [[0, 0, 0]])
    assert screening.relax(sparse, calculator=None).reason.startswith("refused: volume")


def test_select_unique_keeps_one_strictly_good_structure_per_group():
    from crystalgan_jax.materials import evaluation
    from crystalgan_jax.screening import runs as screen_runs

    good = ternary()
    shifted = good.copy()
    shifted.translate_sites(range(len(shifted)), [0.13, 0.02, 0.3])  # same crystal
    other = good.copy()
    other.replace(1, "Pd")
    other.replace(0, "Ni")  # Pd and Ni swapped: another structure
    named = [("a", good), ("bad", clash()), ("b", shifted), ("c", other)]
    options = {"d1": 1.8, "d2": 3.0}
    strict = screen_runs.select(named, "Pd", "Ni", "strict", options)
    assert [n for n, _ in strict] == [n for n, s in named
                                      if evaluation.evaluate_structure(s, "Pd", "Ni",
                                                                       **options).good_strict]
    unique = screen_runs.select(named, "Pd", "Ni", "unique", options)
    groups = evaluation.unique_groups([s for _, s in strict])
    assert len(unique) == len(set(groups)) < len(strict)
    assert [n for n, _ in unique] == [strict[groups.index(g)][0] for g in dict.fromkeys(groups)]


def test_screen_script_takes_the_system_from_the_run_or_asks_for_it(tmp_path):
    # --run_dir needs no system flags (config.json has them); --structures does
    script = str(REPO / "experiments" / "screen.py")
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    (tmp_path / "run" / "structures" / "final").mkdir(parents=True)
    proc = subprocess.run([sys.executable, script, f"--run_dir={tmp_path / 'run'}"], cwd=REPO,
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 2 and "config.json" in proc.stderr, proc.stderr[-2000:]
    assert "Flags parsing error" not in proc.stderr
    proc = subprocess.run([sys.executable, script, f"--structures={tmp_path}"], cwd=REPO,
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 1
    assert "--structures needs the system: give --data_ah, --data_bh, --element_a" in proc.stderr


def test_one_backward_pass_gives_chgnets_own_forces_and_stress(calculator):
    """CHGNet with forces and stress from one backward pass (the screening's calculator)
    against CHGNet as shipped, on perturbed cells one by one and batched; torch's own
    autograd.grad is back in place after each call."""
    import torch

    shipped = screening.load_calculator(threads=1, one_backward=False)
    assert calculator.model._compute is not shipped.model._compute
    rng = np.random.default_rng(0)
    structures = []
    for s in [ternary(), rocksalt("Pd", 4.1), rocksalt("Ni", 3.7)]:
        s = s.copy()
        s.make_supercell([2, 1, 1])
        structures.append(Structure(s.lattice, s.species, s.cart_coords + rng.uniform(
            -0.15, 0.15, (len(s), 3)), coords_are_cartesian=True))
    grad = torch.autograd.grad
    for batch in (1, 3):
        fast = calculator.model.predict_structure(structures, task="efs", batch_size=batch)
        slow = shipped.model.predict_structure(structures, task="efs", batch_size=batch)
        assert torch.autograd.grad is grad
        for a, b in zip(fast, slow):
            assert abs(float(a["e"]) - float(b["e"])) < 1e-5  # eV/atom
            assert np.abs(b["f"]).max() > 0.05  # perturbed: forces to compare
            np.testing.assert_allclose(a["f"], b["f"], atol=1e-4)  # eV/A
            np.testing.assert_allclose(a["s"], b["s"], atol=1e-3)  # GPa
    # gradients outside CHGNet's forward pass are torch's
    x = torch.ones(3, requires_grad=True)
    assert torch.autograd.grad((x ** 2).sum(), x)[0].tolist() == [2.0, 2.0, 2.0]
