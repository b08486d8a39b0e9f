"""What a run was made with: library versions, the code's git commit, hashes of the inputs.

Recorded in a run's ``config.json`` so that a result can be traced to the exact code and
data that produced it.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import re
import subprocess
from pathlib import Path
from typing import Iterable

# Distributions whose versions decide a run's numbers or files.
PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "pymatgen", "ase", "numpy")
_CODE_DIR = Path(__file__).resolve().parent


def versions(packages: Iterable[str] = PACKAGES) -> dict[str, str | None]:
    """Installed version of each distribution (None where it is not installed)."""
    out: dict[str, str | None] = {}
    for name in packages:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_commit(folder: str | Path = _CODE_DIR) -> dict[str, str | bool] | None:
    """``{"commit": sha, "dirty": bool}`` of the git checkout holding ``folder``.

    ``dirty`` is True where tracked files differ from the commit, so the commit alone does
    not give the code. None where ``folder`` is not in a git checkout (an installed wheel)
    or git is missing.
    """
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(folder), *args], capture_output=True,
                              text=True, check=True, timeout=30).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": dirty}


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def source_file(source: str) -> str:
    """The file of a structure's source label: ``f.mat[3]`` and ``db[id=2]`` -> the file."""
    return re.sub(r"\[[^\[\]]*\]$", "", source)


def input_hashes(sources: Iterable[str]) -> dict[str, str]:
    """SHA-256 of each distinct file behind the structures' source labels, in order."""
    out: dict[str, str] = {}
    for source in sources:
        path = source_file(source)
        if path not in out and Path(path).is_file():
            out[path] = file_sha256(path)
    return out
