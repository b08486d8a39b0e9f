"""Every benchmarks/*.py script at a tiny size: it runs, and its JSON carries the stamp
(git commit, date, environment) of benchmarks/common.py."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

BENCHMARKS = REPO / "benchmarks"
TINY = {
    "dataset_volumes": [],
    "finite_check": ["--chunk=1", "--repeats=1"],
    "geometry": ["--repeats=1"],
    "train": ["--epochs=1", "--skip_wall", "--matmul_repeats=1", "--depth=1"],
    "population": ["--sizes=2", "--epochs=2", "--repeats=1", "--cpu_devices=1",
                   "--depth=1", "--width=16"],
    "screening": ["--structures=1", "--repeats=1", "--steps=1", "--candidates=2",
                  "--configs=FIRE:1:shipped,FIRE:1,FIRE:2", "--max_steps=3"],
    "optimizers": ["--structures=1", "--max_steps=2"],
    "chgnet_batch": ["--structures_dir=data/PdH", "--structures=2", "--batch_sizes=1,2",
                     "--repeats=1"],
    # on the toy discovery job of tests/conftest.py ({run}: its run folder)
    # (its generator has no candidate at 4 epochs: the substitution side's)
    "preselection": ["--run_dir={run}", "--side=substitution", "--include_unconverged",
                     "--steps=0,2"],
    "symmetrize": ["--run_dir={run}", "--side=substitution", "--potential=emt",
                   "--workers=1", "--symprecs=0.5"],
    "discovery": ["--output_dir={runs}", "--collect"],
    "start_volume": ["--run_dir={run}", "--workers=1", "--potential=emt"],
    "decorations": ["--run_dir={run}", "--output_dir={runs}/decorations", "--formulas=NiH2Pd",
                    "--per_formula=3", "--workers=1", "--potential=emt"],
    "offspring": ["--run_dir={run}"],
}
ON_DISCOVERY_RUN = ("preselection", "symmetrize", "discovery", "start_volume", "decorations",
                    "offspring")
NEEDS_REFERENCE = ("dataset_volumes", "geometry", "population", "screening")


def test_every_benchmark_script_is_smoke_tested():
    scripts = {p.stem for p in BENCHMARKS.glob("*.py")} - {"common"}
    assert scripts == set(TINY)


def test_stamp(tmp_path):
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import common
    finally:
        sys.path.remove(str(BENCHMARKS))
    report = common.write_results(tmp_path / "r.json", {"x": 1, "environment": {"a": 2}})
    assert json.loads((tmp_path / "r.json").read_text()) == report
    assert report["x"] == 1 and report["environment"]["a"] == 2
    assert len(report["git_commit"]) == 40 and isinstance(report["git_dirty"], bool)
    assert report["date"].endswith("+00:00")
    assert {"python", "numpy", "cpu_count"} <= set(report["environment"])
    assert common.median_time(lambda: None, 3) >= 0


@pytest.mark.parametrize("name", sorted(TINY))
def test_benchmark_tiny(name, tmp_path, request):
    if name in NEEDS_REFERENCE:
        request.getfixturevalue("reference_dir")  # skips where ../shared is absent
    if (name in ("screening", "optimizers", "chgnet_batch")
            and importlib.util.find_spec("chgnet") is None):
        pytest.skip("chgnet is not installed (the screen extra)")
    args = TINY[name]
    if name in ON_DISCOVERY_RUN:
        _, run, _ = request.getfixturevalue("discovery_run")
        args = [a.format(run=run, runs=run.parent) for a in args]
    out = tmp_path / f"{name}.json"
    proc = subprocess.run([sys.executable, str(BENCHMARKS / f"{name}.py"), *args,
                           f"--out={out}"], cwd=REPO, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "JAX_PLATFORMS": "cpu",
                                            "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert {"git_commit", "git_dirty", "date", "environment"} <= set(report)
    assert report["environment"]["cpu_count"] == os.cpu_count()
    if name not in ("dataset_volumes", "screening", "optimizers", "chgnet_batch",
                    *ON_DISCOVERY_RUN):
        assert "jax" in report["environment"]  # the benchmarks that run JAX say its version
    if name == "optimizers":  # each optimizer against FIRE on the same structure
        summary = report["summary"]["perturbed"]
        assert list(summary) == ["FIRE", "BFGS", "LBFGS", "BFGS_alpha20", "FIRE2"]
        assert summary["FIRE"]["dE_vs_FIRE_eV_per_atom"]["within_5meV"] == 1
    if name == "screening":  # the screening before its speed-ups is the baseline
        configs = report["throughput"]["configs"]
        assert list(configs) == ["FIRE:1:shipped", "FIRE:1", "FIRE:2"]
        assert all(0 <= c["converged"] <= 2 and c["wall_s"] > 0 for c in configs.values())
        assert "speedup_vs_FIRE:1:shipped" in configs["FIRE:2"]
    if name == "start_volume":  # every converged generator candidate, or none
        screened = json.loads((run / "screening" / "screening.json").read_text())
        converged = sum(r["relaxation"]["converged"] for r in screened["structures"])
        assert report["candidates"] == converged
    if name == "preselection":  # the toy run's candidates ranked at steps 0 and 2
        assert report["candidates"] >= 2 and set(report["estimates"]) == {"step_0", "step_2"}
    if name == "decorations":  # NiH2Pd: 3 of its distinct decorations, on the run's hull
        assert report["decorations_screened"] == 3 and report["formulas"] <= 1
        hull = json.loads((run / "screening" / "screening.json").read_text())["settings"]
        ours = json.loads((run.parent / "decorations" / "screening" / "screening.json")
                          .read_text())["settings"]
        assert ours["hull_cache"] == hull["hull_cache"] and ours["max_steps"] == hull["max_steps"]
        # the run's hull journal was reused: the copy unchanged, no relaxation redone
        journals = [(d / "hull_relaxations.jsonl").read_text()
                    for d in (run / "screening", run.parent / "decorations")]
        assert journals[0] == journals[1] and len(journals[0].splitlines()) > 300
    if name == "offspring":  # with all of them, the run's own comparison
        summary = json.loads((run / "screening" / "summary.json").read_text())
        assert report["comparison"]["all"] == summary["comparison"]
        assert report["comparison"]["without"] == summary["offspring"]["comparison_without"]
        assert report["offspring"] == summary["offspring"]["screened"] == sum(
            o["screened"] for o in report["operators"].values())
    if name == "discovery":  # one row, the toy run's, with its counts
        summary = json.loads((run / "screening" / "summary.json").read_text())["generator"]
        row = report["rows"]["run"]
        assert list(report["rows"]) == ["run"]
        assert (row["screened"], row["sun"]) == (summary["screened"], summary["sun"])
        assert row["h_per_metal_training"]["median"] > 0
