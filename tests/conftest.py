"""Shared fixtures: the reference data live in ../shared, beside the checkout."""

import shutil
from pathlib import Path

import pytest

from crystalgan_jax.materials import io

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
