"""Append-only JSON-lines journals: what an interrupted screening, second opinion or DFT
check reuses when it is run again.

The first line holds the settings the results depend on; each later line is one result
with its ``"name"``. A journal written with other settings is started again, and a line
cut short by a hard kill is dropped (that result is made again). The journals of
relaxations (:class:`crystalgan_jax.screening.runs.Journal`), of second opinions and of
DFT calculations build on :class:`JsonlJournal`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Mapping

Log = Callable[[str], None]


class JsonlJournal:
    """One journal file: ``entries`` (name -> the line's object) as read at opening.

    Args:
      path: the file (created with its settings line where missing or made otherwise).
      settings: JSON-able settings; the first line is ``{"settings": settings}``.
      log: receives what was reused, dropped or started again.
      what: what a line holds, in the reuse message (e.g. "relaxations").
    """

    def __init__(self, path: Path, settings: Mapping[str, Any], log: Log, what: str):
        self.path = path
        self.entries: dict[str, dict] = {}
        head = {"settings": dict(settings)}
        if path.exists():
            lines = path.read_text().splitlines()
            try:
                same = bool(lines) and json.loads(lines[0]) == head
            except json.JSONDecodeError:
                same = False
            if same:
                for number, line in enumerate(lines[1:], start=2):
                    try:
                        entry = json.loads(line)
                        self.entries[entry["name"]] = entry
                    except (json.JSONDecodeError, KeyError):  # cut short by a hard kill
                        log(f"{path}, line {number}: incomplete line dropped")
                log(f"{path}: {len(self.entries)} {what} reused")
            else:
                log(f"{path}: made with other settings, starting again")
        if not self.entries:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(head) + "\n")

    def append(self, entry: Mapping[str, Any], sync: bool = False) -> None:
        """Adds one line (``entry`` has a ``"name"``), in one write; ``sync``: on disk
        before returning (for results that took minutes)."""
        line = json.dumps(entry) + "\n"
        with self.path.open("a") as f:
            f.write(line)
            if sync:
                f.flush()
                os.fsync(f.fileno())
