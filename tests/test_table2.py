"""experiments/table2.py on a tiny configuration: every method, one seed, a few epochs."""

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO, small_domain


def test_table2_tiny(tmp_path):
    ah, bh = small_domain(tmp_path, "PdH", 5), small_domain(tmp_path, "NiH", 5)
    out = tmp_path / "table"
    cmd = [sys.executable, str(REPO / "experiments" / "table2.py"), "--flagfile=pdni_paper.flags",
           f"--data_ah={ah}", f"--data_bh={bh}", f"--output_dir={out}", "--seeds=0",
           "--epochs=2", "--chunk_epochs=2", "--depth=1", "--width=16", "--batch_size=5",
           "--generator_steps=1", "--methods=gan,discogan,nocons,crystalgan,crystalgan+clash"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = json.loads((out / "table2.json").read_text())
    methods = table["methods"]
    assert list(methods) == ["gan", "discogan", "nocons", "crystalgan", "crystalgan+clash",
                             "substitution"]
    for method, row in methods.items():
        counts = row["runs"][0]["counts"]
        assert counts["generated"] >= counts["ternary"] >= counts["good_paper"]
        assert counts["good_paper"] >= counts["good_strict"] >= counts["unique"]
        assert row["summary"]["ternary"]["mean"] == counts["ternary"]
        if method != "substitution":  # each training run left its own report
            report = json.loads((Path(row["runs"][0]["output_dir"]) / "report.json").read_text())
            assert report["counts"] == counts
    # step 1 alone keeps one metal per structure: never ternary
    assert methods["discogan"]["runs"][0]["counts"]["ternary"] == 0
    assert methods["substitution"]["runs"][0]["counts"]["ternary"] > 0
    md = (out / "table2.md").read_text()
    assert "CrystalGAN, constraints" in md and md in proc.stdout
    clash_metrics = Path(methods["crystalgan+clash"]["runs"][0]["output_dir"]) / "metrics.jsonl"
    assert "L_clash" in clash_metrics.read_text().splitlines()[-1]
    # stage 1 trained once (in the first of them) for the methods that share it
    assert "stage1" not in methods["discogan"]
    for method in ("nocons", "crystalgan", "crystalgan+clash"):
        assert methods[method]["stage1"]["trained_in"] == "nocons"

    def stage1_lines(method):
        lines = (Path(methods[method]["runs"][0]["output_dir"]) / "metrics.jsonl").read_text()
        return [line for line in lines.splitlines() if '"stage": "stage1"' in line]
    assert len(stage1_lines("nocons")) == 2
    assert stage1_lines("crystalgan") == stage1_lines("crystalgan+clash") == stage1_lines("nocons")


import pytest  # noqa: E402


@pytest.mark.parametrize("args, message", [
    (["--methods=crystalgan,nope"], "--methods: 'nope' is not one of"),
    (["--seeds="], "--seeds: give at least one seed"),
    (["--seeds=a,b"], "--seeds: 'a' is not an integer"),
    (["--seeds=0,-3"], r"seed must be an integer in [0, 4294967295], got -3"),
])
def test_table2_checks_methods_and_seeds_before_training(tmp_path, args, message):
    ah, bh = small_domain(tmp_path, "PdH", 2), small_domain(tmp_path, "NiH", 2)
    out = tmp_path / "table"
    cmd = [sys.executable, str(REPO / "experiments" / "table2.py"), "--flagfile=pdni_paper.flags",
           f"--data_ah={ah}", f"--data_bh={bh}", f"--output_dir={out}", "--epochs=2", *args]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert f"error: {message}" in proc.stderr
    assert "==" not in proc.stderr  # no run started
    assert not out.exists()
