"""The Python blocks of the README and of every docs/*.md file run as written, from the
repository root.

Only blocks fenced as ```python run; a block meant as illustration only is fenced otherwise
(```text, ```bash) and is not run.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
_BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
DOCUMENTS = [REPO / "README.md"] + sorted((REPO / "docs").glob("*.md"))


def python_blocks(markdown: str) -> list[str]:
    """The bodies of the fenced ```python blocks of a Markdown text, in order."""
    return _BLOCK.findall(markdown)


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, timeout=600)


def _cases() -> list[tuple[str, int]]:
    return [(str(doc.relative_to(REPO)), i) for doc in DOCUMENTS
            for i in range(len(python_blocks(doc.read_text())))]


def test_readme_has_python_blocks():
    assert python_blocks((REPO / "README.md").read_text())


def test_docs_exist_and_some_have_python_blocks():
    docs = [d for d in DOCUMENTS if d.parent.name == "docs"]
    assert docs and any(python_blocks(d.read_text()) for d in docs)


@pytest.mark.parametrize("document,index", _cases())
def test_python_block_runs(document, index):
    code = python_blocks((REPO / document).read_text())[index]
    proc = _run(code)
    assert proc.returncode == 0, f"{document} block {index} failed:\n{code}\n{proc.stderr[-3000:]}"


def test_a_broken_block_is_caught():
    """The check above can fail: a block that uses a name it never defines (the README's
    old ``lattice`` snippet) exits non-zero with a NameError."""
    code = python_blocks((REPO / "README.md").read_text())[0]
    proc = _run(code + "\nprint(lattice_never_defined)\n")
    assert proc.returncode != 0 and "NameError" in proc.stderr


def test_ci_runs_the_readme_test_command():
    """.ci/run ends with the test command the README gives (CI runs exactly that one)."""
    readme = (REPO / "README.md").read_text()
    commands = re.findall(r"^python -m pytest [^\n]*$", readme, re.M)
    assert len(commands) == 1, commands
    ci = [line for line in (REPO / ".ci" / "run").read_text().splitlines()
          if line.strip() and not line.startswith("#")]
    assert ci[-1] == commands[0]
