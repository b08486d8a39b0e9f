"""The discovery job: train.py --screen end to end (EMT stands in for CHGNet), resuming
across its phases, the missing-extra hint, the Relaxer's workers, and the report's
"Candidates for DFT"."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
from ase.build import bulk
from pymatgen.io.ase import AseAtomsAdaptor

from crystalgan_jax.materials import io
from crystalgan_jax.materials.candidates import hydrogen_fraction
from crystalgan_jax.pipeline import discovery
from crystalgan_jax.screening.workers import Relaxer
from tests.conftest import REPO, SMALL_DISCOVERY, TRAIN_SCRIPT, job_env

TRAIN = [sys.executable, str(TRAIN_SCRIPT)]
SMALL = SMALL_DISCOVERY  # the discovery job at a toy size (tests/conftest.py)
env = job_env


def jittered(n: int):
    out = []
    for k in range(n):
        s = AseAtomsAdaptor.get_structure(bulk("Pd", "fcc", a=3.8 + 0.05 * k, cubic=True))
        s.perturb(0.05)
        out.append((f"pd{k}", s, True))
    return out


def test_workers_give_what_one_process_gives_in_input_order():
    jobs = jittered(5)
    with Relaxer("emt", fmax=0.05, max_steps=60, workers=1) as one:
        a = one.relax(jobs)
    seen = []
    with Relaxer("emt", fmax=0.05, max_steps=60, workers=2) as two:
        assert two.label.startswith("EMT (ASE")
        b = two.relax(jobs, on_done=lambda name, r: seen.append(name))
    assert sorted(seen) == [name for name, _, _ in jobs]
    for r1, r2 in zip(a, b):
        assert r1.status == r2.status == "converged"
        assert r2.energy_per_atom == pytest.approx(r1.energy_per_atom, abs=1e-6)
        assert r2.initial == r1.initial


def test_an_optimizer_asked_for_one_call_reaches_the_workers():
    """The hull's phases use their own optimizer (BFGS) on the same workers: each
    relaxation takes the steps BFGS takes in this process, not FIRE's."""
    jobs = jittered(4)
    with Relaxer("emt", fmax=0.05, max_steps=60, workers=1) as one:
        fire = one.relax(jobs)
        bfgs = one.relax(jobs, optimizer="BFGS")
    assert [r.steps for r in fire] != [r.steps for r in bfgs]
    with Relaxer("emt", fmax=0.05, max_steps=60, workers=2, hull_optimizer="BFGS") as two:
        assert two.hull_settings == {**two.settings, "optimizer": "BFGS"}
        assert two.settings["optimizer"] == "FIRE"
        got = two.relax(jobs, optimizer=two.hull_optimizer)
    assert [r.steps for r in got] == [r.steps for r in bfgs]
    for r1, r2 in zip(bfgs, got):
        assert r2.energy_per_atom == pytest.approx(r1.energy_per_atom, abs=1e-6)
    with pytest.raises(ValueError, match="optimizer must be one of"):
        Relaxer("emt", fmax=0.05, max_steps=60, hull_optimizer="MDMin")


def test_missing_extra_ends_the_run_with_a_hint_and_status_0(tmp_path):
    blocked = tmp_path / "blocked" / "chgnet"
    blocked.mkdir(parents=True)
    (blocked / "__init__.py").write_text("raise ImportError('chgnet hidden by the test')\n")
    out = tmp_path / "run"
    proc = subprocess.run(
        TRAIN + ["--flagfile=pdni.flags", "--epochs=2", "--checkpoint_every=2",
                 "--samples_per_input=2", f"--output_dir={out}"],
        cwd=REPO, capture_output=True, text=True, timeout=900,
        env=env(tmp_path, PYTHONPATH=os.pathsep.join([str(tmp_path / "blocked"), str(REPO)])))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr + proc.stdout
    hint = [line for line in proc.stdout.splitlines() if line.startswith("not screened:")]
    assert len(hint) == 1 and "pip install" in hint[0] and "--resume" in hint[0]
    report = (out / "report.md").read_text()
    assert report.splitlines()[0].startswith("# ") and "Not screened yet" in report
    assert (out / "candidates").is_dir() and not (out / "screening" / "summary.json").exists()


@pytest.fixture
def finished(discovery_run):
    """A discovery job run to its end (EMT), for the tests below."""
    return discovery_run


def test_the_job_ends_with_candidates_for_dft_at_the_top_of_the_report(finished):
    _, out, proc = finished
    summary = json.loads((out / "screening" / "summary.json").read_text())
    result = json.loads((out / "screening" / "screening.json").read_text())
    pooled = json.loads((out / "report.json").read_text())
    # the pooled candidates, then their offspring (pdni.flags: --heredity, --permutations),
    # bred from the converged ones and screened with them
    offspring = json.loads((out / "screening" / "offspring.json").read_text())
    assert summary["offspring"]["screened"] == len(offspring)
    assert summary["generator"]["screened"] == len(pooled["candidates"]) + len(offspring) == len(
        result["structures"])
    assert [r["name"] for r in result["structures"][len(pooled["candidates"]):]] == sorted(
        offspring)
    parents = {r["name"] for r in result["structures"] if r["relaxation"]["converged"]}
    for info in offspring.values():
        assert set(info["parents"]) <= parents
    assert summary["generator"] == {k: result["counts"][k] for k, _ in discovery.COUNTS}
    sub = json.loads((out / "screening" / "substitution" / "screening.json").read_text())
    assert summary["substitution"]["screened"] == sub["counts"]["screened"] > 0
    assert "substitution" in result["settings"]["hull_phases"]
    # the hull's phases relaxed with the hull's optimizer, the candidates with their own
    head = (out / "screening" / "hull_relaxations.jsonl").read_text().splitlines()[0]
    assert json.loads(head)["settings"]["optimizer"] == result["settings"][
        "hull_optimizer"] == "BFGS_alpha20"
    head = (out / "screening" / "relaxations.jsonl").read_text().splitlines()[0]
    assert json.loads(head)["settings"]["optimizer"] == result["settings"]["optimizer"] == "FIRE"
    # the substitution baseline judged exactly like the candidates: relaxed again with their
    # optimizer (not the hull's relaxations of the same structures), the same symmetry pass
    journal = (out / "screening" / "substitution" / "relaxations.jsonl").read_text().splitlines()
    assert json.loads(journal[0])["settings"] == json.loads(head)["settings"]
    assert len(journal) - 1 >= sub["counts"]["screened"]
    assert "symmetry_pass" in sub["settings"] and "symmetry_pass" in result["settings"]
    assert sub["settings"]["symmetry_pass"]["symprec_A"] in (
        result["settings"]["symmetry_pass"]["symprec_A"], None)
    # the E_hull of every candidate is against the hull that holds substitution's structures
    assert any(e["name"].startswith("substitution: ") for e in result["settings"]["hull"]["entries"])
    lines = (out / "report.md").read_text().splitlines()
    assert lines[0].startswith("# ") and "## Candidates for DFT" in lines[1:5]
    grouped = json.loads((out / "screening" / "candidates_for_dft.json").read_text())
    assert sum(g["count"] for g in grouped) == sum(
        "unique_group" in r and r["e_hull_eV_per_atom"] is not None for r in result["structures"])
    e = [g["e_hull_eV_per_atom"] for g in grouped]
    assert e == sorted(e)
    for g in grouped:
        assert (out / "screening" / g["relaxed_file"]).exists() and g["members"]
    assert "wall time by phase" in proc.stderr
    timing = json.loads((out / "timing.json").read_text())
    assert {"training", "outputs", "pooling", "screening_hull", "screening_screening",
            "screening_substitution"} <= set(timing)
    # the comparison with substitution and the pictures
    for name in ("comparison.md", "phase_diagram.png", "e_hull_histogram.png"):
        assert (out / "screening" / name).exists()
    # hydrogen content: pdni.flags screens the candidates within the training structures'
    # range of hydrogen fractions (--h_fraction=data), and H/M is reported
    comp = summary["composition"]
    assert comp["h_fraction_from_data"]
    assert comp["screened"] + summary["offspring"]["screened"] == summary["generator"]["screened"]
    assert comp["h_per_metal_training"]["min"] <= comp["h_per_metal_training"]["max"]
    lo, hi = comp["h_fraction"]
    pooled_fractions = [hydrogen_fraction(io.read_structure(p))
                        for p in sorted((out / "candidates").glob("*.vasp"))]
    assert comp["offered"] == len(pooled_fractions)
    assert comp["screened"] == sum(lo - 1e-6 <= f <= hi + 1e-6 for f in pooled_fractions)
    if comp["screened"]:
        h_m = comp["h_per_metal_screened"]
        train = comp["h_per_metal_training"]
        assert train["min"] - 1e-3 <= h_m["min"] <= h_m["max"] <= train["max"] + 1e-3
    # the toy run may have no candidate: the H/M line is there exactly when some were screened
    assert ("Hydrogen per metal atom (H/M) of the screened candidates" in "\n".join(lines)) \
        == bool(comp["screened"])


def test_resume_after_a_signal_in_the_screening_continues_it(finished, tmp_path):
    _, done, _ = finished
    out = tmp_path / "run"  # the finished run's training and outputs, not screened yet
    shutil.copytree(done, out, ignore=shutil.ignore_patterns("screening", ".lock"))
    cmd = TRAIN + SMALL + [f"--output_dir={out}", "--resume"]
    # an empty hull cache of its own: the screening starts by relaxing the hull
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env(tmp_path))
    journal = out / "screening" / "hull_relaxations.jsonl"
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if journal.exists() and len(journal.read_text().splitlines()) > 10:
            break
        time.sleep(0.1)
    assert proc.poll() is None, "the job ended before the screening could be interrupted"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err[-3000:]
    assert "every output of epoch" in err  # the finished training was not redone
    journaled = len(journal.read_text().splitlines()) - 1
    again = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900,
                           env=env(tmp_path))
    assert again.returncode == 0, again.stderr[-3000:]
    reused = [int(m) for m in re.findall(r"hull_relaxations.jsonl: (\d+) relaxations reused",
                                         again.stderr)]
    assert reused and journaled - 1 <= reused[0] <= journaled  # (a line cut short is dropped)
    first = json.loads((done / "screening" / "summary.json").read_text())
    resumed = json.loads((out / "screening" / "summary.json").read_text())
    for side in ("generator", "substitution"):
        assert resumed[side]["screened"] == first[side]["screened"]
        assert resumed[side]["converged"] == first[side]["converged"]


def test_grouped_rows_and_report_section(tmp_path):
    rows = [{"name": n, "formula": f, "unique_group": g, "e_hull_eV_per_atom": e,
             "formation_energy_eV_per_atom": -0.1, "stable": e is not None and e <= 0.1,
             "novel": True,
             "relaxation": {"converged": True}, "relaxed_file": f"relaxed/{n}",
             "displacement": {"spacegroup_after": ["Pm-3m", 221]}}
            for n, f, g, e in (("a.vasp", "PdNiH2", 0, 0.05), ("b.vasp", "PdNiH2", 0, 0.02),
                               ("c.vasp", "Pd2NiH", 1, 0.30), ("d.vasp", "PdH", 2, None))]
    grouped = discovery.grouped_candidates({"structures": rows}, {"a.vasp": ["seed_0"],
                                                                   "b.vasp": ["seed_1"]})
    assert [(g["name"], g["count"]) for g in grouped] == [("b.vasp", 2), ("c.vasp", 1)]
    assert grouped[0]["members"] == ["seed_0", "seed_1"] and grouped[0]["names"] == [
        "a.vasp", "b.vasp"]
    report = tmp_path / "report.md"
    report.write_text("# Title\n\nbody\n")
    discovery.write_report_section(report, discovery.not_screened_markdown("hint one"))
    discovery.write_report_section(report, discovery.not_screened_markdown("hint two"))
    text = report.read_text()
    assert text.startswith("# Title\n") and "hint two" in text and "hint one" not in text
    assert text.count("## Candidates for DFT") == 1 and text.rstrip().endswith("body")


def test_h_fraction_selects_by_hydrogen_content_and_bad_ranges_are_refused(tmp_path):
    from absl import flags
    from pymatgen.core import Lattice, Structure

    from crystalgan_jax.pipeline import cli
    from crystalgan_jax.screening import runs

    def cell(n_h: int) -> Structure:
        species = ["Pd", "Ni"] + ["H"] * n_h
        return Structure(Lattice.cubic(5.0), species,
                         [[0.1 * k, 0.2 * k % 1, 0.3 * k % 1] for k in range(len(species))])

    named = [(f"h{n}", cell(n)) for n in (0, 1, 2, 4)]  # fractions 0, 1/3, 1/2, 2/3
    assert [n for n, _ in runs.within_h_fraction(named, (0.3, 0.5))] == ["h1", "h2"]
    comp = discovery.composition(named, named[1:3], (0.3, 0.5), [cell(2), cell(6)])
    assert (comp["offered"], comp["screened"]) == (4, 2)
    assert comp["h_per_metal_screened"] == {"min": 0.5, "median": 0.75, "max": 1.0}
    assert comp["h_per_metal_training"] == {"min": 1.0, "median": 2.0, "max": 3.0}
    assert [n for n, _ in runs.within_h_fraction(named, (0.0, 1.0))] == ["h0", "h1", "h2", "h4"]
    # "data": the training structures' range of hydrogen fractions (here 1/3 .. 1/2)
    training = [cell(2), cell(1), cell(2)]
    lo, hi = runs.resolve_h_fraction(runs.H_FRACTION_DATA, training)
    assert lo == pytest.approx(1 / 3) and hi == pytest.approx(1 / 2)
    assert [n for n, _ in runs.within_h_fraction(named, (lo, hi))] == ["h1", "h2"]
    assert runs.resolve_h_fraction((0.1, 0.2), training) == (0.1, 0.2)
    with pytest.raises(ValueError, match="h_fraction"):
        runs.resolve_h_fraction("training", training)
    comp = discovery.composition(named, named[1:3], (lo, hi), training, from_data=True)
    assert comp["h_fraction_from_data"] and comp["h_fraction"] == [round(lo, 6), 0.5]
    fv = flags.FlagValues()
    cli.define_screen_flags(fv)
    fv(["prog", "--h_fraction=0.4,0.7"])
    assert cli.h_fraction_from_flags(fv) == (0.4, 0.7)
    fv(["prog", "--h_fraction=data"])
    assert cli.h_fraction_from_flags(fv) == runs.H_FRACTION_DATA
    for bad in ("0.7,0.4", "0.2", "a,b", "0,1.5", "data,1"):
        fv(["prog", f"--h_fraction={bad}"])
        with pytest.raises(cli.UsageError, match="--h_fraction"):
            cli.h_fraction_from_flags(fv)
    # train.py refuses it before any training
    proc = subprocess.run(TRAIN + SMALL + ["--screen", "--h_fraction=0.9,0.1",
                                           f"--output_dir={tmp_path / 'run'}"],
                          cwd=REPO / "experiments", capture_output=True, text=True,
                          env=env(tmp_path), timeout=120)
    assert proc.returncode != 0 and "--h_fraction needs 0 <= lo <= hi <= 1" in proc.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_offspring_are_bred_from_the_screened_candidates_and_judged_with_them(finished,
                                                                              tmp_path):
    """screen_run with --heredity and --permutations: the first screening's converged
    candidates breed, the offspring are relaxed (and only they: the journal holds every
    candidate once) and judged on the same hull, and the summary says what they changed."""
    from crystalgan_jax.materials import substitution

    _, done, _ = finished
    run = tmp_path / "run"
    shutil.copytree(done, run, ignore=shutil.ignore_patterns(".lock"))
    (run / "screening" / "relaxations.jsonl").unlink()  # these candidates replace the run's
    shutil.rmtree(run / "screening" / "relaxed")
    rocksalt = io.read_structure(REPO / "data" / "PdH" / "000_rocksalt.vasp") * [2, 1, 1]
    decorations = [(f"d{k}.vasp", substitution.decorate(rocksalt, "Pd", "Ni", sites), True)
                   for k, sites in enumerate(substitution.distinct_decorations(rocksalt, "Pd", 2))]
    assert len(decorations) >= 3
    # candidates at EMT's minimum, so that the run's settings (4 steps at most) converge them
    with Relaxer("emt", fmax=0.02, max_steps=300, workers=1) as relaxer:
        named = [(name, r.final) for (name, _, _), r in zip(decorations,
                                                            relaxer.relax(decorations))]
    settings = json.loads((done / "screening" / "screening.json").read_text())["settings"]
    with Relaxer("emt", fmax=settings["fmax"], max_steps=settings["max_steps"],
                 optimizer=settings["optimizer"], hull_optimizer=settings["hull_optimizer"],
                 workers=1) as relaxer:  # the run's settings: its hull and baseline reused
        summary = discovery.screen_run(run, relaxer, stability_threshold=1.0, use_cache=False,
                                       log=lambda _: None, candidates=named, heredity=2,
                                       permutations=1, symmetrize=0.5)
    manifest = json.loads((run / "screening" / "offspring.json").read_text())
    result = json.loads((run / "screening" / "screening.json").read_text())
    names = [r["name"] for r in result["structures"]]
    assert names == [n for n, _ in named] + sorted(manifest)
    ops = [m["operator"] for m in manifest.values()]
    assert "heredity" in ops and "permutation" in ops
    assert summary["offspring"]["screened"] == len(manifest) == summary["generator"][
        "screened"] - len(named)
    assert set(summary["offspring"]["comparison_without"]) == set(summary["comparison"])
    # heredity children: twice the parents' cell, on the same hull as every candidate
    for row in result["structures"]:
        if manifest.get(row["name"], {}).get("operator") == "heredity":
            assert row["n_atoms"] == 2 * len(rocksalt)
    journal = (run / "screening" / "relaxations.jsonl").read_text().splitlines()[1:]
    relaxed = [json.loads(line)["name"] for line in journal]
    first = [n for n in relaxed if "@" not in n]  # (the symmetry pass's end in @symmetrized)
    assert sorted(first) == sorted(names)  # the first pass was not relaxed again
    hull = (run / "screening" / "hull_relaxations.jsonl").read_text()
    assert hull == (done / "screening" / "hull_relaxations.jsonl").read_text()
