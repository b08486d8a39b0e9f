import dataclasses
import json

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure
from pymatgen.core.operations import SymmOp

from crystalgan_jax.materials import datasets, evaluation, io, report, substitution
from crystalgan_jax.core import cells
from crystalgan_jax.train import TrainConfig

A, B = "Pd", "Ni"
# The thresholds a run passes: TrainConfig's defaults, their one definition.
CRIT = {"d1": TrainConfig.d1, "d2": TrainConfig.d2}


def _rocksalt(n_h: int = 4, a: float = 3.9) -> Structure:
    """fcc Pd2Ni2 with H on n_h octahedral sites: M-M = a/sqrt2, H-H = a/sqrt2, M-H = a/2."""
    metals = [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]]
    octahedral = [[0.5, 0.5, 0.5], [0.5, 0, 0], [0, 0.5, 0], [0, 0, 0.5]][:n_h]
    return Structure(Lattice.cubic(a), ["Pd", "Ni", "Pd", "Ni"] + ["H"] * n_h,
                     metals + octahedral)


def _pymatgen_min_distances(structure: Structure) -> dict[str, float]:
    """Shortest distance per pair type from pymatgen's own neighbour search."""
    out: dict[str, float] = {}
    r = 2.0 * max(structure.lattice.abc)
    for site, neighbours in zip(structure, structure.get_all_neighbors(r)):
        for n in neighbours:
            key = evaluation.pair_key(site.specie.symbol, n.specie.symbol)
            out[key] = min(out.get(key, np.inf), n.nn_distance)
    return out


def test_figure5_passes_paper_fails_strict_on_pd_h(figure5_dir):
    s = io.read_structure(figure5_dir / "POSCAR")
    ev = evaluation.evaluate_structure(s, A, B, **CRIT)
    assert ev.ternary and ev.good_paper and not ev.good_strict
    assert ev.good_paper_reason is None
    assert "Pd-H 0.810 A < 0.75*(1.39+0.31)=1.275 A" in ev.good_strict_reason
    # the table is the paper's, and the same as cells.neighbour_table gives
    ref = json.loads((figure5_dir / "neighbours.json").read_text())
    for row, atom in zip(ev.neighbours, ref["atoms"]):
        assert [sp for sp, _ in row] == [sp for sp, _ in atom["neighbours"]]
        np.testing.assert_allclose([d for _, d in row], [d for _, d in atom["neighbours"]],
                                   atol=1e-3)
    table = cells.neighbour_table(s.lattice.matrix, s.cart_coords,
                                     [x.specie.symbol for x in s], 3.0)
    # two computations (LLL-reduced cell or not) of distances quoted to 1e-4 A: the same
    # neighbours, distances within one unit of the last quoted digit
    assert [[sp for sp, _ in row] for row in ev.neighbours] == [[sp for sp, _ in row]
                                                                for row in table]
    for row, ref_row in zip(ev.neighbours, table):
        np.testing.assert_allclose([d for _, d in row], [d for _, d in ref_row], atol=1.01e-4)
    for key, d in _pymatgen_min_distances(s).items():
        assert ev.min_distances[key] == pytest.approx(d, abs=1e-6), key


def test_hand_built_ternary_passes_both():
    s = _rocksalt()
    ev = evaluation.evaluate_structure(s, A, B, **CRIT)
    assert (ev.ternary, ev.good_paper, ev.good_strict) == (True, True, True), (
        ev.good_paper_reason, ev.good_strict_reason)
    assert ev.spacegroup_number is not None and ev.spacegroup_symbol
    assert ev.volume_per_atom == pytest.approx(3.9 ** 3 / 8)
    assert set(ev.min_distances) == {"H-H", "H-Ni", "H-Pd", "Ni-Ni", "Ni-Pd", "Pd-Pd"}
    for key, d in _pymatgen_min_distances(s).items():
        assert ev.min_distances[key] == pytest.approx(d, abs=1e-6), key
    assert len(ev.nearest) == len(s)
    assert all(n.distance == pytest.approx(3.9 / np.sqrt(2)) for n in ev.nearest)
    json.dumps(ev.to_json())  # plain JSON


def test_binary_is_not_ternary(reference_domains):
    pdh, _ = reference_domains
    ev = evaluation.evaluate_structure(pdh.structures[3], A, B, **CRIT)
    assert not ev.ternary and not ev.good_paper and not ev.good_strict
    assert "no Ni" in ev.ternary_reason and "not ternary" in ev.good_paper_reason


def test_too_distant_same_class_neighbour_fails_paper():
    # one H per cell: its nearest H is its own image at a = 3.9 A, none within 3 A
    lone = evaluation.evaluate_structure(_rocksalt(n_h=1), A, B, **CRIT)
    assert lone.ternary and not lone.good_paper and not lone.good_strict
    assert lone.good_paper_reason == "H5: no H within 3.0 A"
    # its own images count: the spec's "one H in a cell of edge a has H-H' = a"
    assert [n.distance for n in lone.nearest if n.label == "H5"] == [pytest.approx(3.9)]
    assert lone.min_distances["H-H"] == pytest.approx(3.9)
    assert lone.good_strict_reason.startswith("fails good (paper)")
    # metals at 2.76 A fail a tighter d2 (within the cutoff, beyond d2) ...
    tight = evaluation.evaluate_structure(_rocksalt(), A, B, d1=CRIT["d1"], d2=2.5)
    assert not tight.good_paper and "Pd1: nearest Pd/Ni 2.758 A > d2=2.500 A" in (
        tight.good_paper_reason)
    # ... unless only H is constrained
    h_only = evaluation.evaluate_structure(_rocksalt(), A, B, d1=CRIT["d1"], d2=2.5, classes=[("H",)])
    assert not h_only.good_paper and "H5" in h_only.good_paper_reason
    assert "Pd/Ni" not in h_only.good_paper_reason


def test_odd_cells_are_reported_not_raised():
    flat = Structure(Lattice([[3, 0, 0], [0, 3, 0], [3, 3, 0]]), ["Pd", "Ni", "H"],
                     [[0, 0, 0], [0.5, 0.5, 0], [0.2, 0.1, 0]])
    ev = evaluation.evaluate_structure(flat, A, B, **CRIT)
    assert ev.ternary and not ev.good_paper and "degenerate cell" in ev.good_paper_reason
    stacked = Structure(Lattice.cubic(3.0), ["Pd", "Ni", "H", "H"],
                        [[0, 0, 0], [0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0.5]])
    ev = evaluation.evaluate_structure(stacked, A, B, **CRIT)
    assert not ev.good_paper and not ev.good_strict
    assert "Ni-Pd 0.000 A" in ev.good_strict_reason


def test_threads_give_the_same_evaluations_in_order(figure5_dir, reference_domains):
    fig5 = io.read_structure(figure5_dir / "POSCAR")
    thin = Structure(Lattice([[3, 0, 0], [0, 3, 0], [0, 0, 0.35]]), ["Pd", "Ni", "H"],
                     [[0, 0, 0], [0.5, 0.5, 0], [0.2, 0.1, 0.5]])  # ~10^3 images in 3 A
    structures = [fig5, thin] + list(reference_domains[0].structures[:4]) + [fig5]
    alone = evaluation.evaluate_structures(structures, A, B, workers=1, **CRIT)
    shared = evaluation.evaluate_structures(structures, A, B, workers=3, **CRIT)
    assert shared == alone
    assert [e.formula for e in shared] == [s.composition.formula for s in structures]
    # without the space group (a report's training structures) all else is the same
    bare = evaluation.evaluate_structure(fig5, A, B, symprec=None, **CRIT)
    assert (bare.spacegroup_symbol, bare.spacegroup_number) == (None, None)
    assert alone[0].spacegroup_number is not None
    assert dataclasses.replace(bare, spacegroup_symbol=alone[0].spacegroup_symbol,
                               spacegroup_number=alone[0].spacegroup_number) == alone[0]


def _rotated_translated(s: Structure) -> Structure:
    op = SymmOp.from_axis_angle_and_translation([1, 2, 3], 37.0)
    rotated = Structure(Lattice(op.apply_rotation_only(s.lattice.matrix)), s.species,
                        s.frac_coords)
    rotated.translate_sites(list(range(len(rotated))), [0.13, 0.27, 0.41])
    return rotated


def test_duplicates_count_once_in_unique():
    base = _rocksalt()
    other = _rocksalt(a=3.8)
    other.replace(1, "Pd")  # Pd3Ni1H4: a different structure
    structures = [base, _rotated_translated(base), base * (2, 1, 1), other]
    evs = evaluation.evaluate_structures(structures, A, B, **CRIT)
    counts = evaluation.count_verdicts(structures, evs)
    assert counts == {"generated": 4, "ternary": 4, "good_paper": 4, "good_strict": 4,
                      "unique": 2}
    assert evaluation.unique_groups(structures) == [0, 0, 0, 1]


def test_substitution_is_ternary_and_follows_vegard(reference_domains):
    pdh, nih = reference_domains
    ah = [pdh.structures[i] for i in (0, 6, 12, 28)]
    bh = [nih.structures[i] for i in (3, 13)]
    out = substitution.substitution(ah, bh, A, B)
    expected = sum(int(s.composition[A]) - 1 for s in ah) + sum(
        int(s.composition[B]) - 1 for s in bh)
    assert len(out) == expected and expected > 0
    assert not any(s.properties["source"] in ("AH[2]", "BH[1]") for s in out)  # one metal

    # the metals' atomic volumes, as the data-set builder takes them (A^3 per atom)
    volume = {el: datasets.host_of(el).atomic_volume for el in (A, B)}
    parents = {f"AH[{i}]": (s, A, B) for i, s in enumerate(ah)}
    parents.update({f"BH[{i}]": (s, B, A) for i, s in enumerate(bh)})
    for s, ev in zip(out, evaluation.evaluate_structures(out, A, B, **CRIT)):
        assert ev.ternary, ev.ternary_reason
        parent, host, dopant = parents[s.properties["source"]]
        x = s.composition[dopant] / parent.composition[host]
        assert 0 < x < 1
        vegard = ((1 - x) * volume[host] + x * volume[dopant]) / volume[host]
        assert s.volume / parent.volume == pytest.approx(vegard, rel=1e-9)
        np.testing.assert_allclose(s.lattice.angles, parent.lattice.angles, atol=1e-9)
        np.testing.assert_allclose(s.frac_coords, parent.frac_coords, atol=1e-12)
        assert s.composition["H"] == parent.composition["H"]


def test_distinct_decorations_are_the_structurematcher_classes():
    """One decoration per symmetry class: as many as StructureMatcher finds among all
    C(n, k) choices, pairwise distinct by it, the first k sites among them."""
    import itertools
    import math

    from pymatgen.analysis.structure_matcher import StructureMatcher

    from tests.conftest import REPO

    pdh = io.read_domain(REPO / "data" / "PdH", A).structures
    matcher = StructureMatcher()
    cases = 0
    for s in pdh:
        sites = [i for i, site in enumerate(s) if site.specie.symbol == A]
        if not 3 <= len(sites) <= 8 or len(s) > 14:
            continue
        for k in range(1, len(sites)):
            if math.comb(len(sites), k) > 70:
                continue
            every = [substitution.decorate(s, A, B, c)
                     for c in itertools.combinations(sites, k)]
            classes = len(matcher.group_structures(every))
            chosen = substitution.distinct_decorations(s, A, k)
            assert len(chosen) == classes, (s.composition.formula, k)
            assert chosen[0] == tuple(sites[:k])  # substitution's own choice represents itself
            assert len(set(chosen)) == len(chosen)
            assert all(len(c) == k and set(c) <= set(sites) for c in chosen)
            cases += 1
        if cases >= 12:
            break
    assert cases >= 12
    # a cell with a low-symmetry class count above 1 was among them
    assert any(len(substitution.distinct_decorations(s, A, 2)) > 1 for s in pdh
               if 4 <= s.composition[A] <= 8)


def test_decorate_puts_the_dopant_on_the_given_sites_and_refuses_others():
    s = _rocksalt()
    s.replace_species({B: A})  # fcc PdH: four Pd sites
    pd_sites = [i for i, site in enumerate(s) if site.specie.symbol == A]
    out = substitution.decorate(s, A, B, pd_sites[1:3], "x")
    assert [site.specie.symbol for site in out] == [
        B if i in pd_sites[1:3] else site.specie.symbol for i, site in enumerate(s)]
    assert out.properties["substituted"] == f"2 of {len(pd_sites)} {A} -> {B}"
    # the first k sites: what substitute gives
    first = substitution.decorate(s, A, B, pd_sites[:2])
    assert first == substitution.substitute(s, A, B, 2)
    h = next(i for i, site in enumerate(s) if site.specie.symbol == "H")
    with pytest.raises(ValueError, match="cannot substitute sites"):
        substitution.decorate(s, A, B, [h])
    with pytest.raises(ValueError, match="cannot choose"):
        substitution.distinct_decorations(s, A, len(pd_sites) + 1)


def test_write_report(tmp_path, figure5_dir, reference_domains):
    pdh, nih = reference_domains
    fig5 = io.read_structure(figure5_dir / "POSCAR")
    good = _rocksalt()
    out = tmp_path / "report"
    named = {"AHB": [fig5, good, pdh.structures[3]], "BHA": [_rotated_translated(good),
                                                             _rocksalt(1)]}
    # files are named as paths on disk; the report lists them relative to its folder
    generated = {g: [(str(out / g / f"POSCAR_{i}"), s) for i, s in enumerate(structures)]
                 for g, structures in named.items()}
    metrics = [{"stage": stage, "epoch": e, "L_G": 2.0 / (e + 1), "L_D": 1.4,
                "L_geo2": -0.1 * e} for stage in ("step1", "step3") for e in range(5)]
    result = report.write_report(out, generated, pdh.structures[:4] + nih.structures[:4],
                                 A, B, metrics, **CRIT)
    for name in ("report.json", "report.md", "distances.png", "losses.png"):
        assert (out / name).stat().st_size > 0, name
    data = json.loads((out / "report.json").read_text())
    assert data == json.loads(json.dumps(result))

    structures = [s for entries in generated.values() for _, s in entries]
    direct = evaluation.count_verdicts(structures, evaluation.evaluate_structures(structures, A, B, **CRIT))
    assert set(data["counts"]) == {"generated", "ternary", "good_paper", "good_strict", "unique"}
    assert data["counts"] == direct
    assert direct["good_strict"] == 2 and direct["unique"] == 1  # the rocksalt, twice
    assert [e["file"] for e in data["structures"]] == [
        f"{g}/POSCAR_{i}" for g, structures in named.items() for i in range(len(structures))]
    fig5_entry = data["structures"][0]
    assert fig5_entry["good_paper"] and not fig5_entry["good_strict"]
    assert "Pd-H 0.810" in fig5_entry["reasons"]["good_strict"]
    md = (out / "report.md").read_text()
    assert "](distances.png)" in md and "](losses.png)" in md
    assert "| AHB/POSCAR_1 |" in md
    candidates = md.split("## Candidates for DFT")[1].split("## Structures")[0]
    rows = [l for l in candidates.splitlines() if l.startswith("| ") and "POSCAR" in l]
    assert len(rows) == 1  # the rocksalt, listed once, with its twin named
    assert rows[0].startswith("| AHB/POSCAR_1 |") and rows[0].endswith("| BHA/POSCAR_0 |")


def test_write_report_takes_the_training_evaluations_computed_ahead(tmp_path, reference_domains,
                                                                    monkeypatch):
    pdh, nih = reference_domains
    training_structures = pdh.structures[:3] + nih.structures[:3]
    generated = [(str(tmp_path / f"POSCAR_{i}"), s) for i, s in
                 enumerate([_rocksalt(), _rocksalt(1), pdh.structures[5]])]
    inline = report.write_report(tmp_path / "inline", generated, training_structures, A, B,
                                 **CRIT)
    ahead = report.evaluate_training(training_structures, A, B, **CRIT)
    assert len(ahead) == len(training_structures)
    assert all(e.spacegroup_number is None for e in ahead)  # distances only: no spglib
    calls = []
    evaluate = evaluation.evaluate_structures
    monkeypatch.setattr(evaluation, "evaluate_structures",
                        lambda structures, *a, **k: calls.append(len(structures))
                        or evaluate(structures, *a, **k))
    given = report.write_report(tmp_path / "given", generated, training_structures, A, B,
                                training_evaluations=ahead, **CRIT)
    assert calls == [len(generated)]  # the generated structures only
    assert given == inline
    with pytest.raises(ValueError, match="5 training evaluations given for 6"):
        report.write_report(tmp_path / "short", generated, training_structures, A, B,
                            training_evaluations=ahead[:5], **CRIT)


def test_write_run_report_reads_the_final_files(tmp_path, figure5_dir):
    fig5 = io.read_structure(figure5_dir / "POSCAR")
    files = {"stage1": {"AHB": []}, "final": {"AHB": [], "BHA": []}}
    for direction, structures in (("AHB", [fig5, _rocksalt()]), ("BHA", [_rocksalt(1)])):
        for i, s in enumerate(structures):
            path = tmp_path / "structures" / "final" / direction / f"{i:03d}.vasp"
            io.write_poscar(s, path)
            files["final"][direction].append(path)
    result = report.write_run_report(tmp_path, files, [], A, B, **CRIT)
    assert result["counts"] == {"generated": 3, "ternary": 3, "good_paper": 2,
                                "good_strict": 1, "unique": 1}
    assert result["structures"][0]["file"] == "structures/final/AHB/000.vasp"
    # three structure rows, plus the one strictly good structure among the candidates
    assert (tmp_path / "report.md").read_text().count("structures/final/") == 4


def test_plot_losses_without_numbers_writes_nothing(tmp_path):
    assert report.plot_losses([{"stage": "step1", "epoch": 0}], tmp_path / "l.png") is None
    assert not (tmp_path / "l.png").exists()


def test_neighbour_table_is_bounded_and_a_prefix_of_the_full_table():
    # a flat generated-like cell: thousands of images within the 3 A cutoff
    thin = Structure(Lattice([[2.2, 0, 0], [0.3, 2.1, 0], [0.2, 0.1, 0.6]]),
                     ["Pd", "Ni", "H", "H"], [[0, 0, 0], [0.5, 0.5, 0.1], [0.2, 0.7, 0.5],
                                              [0.6, 0.1, 0.3]])
    bounded = evaluation.evaluate_structure(thin, A, B, **CRIT)
    full = evaluation.evaluate_structure(thin, A, B, max_neighbours=None, **CRIT)
    assert all(len(row) <= evaluation.MAX_NEIGHBOURS for row in bounded.neighbours)
    assert max(len(row) for row in full.neighbours) > evaluation.MAX_NEIGHBOURS
    for short, long in zip(bounded.neighbours, full.neighbours):
        assert short == long[:len(short)]
    assert (bounded.good_paper, bounded.good_strict) == (full.good_paper, full.good_strict)
    # the full table lists each (species, distance) of pymatgen's neighbour list once
    for site, row, neighbours in zip(thin, full.neighbours, thin.get_all_neighbors(3.0)):
        expected = sorted({(n.specie.symbol, round(n.nn_distance, 4)) for n in neighbours},
                          key=lambda item: (item[1], item[0]))
        assert [s for s, _ in row] == [s for s, _ in expected]
        np.testing.assert_allclose([d for _, d in row], [d for _, d in expected], atol=2e-4)


def test_plots_hold_the_pyplot_lock(tmp_path, monkeypatch):
    # pyplot is not thread-safe and table2.py writes reports from two threads: every
    # figure is drawn and saved while report.PYPLOT is held
    held = []
    save = report.save_figure
    monkeypatch.setattr(report, "save_figure", lambda fig, path: (held.append(report.PYPLOT.locked()),
                                                           save(fig, path))[1])
    metrics = [{"stage": "stage1", "epoch": e, "L_G1": 1.0 / e} for e in range(1, 4)]
    assert report.plot_losses(metrics, tmp_path / "losses.png").exists()
    assert held == [True] and not report.PYPLOT.locked()
