"""Per-formula comparison of the generator's and substitution's E_hull."""

import pytest
from pymatgen.core import Composition

from crystalgan_jax.screening import compare


def F(formula):
    return Composition(formula).reduced_formula


def row(name, formula, e, atoms=None, spacegroup=None):
    out = {"name": name, "formula": formula, "e_hull_eV_per_atom": e}
    if atoms is not None:
        out.update(n_atoms=atoms, displacement={"spacegroup_after": spacegroup})
    return out


def test_per_formula_lowest_winners_ties_and_one_sided():
    generator = [row("g1", "Pd2Ni2H4", 0.05), row("g2", "PdNiH2", 0.02),  # same formula
                 row("g3", "Pd3NiH4", 0.10), row("g4", "PdNi3H", -0.01),
                 row("g5", "Pd2NiH", 0.3), row("bad", "PdNiH", None)]
    substitution = [row("s1", "PdNiH2", 0.04), row("s2", "Pd3NiH4", 0.1004),
                    row("s3", "PdNi3H", 0.2), row("s4", "PdNi3H", -0.05),
                    row("s5", "Pd5NiH6", 0.0)]
    result = compare.compare_formulas(generator, substitution)
    by = {r["formula"]: r for r in result["formulas"]}
    assert set(by) == {F(f) for f in ("PdNiH2", "Pd3NiH4", "PdNi3H", "Pd2NiH", "Pd5NiH6")}
    assert by[F("PdNiH2")]["generator"] == pytest.approx(0.02)
    assert by[F("PdNiH2")]["generator_name"] == "g2" and by[F("PdNiH2")]["lower"] == "generator"
    assert by[F("Pd3NiH4")]["lower"] == "tie"  # 0.4 meV/atom apart
    assert by[F("PdNi3H")]["substitution"] == pytest.approx(-0.05)
    assert by[F("PdNi3H")]["lower"] == "substitution"
    assert by[F("Pd2NiH")]["lower"] == "only generator"
    assert by[F("Pd5NiH6")]["lower"] == "only substitution"
    assert result["counts"] == {"generator": 1, "substitution": 1, "tie": 1,
                                "only generator": 1, "only substitution": 1}
    # sorted by the lowest either side reaches
    assert [r["formula"] for r in result["formulas"]][0] == F("PdNi3H")
    # a tighter tie makes the 0.4 meV difference count
    tight = compare.compare_formulas(generator, substitution, tie=1e-4)
    assert {r["formula"]: r["lower"] for r in tight["formulas"]}[F("Pd3NiH4")] == "generator"
    md = compare.markdown(result)
    assert f"| {F('PdNiH2')} | 0.020 | 0.040 | generator |" in md
    assert "| 1 | 1 | 1 | 1 | 1 |" in md
    # how many structures each side has in a formula, and what its lowest one is
    assert (by[F("PdNiH2")]["generator_tries"], by[F("PdNiH2")]["substitution_tries"]) == (2, 1)
    assert (by[F("PdNi3H")]["substitution_tries"], by[F("Pd5NiH6")]["generator_tries"]) == (2, 0)
    assert by[F("Pd5NiH6")]["generator_best"] is None


def test_formulas_both_reach_show_each_sides_best_cell(tmp_path):
    generator = [row("g1", "PdNiH2", 0.05, 4, ["P1", 1]), row("g2", "PdNiH2", 0.09, 8, ["Cm", 8]),
                 row("g3", "Pd2NiH", 0.01, 4, ["P1", 1])]
    substitution = [row("s1", "Pd2Ni2H4", 0.02, 8, ["Pmmm", 47]),
                    row("s2", "PdNi3H", 0.0, 5, ["Pm-3m", 221])]
    result = compare.compare_formulas(generator, substitution)
    by = {r["formula"]: r for r in result["formulas"]}
    assert by[F("PdNiH2")]["generator_best"] == {"atoms": 4, "spacegroup": ["P1", 1]}
    assert by[F("PdNiH2")]["substitution_best"] == {"atoms": 8, "spacegroup": ["Pmmm", 47]}
    md = compare.markdown(result)
    assert "### The formulas both reach" in md
    shared = md.split("### The formulas both reach")[1]
    assert (f"| {F('PdNiH2')} | 0.050 | 4 atoms, P1 (1) | 2 | 0.020 | 8 atoms, Pmmm (47) | 1 "
            "| substitution |") in shared
    assert F("Pd2NiH") not in shared and F("PdNi3H") not in shared  # one side only
    # no shared formula: no such section
    assert "formulas both reach" not in compare.markdown(
        compare.compare_formulas(generator[2:], substitution[1:]))
    assert compare.shared_table(compare.compare_formulas(generator[2:], substitution[1:])) == []
    assert [r["formula"] for r in compare.shared_formulas(result)] == [F("PdNiH2")]
    # the report's "Candidates for DFT" carries the same table
    from crystalgan_jax.pipeline import discovery

    summary = {"settings": {"stability_threshold_eV_per_atom": 0.1, "optimizer": "FIRE",
                            "fmax": 0.1, "max_steps": 10},
               "potential": "EMT", "hull_phases": "the elements",
               "mixing": {"lowest_alloy_formation_eV_per_atom": None, "metals_mix": True},
               "generator": {k: 0 for k, _ in discovery.COUNTS},
               "substitution": {k: 0 for k, _ in discovery.COUNTS}, "comparison": result["counts"],
               "shared_formulas": compare.shared_formulas(result)}
    section = discovery.dft_markdown(summary, [], tmp_path)
    assert "The formulas both reach" in section
    assert "| 4 atoms, P1 (1) | 2 | 0.020 | 8 atoms, Pmmm (47) | 1 | substitution |" in section


def test_empty_sides():
    result = compare.compare_formulas([], [row("s", "PdH", 0.0)])
    assert result["counts"]["only substitution"] == 1 and result["counts"]["generator"] == 0
    assert compare.compare_formulas([], [])["formulas"] == []


def test_write_comparison_writes_table_and_pictures(tmp_path):
    from crystalgan_jax.screening import hull as hulls, runs
    from tests.test_plots import check_png, hull

    gen = {"stability_threshold_eV_per_atom": 0.1,
           "structures": [row("g1", "PdNiH2", 0.02), row("g2", "Pd3NiH4", 0.5)]}
    sub = {"structures": [row("s1", "PdNiH2", 0.04), row("s2", "PdNi3H", 0.0)]}
    assert isinstance(hull(), hulls.Hull)
    cmp = runs.write_comparison(gen, sub, hull(), tmp_path / "out", "run 1")
    assert cmp["counts"]["generator"] == 1 and cmp["counts"]["only substitution"] == 1
    assert (tmp_path / "out" / "comparison.md").read_text().startswith("# run 1")
    import json

    assert json.loads((tmp_path / "out" / "comparison.json").read_text()) == cmp
    for name in ("phase_diagram.png", "e_hull_histogram.png"):
        check_png(tmp_path / "out" / name)
