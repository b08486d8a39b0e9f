"""Populations: members equal single runs; 1 vs 4 devices; two processes; resume; pooling."""

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import threading

import ase.io
import jax
import numpy as np
import pytest

from crystalgan_jax.core import losses
from crystalgan_jax.pipeline import errors
from crystalgan_jax.pipeline import job
from crystalgan_jax.pipeline.pooled import write_pooled_report
from crystalgan_jax.pipeline.spec import PopulationSpec, RunSpec, make_members
from crystalgan_jax.train import population as train_population
from crystalgan_jax import train
from tests.conftest import REPO, small_domain

TINY = train.TrainConfig(epochs=2, batch_size=5, depth=1, width=16, chunk_epochs=1,
                            generator_steps=1)
SEEDS = (3, 5, 7)
SWEEP_L7 = (0.0, 1.0)  # l7 traced per member; 0 must equal a run without the clash term
# train.py flags for the same population (chunks of one epoch: two chunks per stage)
FLAGS = ["--element_a=Pd", "--element_b=Ni", "--epochs=2", "--batch_size=5", "--depth=1",
         "--width=16", "--chunk_epochs=1", "--generator_steps=1", "--checkpoint_every=1",
         "--seeds=3,5,7", "--sweep_l7=0,1"]
N_MEMBERS = len(SEEDS) * len(SWEEP_L7)


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("data")
    return small_domain(tmp, "PdH", 5), small_domain(tmp, "NiH", 5)


def _base(small_data, out, **kw) -> RunSpec:
    ah, bh = small_data
    return RunSpec(data_ah=str(ah), data_bh=str(bh), element_a="Pd", element_b="Ni",
                          output_dir=str(out), train=TINY, checkpoint_every=1, **kw)


def _spec(small_data, out, **kw) -> PopulationSpec:
    members = make_members(SEEDS, TINY.weights, {"l7": SWEEP_L7})
    return PopulationSpec(_base(small_data, out, **kw), members)


@pytest.fixture(scope="module")
def pop_run(small_data, tmp_path_factory):
    traces = []
    result = job.run(_spec(small_data, tmp_path_factory.mktemp("pop")),
                            log=lambda m: None, on_trace=traces.append)
    return result, traces


def _assert_params_close(a, b):
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


def _member_params(tree, index):
    return jax.tree_util.tree_map(lambda a: np.asarray(a)[index], tree)


def test_members_are_named_by_seed_and_swept_weights():
    members = make_members([0, 3], losses.Weights(), {"l5": [0.1, 1, 10]})
    assert [m.name for m in members] == ["seed_0_l5_0.1", "seed_0_l5_1", "seed_0_l5_10",
                                         "seed_3_l5_0.1", "seed_3_l5_1", "seed_3_l5_10"]
    assert members[5].weights.l5 == 10.0 and members[5].weights.l6 == 1.0
    assert [m.name for m in make_members([2], losses.Weights())] == ["seed_2"]
    with pytest.raises(ValueError, match="distinct"):
        make_members([1, 1], losses.Weights())
    with pytest.raises(ValueError, match="sweep"):
        make_members([1], losses.Weights(), {"occupancy": [1, 2]})


def test_padding_rows_repeat_member_zero():
    one = train_population.MemberSharding.over(3, jax.devices()[:1])
    assert one.padded == 3 and one.local_members() == [0, 1, 2]
    sharding = dataclasses.replace(one, padded=4)  # as over 4 devices
    np.testing.assert_array_equal(sharding.pad(np.array([5, 6, 7])), [5, 6, 7, 5])


def test_members_equal_single_runs(pop_run, small_data, tmp_path):
    # members (seed 3, l7 = 0) and (seed 7, l7 = 1) of one program against the runs of
    # job.run with that seed and l7 (Python floats there, traced weights here)
    result, traces = pop_run
    assert traces == ["stage1", "stage3"]  # one compilation per stage for all members
    names = [m.name for m in result.members]
    for seed, l7 in ((3, 0.0), (7, 1.0)):
        weights = dataclasses.replace(TINY.weights, l7=l7)
        spec = dataclasses.replace(_base(small_data, tmp_path / f"{seed}_{l7}", evaluate=False),
                                   seed=seed, train=dataclasses.replace(TINY, weights=weights))
        single = job.run(spec, log=lambda m: None)
        index = names.index(f"seed_{seed}_l7_{l7:g}")
        member = train_population.member_state(result.state.members, index)
        _assert_params_close(single.state.params, member.params)
        np.testing.assert_array_equal(single.state.key, member.key)
        # the member's folder holds what the single run wrote, metrics included
        rows = [json.loads(l) for l in (result.output_dir / "members" / names[index]
                                        / "metrics.jsonl").read_text().splitlines()]
        assert [r["global_epoch"] for r in rows] == list(range(1, 2 * TINY.epochs + 1))
        for a, b in zip(rows, single.metrics, strict=True):
            assert a.keys() >= b.keys()
            np.testing.assert_allclose([a[k] for k in b if k.startswith("L_")],
                                       [b[k] for k in b if k.startswith("L_")], rtol=1e-4,
                                       atol=1e-5)
    leaves = jax.tree_util.tree_leaves(result.state.members.params)
    assert not np.allclose(np.asarray(leaves[0])[0], np.asarray(leaves[0])[2])  # seeds differ


def test_population_outputs(pop_run):
    result, _ = pop_run
    out = result.output_dir
    report = json.loads((out / "report.json").read_text())
    assert sorted(r["member"] for r in report["members"]) == sorted(
        m.name for m in result.members)
    uniques = [r["counts"]["unique"] for r in report["members"]]
    assert uniques == sorted(uniques, reverse=True)
    md = (out / "report.md").read_text()
    assert md.splitlines()[4].startswith("| rank | member | seed | l7 |")
    for m in result.members:
        folder = out / "members" / m.name
        # a member's default (write_files="auto"): its samples in one file, no file each
        assert (folder / "report.md").exists() and (folder / "structures.extxyz").exists()
        assert (folder / "run.db").exists() and not (folder / "structures").exists()
        assert not (folder / "distances.png").exists()  # figures per member only if asked
        config = json.loads((folder / "config.json").read_text())
        assert config["spec"]["seed"] == m.seed
        assert config["spec"]["train"]["weights"]["l7"] == m.weights.l7
    assert report["counts"]["unique"] == len(list((out / "candidates").glob("*.vasp")))


def _run_train(args, devices, cwd):
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
    proc = subprocess.run([sys.executable, str(REPO / "experiments" / "train.py"), *args],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_four_devices_equal_one(pop_run, small_data, tmp_path):
    # 6 members over 4 forced host devices: padded to 8, two members per device
    result, _ = pop_run
    out = tmp_path / "four"
    ah, bh = small_data
    _run_train(FLAGS + [f"--data_ah={ah}", f"--data_bh={bh}", f"--output_dir={out}",
                        "--noevaluate"], devices=4, cwd=tmp_path)
    config = json.loads((out / "config.json").read_text())
    assert len(config["devices"]) == 4 and config["padded_members"] == 8
    four = train_population.read_checkpoint(out / "checkpoints")
    one = result.state.members
    assert int(four["epoch"]) == 2 * TINY.epochs
    for i in range(N_MEMBERS):
        _assert_params_close(_member_params(one.params, i),
                             _member_params(four["members"]["params"], i))


def test_accelerator_default_one_vmap_equals_groups(pop_run, small_data, tmp_path,
                                                    monkeypatch):
    # On a GPU the default is one vmap over a device's members; the CPU default (groups of
    # at most MEMBER_GROUP: 3 + 3 here) must train the same members
    assert train_population.member_group("cpu") == train_population.MEMBER_GROUP
    assert train_population.member_group("gpu") is None and train_population.member_group("tpu") is None
    monkeypatch.setattr(train_population, "member_group", lambda platform: None)
    whole = job.run(_spec(small_data, tmp_path / "whole", evaluate=False),
                           log=lambda m: None)
    result, _ = pop_run
    for i in range(N_MEMBERS):
        _assert_params_close(_member_params(result.state.members.params, i),
                             _member_params(whole.state.members.params, i))


def test_two_processes_equal_one(pop_run, small_data, tmp_path):
    # two JAX processes over localhost (jax.distributed), one device each: each trains and
    # evaluates its three members, process 0 pools; same outputs as the one-process run
    result, _ = pop_run
    out = tmp_path / "two"
    ah, bh = small_data
    cmd = [sys.executable, str(REPO / "experiments" / "local_cluster.py"), "--num_processes=2",
           "--", *FLAGS, f"--data_ah={ah}", f"--data_bh={bh}", f"--output_dir={out}"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    for i in (0, 1):  # local_cluster's [i], the log line's prefix, then the process's own
        assert re.search(rf"^\[{i}\] .*\[process {i}\] 6 members \(3 on this process\)",
                         proc.stderr, re.M), proc.stderr[-3000:]
    two = train_population.read_checkpoint(out / "checkpoints")
    for i in range(N_MEMBERS):
        _assert_params_close(_member_params(result.state.members.params, i),
                             _member_params(two["members"]["params"], i))
    pooled_one = json.loads((result.output_dir / "report.json").read_text())
    pooled_two = json.loads((out / "report.json").read_text())
    assert pooled_two["counts"] == pooled_one["counts"]
    assert ([(r["member"], r["counts"]) for r in pooled_two["members"]]
            == [(r["member"], r["counts"]) for r in pooled_one["members"]])
    assert ([c["found_by"] for c in pooled_two["candidates"]]
            == [c["found_by"] for c in pooled_one["candidates"]])
    for m in result.members:  # every member's samples, written by the process holding it
        frames_one = ase.io.read(result.output_dir / "members" / m.name / "structures.extxyz",
                                 index=":")
        frames_two = ase.io.read(out / "members" / m.name / "structures.extxyz", index=":")
        assert ([(f.info["direction"], f.info["sample"], f.info["good_strict"])
                 for f in frames_two]
                == [(f.info["direction"], f.info["sample"], f.info["good_strict"])
                    for f in frames_one]) and frames_one


def test_resume_after_interrupt_equals_uninterrupted(pop_run, small_data, tmp_path,
                                                     monkeypatch):
    result, _ = pop_run
    make = train_population.make_population_chunk
    calls = []

    def interrupting(*args, **kwargs):
        run_chunk = make(*args, **kwargs)

        def wrapped(*a):
            calls.append(1)
            out = run_chunk(*a)
            if len(calls) == 3:  # stage 3's first chunk
                raise KeyboardInterrupt
            return out
        return wrapped

    monkeypatch.setattr(train_population, "make_population_chunk", interrupting)
    messages = []
    with pytest.raises(KeyboardInterrupt):
        job.run(_spec(small_data, tmp_path, evaluate=False), log=messages.append)
    monkeypatch.setattr(train_population, "make_population_chunk", make)
    assert f"interrupted: state of epoch {TINY.epochs} saved" in messages[-1]
    resumed = job.run(_spec(small_data, tmp_path, evaluate=False, resume=True),
                             log=messages.append)
    assert any(f"from epoch {TINY.epochs}" in m for m in messages)
    _assert_params_close(result.state.members.params, resumed.state.members.params)
    for m in result.members:
        rows = [json.loads(l) for l in
                (tmp_path / "members" / m.name / "metrics.jsonl").read_text().splitlines()]
        assert [r["global_epoch"] for r in rows] == list(range(1, 2 * TINY.epochs + 1))
    other = PopulationSpec(_base(small_data, tmp_path, resume=True),
                                      make_members([3, 5], TINY.weights, {"l7": SWEEP_L7}))
    with pytest.raises(errors.ResumeMismatchError, match="other members"):
        job.run(other, log=lambda m: None)


def test_pooled_candidates_hold_each_structure_once(tmp_path):
    # member a: files 0, 1 strictly good; member b: file 0 (the same structure as a's 0)
    # and 2. The pool has three groups; the shared one names both members.
    src = sorted((REPO / "data" / "PdH").glob("*.vasp"))[:3]
    members = make_members([0, 1], losses.Weights())
    chosen = {"seed_0": [0, 1], "seed_1": [0, 2]}
    for m in members:
        folder = tmp_path / "members" / m.name
        (folder / "structures").mkdir(parents=True)
        entries = []
        for j, k in enumerate(chosen[m.name] + [1 if m.name == "seed_1" else 2]):
            path = folder / "structures" / f"{j:03d}.vasp"
            shutil.copy(src[k], path)
            shutil.copy(src[k], path.with_suffix(".cif"))  # any file; only copied
            good = j < 2
            entries.append({"file": f"structures/{j:03d}.vasp", "good_strict": good,
                            "formula": f"f{k}", "spacegroup_symbol": None,
                            "volume_per_atom_A3": 10.0, "min_distances_A": {"Pd-Pd": 2.8}})
        counts = {"generated": 3, "ternary": 0, "good_paper": 2, "good_strict": 2,
                  "unique": 2}
        (folder / "report.json").write_text(json.dumps({"counts": counts,
                                                         "structures": entries}))
    pooled = write_pooled_report(tmp_path, members, "Pd", "Ni")
    found = sorted(tuple(c["found_by"]) for c in pooled["candidates"])
    assert found == [("seed_0",), ("seed_0", "seed_1"), ("seed_1",)]
    assert pooled["counts"]["unique"] == 3 and pooled["counts"]["good_strict"] == 4
    assert len(list((tmp_path / "candidates").glob("*.vasp"))) == 3
    assert len(list((tmp_path / "candidates").glob("*.cif"))) == 3


def test_train_py_refuses_bad_population_flags(tmp_path):
    for args, message in ((["--seeds=1,1"], "seeds must be distinct"),
                          (["--seeds=0,1", "--num_seeds=2"], "not both"),
                          (["--seeds=0", "--sweep_l5=1,x"], "not a number")):
        proc = subprocess.run([sys.executable, str(REPO / "experiments" / "train.py"),
                               "--flagfile=pdni_paper.flags", f"--output_dir={tmp_path}", *args],
                              cwd=REPO, capture_output=True, text=True, timeout=300,
                              env={**os.environ, "JAX_PLATFORMS": "cpu"})
        assert proc.returncode != 0 and message in proc.stderr, proc.stderr[-500:]
        assert not (tmp_path / "checkpoints").exists()


def test_stage1_is_the_same_training_with_or_without_constraints(pop_run, small_data,
                                                               tmp_path):
    # experiments/table2.py trains stage 1 once for nocons, crystalgan and crystalgan+clash
    # (until_epoch) and resumes each from it: that must be what training each gives.
    result, _ = pop_run  # crystalgan, members (seed, l7) = (3, 0), (3, 1), (5, 0), ...
    first = train_population.read_checkpoint(result.output_dir / "checkpoints", TINY.epochs)
    nocons = dataclasses.replace(TINY, method="nocons")
    spec = PopulationSpec(
        dataclasses.replace(_base(small_data, tmp_path / "nocons", evaluate=False),
                            train=nocons), make_members(SEEDS, nocons.weights))
    assert job.run(spec, log=lambda m: None, until_epoch=TINY.epochs) is None
    assert not (tmp_path / "nocons" / "members" / "seed_3" / "structures").exists()
    shared = train_population.read_checkpoint(tmp_path / "nocons" / "checkpoints")
    assert shared["epoch"] == TINY.epochs
    for i in range(len(SEEDS)):  # each seed's stage 1, whatever l5..l7
        for j in range(len(SWEEP_L7)):
            _assert_params_close(_member_params(shared["members"]["params"], i),
                                 _member_params(first["members"]["params"],
                                                i * len(SWEEP_L7) + j))
    # and a population stopped there and resumed ends where the uninterrupted one does
    out = tmp_path / "crystalgan"
    assert job.run(_spec(small_data, out, evaluate=False), log=lambda m: None,
                          until_epoch=TINY.epochs) is None
    resumed = job.run(_spec(small_data, out, evaluate=False, resume=True),
                             log=lambda m: None)
    assert int(resumed.state.epoch) == 2 * TINY.epochs
    _assert_params_close(result.state.members.params, resumed.state.members.params)


def test_stop_event_interrupts_like_ctrl_c(small_data, tmp_path):
    # how table2.py stops the runs of its other threads when one fails or Ctrl-C comes
    stop = threading.Event()
    stop.set()
    messages = []
    with pytest.raises(errors.Interrupted):
        job.run(_spec(small_data, tmp_path, evaluate=False), log=messages.append,
                       stop=stop)
    assert "interrupted: state of epoch 0 saved" in messages[-1]
    assert train_population.read_checkpoint(tmp_path / "checkpoints")["epoch"] == 0
