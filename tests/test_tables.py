"""crystalgan_jax.pipeline.tables: what experiments/table2.py and ablation.py share."""

import os
import subprocess
import sys

import pytest

from crystalgan_jax.materials.io import StructureFileError
from crystalgan_jax.pipeline import errors, tables
from crystalgan_jax import train
from crystalgan_jax.train.checkpoints import CheckpointError
from tests.conftest import REPO


def counts(generated, ternary, good_paper, good_strict, unique, **more):
    return dict(generated=generated, ternary=ternary, good_paper=good_paper,
                good_strict=good_strict, unique=unique, **more)


RUNS = [counts(10, 8, 4, 2, 1), counts(20, 12, 6, 4, 3)]


def test_summarize_mean_population_std_min_max():
    s = tables.summarize(RUNS, tables.COUNTS)
    assert s["generated"] == {"mean": 15.0, "std": 5.0, "min": 10.0, "max": 20.0}
    assert s["unique"] == {"mean": 2.0, "std": 1.0, "min": 1.0, "max": 3.0}
    assert list(s) == list(tables.COUNTS)


def test_summaries_leave_out_or_refuse_missing_keys():
    ablation = tables.summarize_ablation([{**RUNS[0], "wall_s": 3.0}, RUNS[1]])
    assert "novel" not in ablation and ablation["wall_s"]["mean"] == 3.0  # one run has it
    assert tables.summarize_table2(RUNS)["ternary"]["mean"] == 10.0
    with pytest.raises(KeyError):  # Table 2's counts are in every run
        tables.summarize_table2([{"generated": 1}])
    screened = tables.summarize_table2([{**c, "stable": 1} for c in RUNS])
    assert screened["stable"]["std"] == 0.0


def test_table2_markdown():
    table = {"crystalgan": {"summary": tables.summarize_table2(RUNS)},
             "substitution": tables.substitution_row(counts(30, 30, 16, 16, 9),
                                                     tables.summarize_table2)}
    text = tables.table2_markdown(table, "Pd", "Ni", [0, 1], 2)
    lines = text.splitlines()
    assert lines[0] == "# Table 2: Pd-Ni-H"
    assert lines[4] == ("| method | generated | ternary | good (paper) | good (strict) | "
                        "unique | paper |")
    assert lines[5] == "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"
    assert lines[6] == ("| CrystalGAN, constraints | 15.0 +- 5.0 | 10.0 +- 2.0 | 5.0 +- 1.0 | "
                        "3.0 +- 1.0 | 2.0 +- 1.0 | 9 |")
    assert lines[7].startswith("| Substitution + Vegard (not learned) | 30.0 +- 0.0 |")
    assert lines[7].endswith("| - |") and len(lines) == 8
    assert "Seeds 0, 1; 2 epochs per stage" in text
    # not one of the paper's systems: no paper figures
    assert "| 9 |" not in tables.table2_markdown(table, "Mg", "Fe", [0, 1], 2)


def test_ablation_markdown():
    runs = [{"seed": 0, "counts": {**RUNS[0], "novel": 1, "wall_s": 10.0}},
            {"seed": 1, "counts": {**RUNS[1], "novel": 3, "wall_s": 20.0}}]
    table = {"plus": {"runs": runs,
                      "summary": tables.summarize_ablation([r["counts"] for r in runs])},
             "-snap": {"runs": runs[:1],
                       "summary": tables.summarize_ablation([runs[0]["counts"]])},
             "substitution": tables.substitution_row(counts(30, 30, 16, 16, 9))}
    lines = tables.ablation_markdown(table, "Pd", "Ni", [0, 1], 2, 1.8, 3.0).splitlines()
    assert lines[4].endswith("| novel | wall (s) |")
    assert lines[6] == ("| crystalgan_plus (all on) | 15.0 +- 5.0 | 10.0 +- 2.0 | 5.0 +- 1.0 "
                        "| 3.0 +- 1.0 | 2.0 +- 1.0 | 2.0 +- 1.0 | 15 |")
    assert lines[7].startswith("| plus, no symmetry snapping * (1 of 2 seeds) | 10.0 +- 0.0 |")
    assert lines[8].endswith("| 16.0 +- 0.0 | 16.0 +- 0.0 | 9.0 +- 0.0 | - | - |")


def test_markdown_table_and_cell():
    assert tables.markdown_table(["a", "b"], [["x", "1"]]) == ["| a | b |", "| --- | ---: |",
                                                                "| x | 1 |"]
    assert tables.cell({}, "novel") == "-"


def test_merge_ablations_keeps_every_seed_and_substitution_once(tmp_path):
    sub = tables.substitution_row(counts(30, 30, 16, 16, 9))

    def data(seed):
        run = {"seed": seed, "output_dir": str(tmp_path / f"s{seed}"),
               "counts": counts(10 + seed, 8, 4, 2, 1)}
        return {"seeds": [seed], "rows": {"substitution": sub, "plus": {"runs": [run]}}}
    table, seeds = tables.merge_ablations([data(0), data(2)])
    assert seeds == [0, 2] and list(table) == ["plus", "substitution"]
    assert table["plus"]["summary"]["generated"]["mean"] == 11.0
    assert table["plus"]["runs"][0]["outside_images_last50"] is None  # no metrics there


@pytest.mark.parametrize("err, code", [
    (errors.DivergenceError("diverged", "stage1", 3, 3, None), 3),
    (errors.RunError("locked"), 2),
    (errors.OutputDirError("not empty"), 2),
    (StructureFileError("POSCAR", "bad POSCAR"), 2),
    (FileExistsError("exists"), 2),
    (CheckpointError("corrupt"), 2),
    (ValueError("--seeds: 'a' is not an integer"), 2),
    (KeyboardInterrupt(), 130),
    (errors.Interrupted(15), 143),  # SIGTERM
    (RuntimeError("a bug"), None),
])
def test_exit_code(err, code):
    assert tables.exit_code(err) == code


def test_report_error_prints_and_reraises_unexpected(capsys):
    assert tables.report_error(errors.DivergenceError("NaN at epoch 3", "stage1", 3, 3, None)) == 3
    assert capsys.readouterr().err == "error: NaN at epoch 3\n"
    assert tables.report_error(KeyboardInterrupt()) == 130
    assert capsys.readouterr().err == ""
    with pytest.raises(RuntimeError):
        tables.report_error(RuntimeError("a bug"))


def test_arguments_checked():
    assert tables.parse_seeds(["2", "0"]) == [2, 0]
    for bad, message in ((["a"], "'a' is not an integer"), ([], "at least one seed"),
                         (["1", "1"], "given twice")):
        with pytest.raises(ValueError, match=message):
            tables.parse_seeds(bad)
    with pytest.raises(ValueError, match="'nope' is not one of"):
        tables.check_methods(["crystalgan", "nope"])
    assert tables.check_variants(["crystalgan", "plus", "-snap"])
    with pytest.raises(ValueError, match="list plus before it"):
        tables.check_variants(["-snap", "plus"])


def test_configurations():
    base = train.TrainConfig(epochs=2)
    clash = tables.method_config(base, "crystalgan+clash", clash_weight=0.5)
    assert clash.method == "crystalgan" and clash.weights.l7 == 0.5
    plus = tables.method_config(base, "crystalgan_plus", plus={"input_noise": 0.2})
    assert plus.method == "crystalgan_plus" and plus.input_noise == 0.2
    assert plus.window_weight == train.PLUS_DEFAULTS["window_weight"]  # None: default
    no_noise = tables.variant_config(base, "-noise", {"input_noise": 0.2})
    assert no_noise.input_noise == 0.0
    no_clash = tables.variant_config(base, "-clash", {"input_noise": 0.2})
    assert not no_clash.plus_clash and no_clash.weights.l7 == 0.0
    assert no_clash.input_noise == 0.2  # a flag's value holds where the row keeps it on
    paper = tables.variant_config(base, "crystalgan", {"input_noise": 0.2})
    assert paper.method == "crystalgan" and paper.input_noise == 0.0
    with pytest.raises(ValueError, match="not crystalgan_plus ingredients"):
        tables.plus_fields({"l7": 1.0})


# experiments/ablation.py end to end: tests/test_candidates.py::test_ablation_tiny


def test_ablation_refuses_sampling_row_before_plus(tmp_path):
    cmd = [sys.executable, str(REPO / "experiments" / "ablation.py"), "--flagfile=pdni_paper.flags",
           f"--output_dir={tmp_path / 'out'}", "--variants=-snap,plus"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert proc.returncode == 1 and "list plus before it" in proc.stderr, proc.stderr[-2000:]
    assert not (tmp_path / "out").exists()
