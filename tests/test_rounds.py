"""Learning from the screen: guides in stage 3, runs that refine a trained run, the guide
chosen from a screening, and train.py --rounds end to end (EMT)."""

import dataclasses
import json
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from crystalgan_jax import train
from crystalgan_jax.core import encoding
from crystalgan_jax.materials import io
from crystalgan_jax.pipeline import job, prepare, rounds
from crystalgan_jax.pipeline.spec import PopulationSpec, RunSpec, make_members
from crystalgan_jax.train.checkpoints import CheckpointError
from tests.conftest import REPO, SMALL_DISCOVERY, TRAIN_SCRIPT, job_env, small_domain

TINY = train.TrainConfig(method="crystalgan_plus", epochs=2, batch_size=5, depth=1, width=16,
                         chunk_epochs=1, generator_steps=1)


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("data")
    return small_domain(tmp, "PdH", 5), small_domain(tmp, "NiH", 5)


def _spec(small_data, out, **kw) -> RunSpec:
    ah, bh = small_data
    return RunSpec(data_ah=str(ah), data_bh=str(bh), element_a="Pd", element_b="Ni",
                   output_dir=str(out), train=kw.pop("train", TINY), checkpoint_every=1,
                   evaluate=False, **kw)


def _ternary(a: float = 3.9) -> Structure:
    return Structure(Lattice.cubic(a), ["Pd", "Ni", "H", "H"],
                     [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])


def _guide(folder, count=3):
    folder.mkdir(parents=True)
    for k in range(count):
        io.write_poscar(_ternary(3.8 + 0.1 * k), folder / f"g{k}.vasp")
    return folder


def test_a_guide_joins_both_stage3_domains(small_data, tmp_path):
    prepared = prepare.prepare(_spec(small_data, tmp_path / "run",
                                     guide=str(_guide(tmp_path / "guide"))))
    assert prepared.guide.lattice.shape[0] == 3
    state = train.init_state(jax.random.PRNGKey(0), prepared.nets, prepared.spec.train)
    plain = train.stage_data("stage3", state, prepared.nets, prepared.x, prepared.y)
    guided = train.stage_data("stage3", state, prepared.nets, prepared.x, prepared.y,
                              prepared.guide)
    for p, g in zip(plain, guided):
        n = p.lattice.shape[0]
        assert g.lattice.shape[0] == n + 3
        for a, b in zip(jax.tree_util.tree_leaves(g), jax.tree_util.tree_leaves(p)):
            np.testing.assert_allclose(np.asarray(a)[:n], np.asarray(b), rtol=1e-6, atol=1e-6)
        for a, b in zip(jax.tree_util.tree_leaves(g), jax.tree_util.tree_leaves(prepared.guide)):
            np.testing.assert_allclose(np.asarray(a)[n:], np.asarray(b), rtol=1e-6, atol=1e-6)
    # the guide's atoms as encoded: decoding gives the file's structure back
    first = encoding.decode(encoding.index(prepared.guide, 0), prepared.layout)
    assert first.composition.reduced_formula == _ternary().composition.reduced_formula


def test_a_guide_that_does_not_fit_is_refused_naming_its_file(small_data, tmp_path):
    folder = _guide(tmp_path / "guide", 1)
    io.write_poscar(Structure(Lattice.cubic(4.0), ["Pd", "Cu"], [[0, 0, 0], [0.5, 0.5, 0.5]]),
                    folder / "bad.vasp")
    with pytest.raises(io.StructureFileError, match=r"bad\.vasp.*Cu"):
        prepare.prepare(_spec(small_data, tmp_path / "run", guide=str(folder)))
    with pytest.raises(io.StructureFileError, match="no such folder"):
        prepare.prepare(_spec(small_data, tmp_path / "run", guide=str(tmp_path / "none")))


def _leaves(tree, names):
    return [np.asarray(x) for n in names for x in jax.tree_util.tree_leaves(tree[n])]


@pytest.mark.parametrize("members", [None, (0, 1)], ids=["single", "population"])
def test_a_refining_run_starts_from_its_parent_and_trains_stage3_only(small_data, tmp_path,
                                                                      members):
    def run(spec):
        pop = (PopulationSpec.single(spec) if members is None else
               PopulationSpec(spec, make_members(members, spec.train.weights)))
        return job.run(pop, log=lambda m: None)

    def params(result, index=0):
        p = result.state.params if members is None else result.state.members.params
        return p if members is None else jax.tree_util.tree_map(lambda a: np.asarray(a)[index], p)

    parent = run(_spec(small_data, tmp_path / "parent"))
    guide = _guide(tmp_path / "guide")
    cfg = dataclasses.replace(TINY, epochs=3, snapshots=TINY.snapshots)
    child = run(_spec(small_data, tmp_path / "child", train=cfg, guide=str(guide),
                      refine_from=str(tmp_path / "parent")))
    before, after = params(parent), params(child)
    stage1 = ["G_AHB1", "G_BHA1", "D_AH", "D_BH"]
    stage3 = ["G_AHB2", "G_BHA2", "D_AHB", "D_BHA"]
    for a, b in zip(_leaves(before, stage1), _leaves(after, stage1)):
        np.testing.assert_array_equal(a, b)  # stage 1 is not trained again
    assert any(not np.allclose(a, b) for a, b in zip(_leaves(before, stage3),
                                                      _leaves(after, stage3)))
    folder = tmp_path / "child" if members is None else tmp_path / "child" / "members" / "seed_0"
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert [(r["stage"], r["epoch"]) for r in rows] == [("stage3", e) for e in (1, 2, 3)]
    config = json.loads((tmp_path / "child" / "config.json").read_text())
    assert config["spec"]["refine_from"] == str(tmp_path / "parent")
    assert config["spec"]["train"]["refine"] is True
    assert any("g0.vasp" in path for path in config["inputs_sha256"])
    # a refined run refines again; a resumed one keeps its own epochs
    again = run(_spec(small_data, tmp_path / "child", train=cfg, guide=str(guide),
                      refine_from=str(tmp_path / "parent"), resume=True))
    for a, b in zip(_leaves(after, stage3), _leaves(params(again), stage3)):
        np.testing.assert_array_equal(a, b)


def test_refining_refuses_an_unfinished_or_different_parent(small_data, tmp_path):
    with pytest.raises(ValueError, match="refine_from"):
        _spec(small_data, tmp_path / "x", train=dataclasses.replace(TINY, refine=True))
    with pytest.raises(CheckpointError, match="not a run folder"):
        job.run(_spec(small_data, tmp_path / "a", refine_from=str(tmp_path / "missing")),
                log=lambda m: None)
    spec = _spec(small_data, tmp_path / "parent")
    job.run(PopulationSpec(spec, make_members((0, 1), spec.train.weights)), log=lambda m: None)
    with pytest.raises(CheckpointError, match="keeps its parent's members"):
        job.run(_spec(small_data, tmp_path / "b", refine_from=str(tmp_path / "parent")),
                log=lambda m: None)
    assert job.run(_spec(small_data, tmp_path / "half"), log=lambda m: None,
                   until_epoch=1) is None
    with pytest.raises(CheckpointError, match="has not finished training"):
        job.run(_spec(small_data, tmp_path / "c", refine_from=str(tmp_path / "half")),
                log=lambda m: None)
    single = _spec(small_data, tmp_path / "single")
    job.run(single, log=lambda m: None)
    kept = sorted(p.name for p in (tmp_path / "single" / "checkpoints").iterdir())
    with pytest.raises(CheckpointError, match="--snapshots=2"):
        job.run(_spec(small_data, tmp_path / "d", refine_from=single.output_dir,
                      train=dataclasses.replace(TINY, epochs=3, snapshots=3)), log=lambda m: None)
    wider = dataclasses.replace(TINY, width=8)
    with pytest.raises(CheckpointError, match="other networks or settings"):
        job.run(_spec(small_data, tmp_path / "e", refine_from=single.output_dir, train=wider),
                log=lambda m: None)
    # the parent's checkpoints are read, never moved aside
    assert sorted(p.name for p in (tmp_path / "single" / "checkpoints").iterdir()) == kept


def _row(name, e_hull, group, converged=True, strict=True, ternary=True):
    return {"name": f"{name}.vasp", "e_hull_eV_per_atom": e_hull, "unique_group": group,
            "relaxation": {"converged": converged}, "relaxed_file": f"relaxed/{name}.vasp",
            "after": {"good_strict": strict, "ternary": ternary},
            "stable": e_hull is not None and e_hull <= 0.1, "novel": True}


def _other_ternary() -> Structure:
    return Structure(Lattice.cubic(4.0), ["Pd", "Ni", "Ni", "H"],
                     [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0.5, 0.5, 0.5]])


def _screened(folder, rows, structure=None):
    (folder / "screening" / "relaxed").mkdir(parents=True, exist_ok=True)
    for r in rows:
        io.write_poscar(structure or _ternary(), folder / "screening" / r["relaxed_file"])
    (folder / "screening" / "screening.json").write_text(json.dumps({"structures": rows}))


def test_the_guide_is_each_groups_lowest_candidate_near_the_hull_and_grows(tmp_path):
    rows = [_row("a", 0.05, 0), _row("b", 0.02, 0), _row("c", 0.15, 1), _row("d", 0.0, 2,
            converged=False), _row("e", 0.01, 3, strict=False), _row("f", None, 4),
            _row("g", 0.09, 5), _row("h", -0.01, 6, ternary=False)]
    assert [r["name"] for r in rounds.selected({"structures": rows}, 0.1)] == ["b.vasp",
                                                                                "g.vasp"]
    run = tmp_path / "run"
    _screened(run, rows)
    folder, total, new = rounds.select_guide(run, 1, 0.1)
    assert folder == run / "rounds" / "1_guide" and (total, new) == (2, 2)
    assert sorted(p.name for p in folder.iterdir()) == ["r0_b.vasp", "r0_g.vasp"]
    _screened(run / "rounds" / "1", [_row("x", 0.03, 0)])
    folder, total, new = rounds.select_guide(run, 2, 0.1)
    assert (total, new) == (3, 1)
    assert sorted(p.name for p in folder.iterdir()) == ["r0_b.vasp", "r0_g.vasp", "r1_x.vasp"]
    with pytest.raises(FileNotFoundError, match="round 2 is not screened"):
        rounds.select_guide(run, 3, 0.1)


def test_round_specs_chain_the_rounds(small_data, tmp_path):
    spec = _spec(small_data, tmp_path / "run", train=dataclasses.replace(TINY, epochs=200))
    second = rounds.round_spec(spec, 2, 50)
    assert second.output_dir == str(tmp_path / "run" / "rounds" / "2")
    assert second.refine_from == str(tmp_path / "run" / "rounds" / "1")
    assert second.guide == str(tmp_path / "run" / "rounds" / "2_guide")
    assert second.train.refine and second.train.epochs == 50 and second.train.trained_stages == ("stage3",)
    assert rounds.round_spec(spec, 1, 50).refine_from == str(tmp_path / "run")


def test_rounds_chain_training_and_screening(small_data, tmp_path):
    """Two rounds after a real round 0: each trained from the one before with the guide
    so far; the screening is a stand-in that finds one candidate per round."""
    spec = _spec(small_data, tmp_path / "run")
    job.run(spec, log=lambda m: None)
    _screened(tmp_path / "run", [_row("a", 0.01, 0), _row("b", 0.5, 1)])
    trained, screened = [], []

    def train_round(round_spec):
        trained.append(round_spec)
        return job.run(round_spec, log=lambda m: None).timing

    def screen_round(folder):
        screened.append(folder)
        _screened(folder, [_row(f"c{len(screened)}", 0.02, 0)], _other_ternary())
        return {"timing_s": {"hull": 0.0, "screening": 1.0}}

    def summarise(folder):
        rows = json.loads((folder / "screening" / "screening.json").read_text())["structures"]
        return {"screened": len(rows), "unique_after_relaxation": len(rows), "sun": 0,
                "on_hull": 0, "lowest_e_hull": min(r["e_hull_eV_per_atom"] for r in rows),
                "median_e_hull": None, "median_steps": None, "median_abs_volume_change": None,
                "h_per_metal": {}, "formulas": {"generator": 0, "substitution": 0,
                                                "only generator": 0}}

    cfg = dataclasses.replace(TINY, epochs=3, snapshots=TINY.snapshots)
    table = rounds.run_rounds(dataclasses.replace(spec, train=cfg), 2, 3, 0.1, train_round,
                              screen_round, summarise, log=lambda m: None)
    assert [r["round"] for r in table["rounds"]] == [0, 1, 2]
    assert [(r["guide"], r["guide_new"]) for r in table["rounds"]] == [(0, 0), (1, 1), (2, 1)]
    # round 1 finds a structure round 0 did not; round 2 only that one again
    assert [r["new_sun"] for r in table["rounds"]] == [1, 1, 0]
    assert [t.refine_from for t in trained] == [str(tmp_path / "run"),
                                                str(tmp_path / "run" / "rounds" / "1")]
    assert all(t.train.epochs == 3 and t.train.refine for t in trained)
    assert sorted(p.name for p in (tmp_path / "run" / "rounds" / "2_guide").iterdir()) == [
        "r0_a.vasp", "r1_c1.vasp"]
    for k in (1, 2):
        timing = json.loads((tmp_path / "run" / "rounds" / str(k) / "timing.json").read_text())
        assert timing["screening_screening"] == 1.0 and timing["training"] > 0
    assert "| 2 | 2 (1) | 1 | 1 | 0 | 0 | 0 |" in (tmp_path / "run" / "rounds.md").read_text()


def test_train_py_rounds_stop_where_nothing_is_near_the_hull(discovery_run, tmp_path):
    """The toy job screens no candidate: --rounds says there is nothing to learn from and
    ends as the job does; --rounds needs --screen."""
    tmp, done, _ = discovery_run
    out = tmp_path / "run"
    shutil.copytree(done, out, ignore=shutil.ignore_patterns(".lock"))
    cmd = [sys.executable, str(TRAIN_SCRIPT), *SMALL_DISCOVERY, f"--output_dir={out}",
           "--resume", "--rounds=1", "--round_epochs=5"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=1200,
                          env=job_env(tmp))  # the fixture's hull cache: not relaxed again
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "round 1: no screened candidate within 0.1 eV/atom" in proc.stderr
    assert json.loads((out / "rounds.json").read_text())["rounds"][0]["round"] == 0
    assert not (out / "rounds" / "1").exists()
    proc = subprocess.run(cmd[:-2] + ["--noscreen", "--rounds=1"], cwd=REPO,
                          capture_output=True, text=True, timeout=600, env=job_env(tmp))
    assert proc.returncode != 0 and "--rounds learns from the screening" in proc.stderr


def test_a_run_made_before_a_setting_existed_resumes_while_it_is_off(tmp_path):
    from crystalgan_jax.pipeline import folder
    from crystalgan_jax.pipeline.errors import ResumeMismatchError

    now = {"spec": {"train": {"epochs": 2, "refine": False}, "seed": 0}, "layout": [1]}
    saved = tmp_path / "config.json"
    saved.write_text(json.dumps({"spec": {"train": {"epochs": 2}, "seed": 0}, "layout": [1]}))
    folder.check_resumable(saved, now)  # "refine" is newer than the run, and off
    on = {**now, "spec": {**now["spec"], "train": {"epochs": 2, "refine": True}}}
    with pytest.raises(ResumeMismatchError, match="spec.train"):
        folder.check_resumable(saved, on)
    with pytest.raises(ResumeMismatchError, match="spec.guide"):
        folder.check_resumable(saved, {**now, "spec": {**now["spec"], "guide": "g"}})
