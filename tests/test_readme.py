"""The README's Python blocks run as written, from the repository root."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
_BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def python_blocks(markdown: str) -> list[str]:
    """The bodies of the fenced ```python blocks of a Markdown text, in order."""
    return _BLOCK.findall(markdown)


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, timeout=600)


def test_readme_has_python_blocks():
    assert python_blocks((REPO / "README.md").read_text())


@pytest.mark.parametrize("index", range(len(python_blocks((REPO / "README.md").read_text()))))
def test_readme_python_block_runs(index):
    code = python_blocks((REPO / "README.md").read_text())[index]
    proc = _run(code)
    assert proc.returncode == 0, f"README block {index} failed:\n{code}\n{proc.stderr[-3000:]}"


def test_a_broken_block_is_caught():
    """The check above can fail: a block that uses a name it never defines (the README's
    old ``lattice`` snippet) exits non-zero with a NameError."""
    code = python_blocks((REPO / "README.md").read_text())[0]
    proc = _run(code + "\nprint(lattice_never_defined)\n")
    assert proc.returncode != 0 and "NameError" in proc.stderr
