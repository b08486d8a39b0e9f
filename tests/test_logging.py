"""Progress and warnings as a user reads them: one summary line, compile time apart, log files."""

import logging
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
from pymatgen.core import Lattice, Structure

from crystalgan_jax.core import encoding
from crystalgan_jax.pipeline import cli, loop, outputs, trainers
from tests.conftest import REPO, small_domain


def test_skipped_samples_are_summarised_in_one_line(tmp_path):
    good = Structure(Lattice.cubic(4.0), ["Pd", "Ni", "H"], [[0, 0, 0], [0.5, 0.5, 0.5],
                                                             [0.5, 0, 0]])
    layout = encoding.Layout("Pd", "Ni", 2, 2, 2)
    batch = encoding.encode_batch([good] * 6, layout)
    masks = tuple(np.array(m) for m in batch.masks)
    for m in masks:
        m[1:5] = 0.0  # samples 1..4 hold no atom
    lattice = np.array(batch.lattice)
    lattice[5] = np.diag([4.0, 4.0, 1e-6])  # sample 5: a flat cell
    crystals = encoding.Crystal(lattice, batch.positions, masks)
    messages = []
    files = outputs.write_structures({"final": {"AHB": crystals}}, layout, tmp_path,
                                    messages.append)
    assert [p.name for p in files["final"]["AHB"]] == ["000.vasp"]
    assert len(messages) == 1, messages
    assert messages[0].startswith("skipped 5 of 6 final samples: 4 no atom has occupancy")
    assert "(AHB/001, AHB/002, AHB/003, ... 1 more)" in messages[0]
    assert "1 degenerate cell" in messages[0] and "AHB/005" in messages[0]


_SHORT = re.compile(r"^\d\d:\d\d:\d\d [DIWEF] ")  # 13:57:35 I ...
_ABSL = re.compile(r"^[DIWEF]\d{4} \d\d:\d\d:\d\d\.\d{6} +\d+ \S+:\d+\] ")  # absl's


def test_terminal_lines_carry_a_short_prefix_and_files_absl_s_full_one(tmp_path):
    from absl import logging as absl_logging
    handler = absl_logging.PythonHandler()
    handler.setFormatter(cli.TerminalFormatter(handler))
    record = logging.LogRecord("x", logging.WARNING, __file__, 7, "[stage1] %s", ("w",), None)
    handler.stream = sys.stderr
    terminal = handler.format(record)
    assert _SHORT.match(terminal) and terminal.endswith(" W [stage1] w"), terminal
    with open(tmp_path / "log.INFO", "w") as f:
        handler.stream = f
        in_file = handler.format(record)
    assert _ABSL.match(in_file) and in_file.endswith("] [stage1] w"), in_file


def test_compile_ahead_times_the_compilation_and_passes_other_callables():
    fn = jax.jit(lambda x: jnp.sin(x) * 2)
    compiled, seconds, quick = loop.compile_lowered(trainers.lower(fn, True, jnp.ones(3)))
    assert seconds is not None and seconds > 0 and quick
    np.testing.assert_allclose(compiled(jnp.ones(3)), 2 * np.sin(1.0), rtol=1e-6)
    plain = lambda x: x  # noqa: E731
    assert loop.compile_lowered(trainers.lower(plain, False, 1)) == (plain, None, False)


def test_train_py_logs_progress_to_the_terminal_and_to_log_dir(tmp_path):
    ah, bh = small_domain(tmp_path, "PdH", 2), small_domain(tmp_path, "NiH", 2)
    cmd = [sys.executable, str(REPO / "experiments" / "train.py"), "--flagfile=pdni_paper.flags",
           f"--data_ah={ah}", f"--data_bh={bh}", f"--output_dir={tmp_path / 'out'}",
           "--epochs=2", "--chunk_epochs=1", "--depth=1", "--width=8", "--batch_size=2",
           "--generator_steps=1", "--method=discogan", "--noevaluate",
           f"--log_dir={tmp_path / 'logs'}"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    logs = list((tmp_path / "logs").glob("*.INFO"))
    assert logs, os.listdir(tmp_path / "logs")
    text = logs[0].read_text()
    epoch = [line for line in proc.stderr.splitlines() if "[stage1] epoch 2/2" in line]
    assert epoch and _SHORT.match(epoch[0]) and not _ABSL.match(epoch[0]), epoch
    epoch = [line for line in text.splitlines() if "[stage1] epoch 2/2" in line]
    assert epoch and _ABSL.match(epoch[0]), epoch
    for where in (proc.stderr, text):
        assert "[stage1] compiled in" in where
        assert "quick compilation for a short stage" in where  # 2 steps: stage_compiler_options
        assert "[stage1] epoch 2/2" in where and "epochs/s" in where
        assert "[stage1] done: 2 epochs in" in where and "epochs/s steady" in where
        assert "checkpoint_manager" not in where  # Orbax's INFO lines only at --verbosity=1
        # the last line, logged just before the process ends without the interpreter's
        # teardown (cli.finish): flushed to the terminal and the file alike
        last = where.strip().splitlines()
        assert "final structures also in" in last[-2] and "wall time by phase" in last[-1]
    assert proc.stdout.startswith(f"outputs in {tmp_path / 'out'}")
    quiet = subprocess.run(cmd[:-1] + ["--overwrite", "--verbosity=-1"], cwd=REPO,
                           capture_output=True, text=True, timeout=600,
                           env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert quiet.returncode == 0 and "epochs/s" not in quiet.stderr
