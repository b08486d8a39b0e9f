"""No lost work, no silent NaN, one run per folder, checked checkpoints (issue #11).

Signals and locks are tested with real processes: ``experiments/train.py`` started with
``subprocess``, a real SIGTERM / SIGKILL, and a second real process against the lock.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from crystalgan_jax import train
from crystalgan_jax.train import checkpoints
from crystalgan_jax.train.checkpoints import CheckpointError, Checkpoints
from crystalgan_jax.pipeline.errors import DivergenceError, OutputDirError
from crystalgan_jax.pipeline.spec import RunSpec
from crystalgan_jax.pipeline.folder import check_output
from crystalgan_jax.pipeline.loop import chunk_length
from crystalgan_jax.pipeline.job import run
from tests.conftest import REPO, small_domain

TRAIN = REPO / "experiments" / "train.py"
ENV = {**os.environ, "JAX_PLATFORMS": "cpu"}
TINY = ["--chunk_epochs=2", "--checkpoint_every=2", "--depth=1", "--width=8",
        "--batch_size=4", "--generator_steps=1", "--noevaluate"]


def _strict_json(line: str) -> dict:
    def refuse(name):
        raise ValueError(f"bare {name} in metrics.jsonl")
    return json.loads(line, parse_constant=refuse)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("data")
    return small_domain(tmp, "PdH", 4), small_domain(tmp, "NiH", 4)


def _spec(data, out, **kw):
    cfg = kw.pop("train", train.TrainConfig(epochs=4, batch_size=4, depth=1, width=8,
                                               chunk_epochs=2, generator_steps=1))
    return RunSpec(data_ah=str(data[0]), data_bh=str(data[1]), element_a="Pd",
                   element_b="Ni", output_dir=str(out), train=cfg, checkpoint_every=2,
                   evaluate=False, **kw)


def _train(args, timeout=300):
    return subprocess.run([sys.executable, str(TRAIN), *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout, env=ENV)


def _one_error_line(proc, pattern):
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    errors = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
    assert len(errors) == 1 and re.search(pattern, errors[0]), proc.stderr[-2000:]


# --- the output folder ------------------------------------------------------------------

def test_folder_that_is_not_a_run_is_refused_even_with_overwrite(data, tmp_path):
    mine = tmp_path / "out" / "structures" / "mine.vasp"
    mine.parent.mkdir(parents=True)
    mine.write_text("my own structure")
    (tmp_path / "out" / "report.md").write_text("my notes")
    for overwrite in (False, True):
        with pytest.raises(OutputDirError, match=r"holds no run of ours \(report.md, "
                                                 r"structures\)"):
            run(_spec(data, tmp_path / "out", overwrite=overwrite), log=lambda m: None)
    assert mine.read_text() == "my own structure"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["report.md", "structures"]


@pytest.mark.parametrize("case", ["parent_is_file", "name_too_long", "unwritable", "is_file"])
def test_unusable_output_paths_give_one_error(data, tmp_path, case):
    (tmp_path / "file").write_text("x")
    out = {"parent_is_file": tmp_path / "file" / "out",
           "name_too_long": tmp_path / ("n" * 300),
           "is_file": tmp_path / "file",
           "unwritable": tmp_path / "ro" / "out"}[case]
    if case == "unwritable":
        if os.geteuid() == 0:  # root writes anywhere on a normal file system; sysfs refuses
            out = Path("/sys/crystalgan_out")
        else:
            (tmp_path / "ro").mkdir(mode=0o555)
    with pytest.raises(OutputDirError, match=re.escape(str(out)) + r": cannot use this output"):
        run(_spec(data, out), log=lambda m: None)


def test_bad_output_path_from_the_command_line(data, tmp_path):
    (tmp_path / "file").write_text("x")
    proc = _train(["--flagfile=pdni_paper.flags", f"--data_ah={data[0]}", f"--data_bh={data[1]}",
                   f"--output_dir={tmp_path / 'file' / 'out'}", *TINY])
    _one_error_line(proc, r"file/out: cannot use this output folder: a part of the path is a "
                          r"file")


@pytest.mark.parametrize("args, pattern", [
    (["--element_a=Pd", "--element_b=Pd"], "element_a and element_b are both Pd"),
    (["--element_b=H"], "element_b: the metals A and B cannot be H"),
    (["--seed=99999999999999999999"], r"seed must be an integer in \[0, 4294967295\]"),
    (["--constrained="], "must name at least one class"),
    (["--resume", "--overwrite"], "resume and overwrite .* exclude each other"),
    (["--learning_rate=nan"], "learning_rate must be finite and > 0"),
    (["--occupancy_weight=nan"], "occupancy_weight must be finite and >= 0"),
    (["--flagfile=pdni_reference.flags", "--element_a=Xx"], "'Xx' is not a chemical element"),
])
def test_bad_flags_give_one_error_line(tmp_path, args, pattern):
    proc = _train(["--flagfile=pdni_paper.flags", f"--output_dir={tmp_path / 'out'}", *args])
    _one_error_line(proc, pattern)
    assert not (tmp_path / "out").exists()


# --- one run per folder: two real processes, real signals ---------------------------------

def _start(args, log):
    return subprocess.Popen([sys.executable, str(TRAIN), *args], cwd=REPO, env=ENV,
                            stdout=log.open("w"), stderr=subprocess.STDOUT)


def _wait_for(proc, log, pattern, timeout=300):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log.read_text()
        match = re.search(pattern, text)
        if match:
            return match
        if proc.poll() is not None:
            pytest.fail(f"process ended (rc {proc.returncode}) before {pattern!r}:\n{text[-3000:]}")
        time.sleep(0.3)
    proc.kill()
    pytest.fail(f"no {pattern!r} within {timeout} s:\n{log.read_text()[-3000:]}")


def test_lock_sigterm_and_stale_lock_with_real_processes(data, tmp_path):
    out = tmp_path / "out"
    common = ["--flagfile=pdni_paper.flags", f"--data_ah={data[0]}", f"--data_bh={data[1]}",
              f"--output_dir={out}", *TINY]
    long = common + ["--epochs=100000"]
    # A trains; B, started while A holds the folder, must not touch it (with --overwrite
    # and another seed it used to delete A's run under it)
    a = _start(long, tmp_path / "a.log")
    try:
        _wait_for(a, tmp_path / "a.log", r"\[stage1\] epoch 2/")
        b = _train(long + ["--overwrite", "--seed=1"])
        _one_error_line(b, rf"{out} is in use by another run \(pid {a.pid} on ")
        assert a.poll() is None
        assert json.loads((out / "config.json").read_text())["spec"]["seed"] == 0
        # SIGTERM, as a scheduler sends it: the state is saved, exit code 128 + 15
        a.send_signal(signal.SIGTERM)
        assert a.wait(timeout=120) == 128 + signal.SIGTERM
    finally:
        a.kill()
    log = (tmp_path / "a.log").read_text()
    saved = re.search(r"interrupted: state of epoch (\d+) saved in .*--resume \[SIGTERM\]", log)
    assert saved, log[-2000:]
    epoch = int(saved.group(1))
    assert (out / "checkpoints" / str(epoch)).is_dir()
    rows = [_strict_json(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["global_epoch"] for r in rows] == list(range(1, epoch + 1))
    assert (out / ".lock").read_text() == ""  # released cleanly
    # C resumes from there and is killed hard: its lock is left behind, stale
    c = _start(long + ["--resume"], tmp_path / "c.log")
    try:
        _wait_for(c, tmp_path / "c.log", rf"resumed from epoch {epoch} ")
        _wait_for(c, tmp_path / "c.log", rf"\[stage1\] epoch {epoch + 2}/")
        c.send_signal(signal.SIGKILL)
        c.wait(timeout=60)
    finally:
        c.kill()
    assert f"pid {c.pid} on" in (out / ".lock").read_text()
    # D finds the dead holder's lock, says so, and runs
    d = _train(common + ["--epochs=2", "--overwrite"])
    assert d.returncode == 0, d.stderr[-2000:]
    assert re.search(rf"stale lock of pid {c.pid} on .* taken over", d.stderr)
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 4


# --- divergence ---------------------------------------------------------------------------

def test_divergence_from_the_command_line(data, tmp_path):
    out = tmp_path / "out"
    proc = _train(["--flagfile=pdni_paper.flags", f"--data_ah={data[0]}", f"--data_bh={data[1]}",
                   f"--output_dir={out}", "--learning_rate=1e6", "--epochs=4", *TINY])
    assert proc.returncode == 3, proc.stderr[-2000:]
    # the first chunk (epochs 1-2) goes bad, so the last finite state is the initial one
    assert re.search(r"error: training diverged: .* became NaN or inf in stage1 at epoch [12] "
                     r"\(global epoch [12]\)\. The last finite state \(epoch 0\)", proc.stderr)
    rows = [_strict_json(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows and None in rows[-1].values()
    assert not (out / "structures").exists()
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["0"]


def test_divergence_keeps_the_last_good_checkpoint_for_resume(data, tmp_path, monkeypatch):
    make_runner = train.make_chunk_runner
    calls = []

    def poisoned(*args, **kwargs):
        run_chunk = make_runner(*args, **kwargs)

        def wrapped(state, *rest):
            calls.append(1)
            new_state, metrics = run_chunk(state, *rest)
            if len(calls) == 3:  # stage 3's first chunk blows up
                params = jax.tree_util.tree_map(lambda p: p * jnp.nan, new_state.params)
                new_state = new_state.replace(params=params)
                metrics = metrics.at[1, 1].set(jnp.inf)
            return new_state, metrics
        return wrapped

    monkeypatch.setattr(train, "make_chunk_runner", poisoned)
    with pytest.raises(DivergenceError, match=r"L_G2 became NaN or inf in stage3 at epoch 2 "
                                              r"\(global epoch 6\)") as err:
        run(_spec(data, tmp_path), log=lambda m: None)
    assert (err.value.stage, err.value.epoch, err.value.saved_epoch) == ("stage3", 2, 4)
    rows = [_strict_json(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["global_epoch"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert rows[-1]["L_G2"] is None
    monkeypatch.setattr(train, "make_chunk_runner", make_runner)
    messages = []
    resumed = run(_spec(data, tmp_path, resume=True), log=messages.append)
    assert any("resumed from epoch 4" in m for m in messages)
    assert int(resumed.state.epoch) == 8
    assert checkpoints.all_finite(resumed.state.params)
    rows = [_strict_json(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["global_epoch"] for r in rows] == list(range(1, 9))


# --- checkpoints ----------------------------------------------------------------------------

def _states():
    keys = jax.random.split(jax.random.PRNGKey(0), 8)
    return [train.TrainState({"w": jax.random.normal(k, (64, 64))}, {"m": jnp.ones(3) * i},
                                k, jnp.asarray(i + 1, jnp.int32)) for i, k in enumerate(keys)]


def _saved(tmp_path):
    ckpt = Checkpoints(tmp_path / "ck", every=2, stage_ends=(5,), keep=(5,))
    for state in _states():
        ckpt.save(state)
    assert ckpt.steps() == [5, 6, 8]  # every 2 and the stage end; 2 newest + step 5 kept
    ckpt.close()
    return tmp_path / "ck"


def _largest_data_file(step_dir: Path) -> Path:
    return max((p for p in step_dir.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def _damage(directory: Path, how: str) -> None:
    step = directory / "8"
    if how == "truncated":
        f = _largest_data_file(step / "state")
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    elif how == "random_bytes":
        f = _largest_data_file(step / "state")
        data = bytearray(f.read_bytes())
        data[100:4196] = np.random.default_rng(0).bytes(len(data[100:4196]))
        f.write_bytes(bytes(data))
    elif how == "manifest_deleted":
        (step / "state" / "manifest.ocdbt").unlink()
    elif how == "emptied":
        for p in sorted(step.rglob("*"), reverse=True):
            p.rmdir() if p.is_dir() else p.unlink()
    elif how == "checksum_differs":  # readable arrays that are not the ones saved
        meta = step / "meta" / "metadata"
        meta.write_text(meta.read_text().replace('"sha256": "', '"sha256": "0'))


@pytest.mark.parametrize("how", ["truncated", "random_bytes", "manifest_deleted", "emptied",
                                 "checksum_differs"])
def test_damaged_newest_checkpoint_falls_back_in_one_line(tmp_path, how, capfd):
    directory = _saved(tmp_path)
    _damage(directory, how)
    messages = []
    ckpt = Checkpoints(directory, every=2, stage_ends=(5,), keep=(5,), log=messages.append)
    restored = ckpt.restore(_states()[0])
    assert int(restored.epoch) == 6
    np.testing.assert_array_equal(restored.params["w"], _states()[5].params["w"])
    assert len(messages) == 1 and "\n" not in messages[0]
    assert re.search(r"ck/8 is damaged: .*; falling back to step 6", messages[0])
    assert ckpt.steps() == [5, 6] and (directory / "8.damaged").is_dir()
    ckpt.close()
    assert capfd.readouterr().err.count("Traceback") == 0


def test_checkpoint_is_packed_and_reads_back_with_or_without_a_template(tmp_path):
    states = _states()
    ckpt = Checkpoints(tmp_path, every=1)
    ckpt.save(states[3])
    ckpt.wait()  # a policy save is written in the background
    # packed: one array per dtype (float32, uint32 key, int32 epoch), not one per leaf
    layout = json.loads((tmp_path / "4" / "meta" / "metadata").read_text())["layout"]
    assert len(layout) == len(jax.tree_util.tree_leaves(states[3]))
    assert {entry["group"] for entry in layout} == {"float32", "uint32", "int32"}
    restored = ckpt.restore(states[0])
    for got, want in zip(jax.tree_util.tree_leaves(restored), jax.tree_util.tree_leaves(states[3])):
        np.testing.assert_array_equal(got, want)
        assert got.shape == want.shape and got.dtype == want.dtype
    plain = ckpt.read_as_dicts()
    np.testing.assert_array_equal(plain["params"]["w"], states[3].params["w"])
    np.testing.assert_array_equal(plain["key"], states[3].key)
    assert int(plain["epoch"]) == 4
    # a template of another shape is not silently filled
    other = states[0].replace(params={"w": jnp.zeros((8, 8))})
    with pytest.raises(CheckpointError):
        ckpt.restore(other)
    ckpt.close()


def test_background_saves_are_on_disk_before_anything_reads_and_report_failures(tmp_path):
    states = _states()
    ckpt = Checkpoints(tmp_path, every=1)
    assert ckpt.save(states[0]) and ckpt.save(states[1])  # the second waits for the first
    assert ckpt.steps() == [1, 2]  # waits for the second
    real_save = ckpt._manager.save

    def failing(*args, **kwargs):
        raise OSError("disk full")

    ckpt._manager.save = failing
    assert ckpt.save(states[2])  # returns at once; the error comes with the next call
    with pytest.raises(OSError, match="disk full"):
        ckpt.wait()
    ckpt._manager.save = real_save
    ckpt.wait()  # reported once
    assert ckpt.save(states[2], force=True)  # forced: written before it returns
    assert (tmp_path / "3").is_dir()
    ckpt.close()
    assert ckpt.steps() == [2, 3]


def test_a_wait_cut_short_by_a_signal_leaves_the_save_pending(tmp_path):
    # Ctrl-C while the main thread waits for a background save: the interrupted state's
    # save must wait for that one too (two saves of one step collide in Orbax)
    import concurrent.futures

    class Interrupted(concurrent.futures.Future):
        def result(self, timeout=None):
            if not self.done():
                raise KeyboardInterrupt  # as a signal handler raises it in the waiter
            return super().result(timeout)

    ckpt = Checkpoints(tmp_path, every=1)
    pending = ckpt._pending = Interrupted()
    with pytest.raises(KeyboardInterrupt):
        ckpt.wait()
    assert ckpt._pending is pending
    pending.set_result(True)
    ckpt.wait()
    assert ckpt._pending is None
    ckpt.close()


def test_non_finite_checkpoint_is_not_restored(tmp_path):
    states = _states()
    ckpt = Checkpoints(tmp_path, every=1)
    ckpt.save(states[0])
    bad = states[1].replace(opt_state={"m": jnp.array([1.0, jnp.nan, 2.0])})
    ckpt.save(bad)
    messages = []
    ckpt._log = messages.append
    assert int(ckpt.restore(states[0]).epoch) == 1
    assert "holds NaN or inf; falling back to step 1" in messages[0]
    for p in sorted((tmp_path / "1").rglob("*"), reverse=True):  # and the last one emptied
        p.rmdir() if p.is_dir() else p.unlink()
    with pytest.raises(CheckpointError, match=r"no intact checkpoint under .*--overwrite"):
        ckpt.restore(states[0])
    ckpt.close()


def test_check_output_refuses_a_run_without_resume_or_overwrite(data, tmp_path):
    (tmp_path / "metrics.jsonl").write_text("")
    with pytest.raises(FileExistsError, match="already holds a run"):
        check_output(_spec(data, tmp_path))
    check_output(_spec(data, tmp_path, resume=True))


@pytest.mark.parametrize("chunk, every", [(2, 2), (3, 4), (4, 4), (1, 3)])
def test_orbax_policies_save_and_keep_what_the_schedule_says(tmp_path, chunk, every):
    # Two stages of 7 epochs: saves at multiples of ``every`` and at the stage ends 7, 14;
    # kept: the newest two and the end of stage 1 (epoch 7)
    epochs, stage_ends = 7, (7, 14)
    template = _states()[0]
    ckpt = Checkpoints(tmp_path, every=every, stage_ends=stage_ends, keep=(7,))
    epoch, saved, ends = 0, [], []
    for end in stage_ends:
        while epoch < end:
            n = chunk_length(epoch, end, chunk, every)
            assert 1 <= n <= chunk
            epoch += n
            ends.append(epoch)
            if ckpt.save(template.replace(epoch=jnp.asarray(epoch, jnp.int32))):
                saved.append(epoch)
    expected_saves = sorted({e for e in range(1, 2 * epochs + 1) if e % every == 0} | {7, 14})
    assert set(expected_saves) <= set(ends)  # chunks end where a save is due
    assert saved == expected_saves
    assert ckpt.steps() == sorted({7} | set(expected_saves[-2:]))
    ckpt.close()
