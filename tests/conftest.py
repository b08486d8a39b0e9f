"""Shared fixtures: the reference data live in ../shared, beside the checkout."""

import shutil
import signal
from pathlib import Path

import pytest

from crystalgan_jax.materials import io

# A suite started in the background of a non-interactive shell (`pytest ... &`) inherits
# SIGINT ignored, and so would every job a test starts: Python then installs no
# KeyboardInterrupt handler, and the tests that stop a job with SIGINT see it run on. A
# handler here is reset to the default in each child at exec.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
REFERENCE = SHARED / "crystalgan-reference"
FIGURE5 = SHARED / "paper-figure5"


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"reference data not found: {path} (expected ../shared/data beside the repo)")
    return path


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    return _need(REFERENCE)


@pytest.fixture(scope="session")
def figure5_dir() -> Path:
    return _need(FIGURE5)


@pytest.fixture(scope="session")
def reference_domains(reference_dir):
    """(PdH, NiH) domains read from the authors' .mat files."""


    pdh = io.read_domain(reference_dir / "PdH_dataset.mat", "Pd", mat_block=2)
    nih = io.read_domain(reference_dir / "NiH_dataset.mat", "Ni", mat_block=3)
    return pdh, nih


def small_domain(tmp: Path, name: str, count: int = 6) -> Path:
    """The first ``count`` files of the embedded data/<name> folder."""
    src = REPO / "data" / name
    files = sorted(p for p in src.iterdir() if io.is_structure_file(p))[:count]
    dst = tmp / name
    dst.mkdir(parents=True)
    for f in files:
        shutil.copy(f, dst / f.name)
    return dst


# The discovery job at a toy size: 2 seeds, a few epochs, 2 samples per input (site
# projection makes nearly every sample a strictly good candidate), EMT, few relaxation steps
TRAIN_SCRIPT = REPO / "experiments" / "train.py"
SMALL_DISCOVERY = ["--flagfile=pdni.flags", "--epochs=4", "--checkpoint_every=4",
                   "--samples_per_input=2", "--potential=emt", "--max_steps=4", "--workers=2"]


def job_env(tmp_path: Path, **extra) -> dict:
    """The environment of a test's job: CPU JAX, a hull cache of its own."""
    import os

    return {**os.environ, "JAX_PLATFORMS": "cpu", "CRYSTALGAN_CACHE": str(tmp_path / "cache"),
            **extra}


@pytest.fixture(scope="session")
def discovery_run(tmp_path_factory):
    """A discovery job run to its end (EMT): (its tmp folder, the run folder, the process).
    Shared by the tests that read one; none of them may change it."""
    import subprocess
    import sys

    tmp = tmp_path_factory.mktemp("discovery")
    out = tmp / "run"
    proc = subprocess.run([sys.executable, str(TRAIN_SCRIPT), *SMALL_DISCOVERY,
                           f"--output_dir={out}"], cwd=REPO,
                          capture_output=True, text=True, timeout=1200, env=job_env(tmp))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp, out, proc
