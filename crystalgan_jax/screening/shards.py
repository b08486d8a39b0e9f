"""A screening split over the tasks of an array job, and the step that merges them.

``experiments/screen.py --shard=i/N`` screens every N-th candidate (``i``, ``i + N``, ...
of the selected candidates in their sorted order; ``0 <= i < N``, e.g.
``--shard=$SLURM_ARRAY_TASK_ID/N`` with ``--array=0-(N-1)``) into its own folder
``OUTPUT/shards/i-of-N`` with its own lock and journals, so shards run side by side.
``--collect=N`` then merges the N shards' journals into ``OUTPUT/relaxations.jsonl``
and screens the whole set from it: every relaxation is reused, and the verdicts that
need all candidates at once (uniqueness, S.U.N. counts) are made over all of them, so
the result equals one unsharded screening.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Sequence, TypeVar

T = TypeVar("T")


class ShardError(ValueError):
    """A malformed --shard, or shards that cannot be collected (missing, incomplete)."""


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/N"`` -> ``(i, N)`` with ``0 <= i < N``."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text or "")
    if not m:
        raise ShardError(f"--shard must read i/N (e.g. 0/4), got {text!r}")
    i, n = int(m.group(1)), int(m.group(2))
    if n < 1 or not 0 <= i < n:
        raise ShardError(f"--shard={text}: need 0 <= i < N")
    return i, n


def shard_of(items: Sequence[T], index: int, count: int) -> list[T]:
    """Items ``index, index + count, ...``: the part of shard ``index`` of ``count``."""
    return list(items[index::count])


def shard_dir(out: Path, index: int, count: int) -> Path:
    return Path(out) / "shards" / f"{index}-of-{count}"


def merge_journals(out: Path, count: int, names: Sequence[str]) -> Path:
    """Writes the N shards' relaxations into ``out/relaxations.jsonl`` (a journal).

    Args:
      out: the screening folder (holding ``shards/i-of-N``).
      count: N.
      names: the names of every candidate; each must be in exactly one shard's journal.
    Raises:
      ShardError: a shard folder or journal is missing, the shards' settings differ, or
        some candidates were relaxed by no shard (they are named).
    """
    settings: Any = None
    entries: dict[str, str] = {}
    for index in range(count):
        path = shard_dir(out, index, count) / "relaxations.jsonl"
        if not path.exists():
            raise ShardError(f"shard {index}/{count}: {path} not found (not run yet?)")
        lines = path.read_text().splitlines()
        head = json.loads(lines[0])
        if settings is None:
            settings = head
        elif head != settings:
            raise ShardError(f"shard {index}/{count} was screened with other settings "
                             f"({head} against {settings})")
        for line in lines[1:]:
            try:
                entries.setdefault(json.loads(line)["name"], line)
            except (json.JSONDecodeError, KeyError):
                continue  # a line cut short by a hard kill: that candidate is missing
    missing = [n for n in names if n not in entries]
    if missing:
        listed = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more"
                                           if len(missing) > 5 else "")
        raise ShardError(f"{len(missing)} candidates relaxed by no shard of {count}: {listed}; "
                         "run (or rerun) those shards first")
    path = Path(out) / "relaxations.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([json.dumps(settings)] + [entries[n] for n in names]) + "\n")
    return path
