"""An honest hull of one A-B-H system, relaxed once and cached.

A candidate's energy above the hull means little if the hull lacks the phases a
chemist would try first. The hull here holds, all relaxed the same way:

- ``element``: A, B (``ase.build.bulk``) and H (an H2 molecule in a box);
- ``training``: the training binaries A-H and B-H;
- ``alloy``: the ordered A-B alloys of :mod:`crystalgan_jax.materials.alloys`;
- ``substitution`` (optional): the substitution baseline's ternaries
  (:mod:`crystalgan_jax.materials.substitution`).

:meth:`SystemHull.hull` gives the :class:`~crystalgan_jax.screening.hull.Hull` of any of
these kinds: E_hull is reported against the elements, training binaries and alloys; a
candidate "beats substitution" when it is also stable against the hull that holds the
substitution structures and matches none of them
(:func:`crystalgan_jax.screening.verdicts.screen`).

The relaxed phases are cached as JSON in ``CACHE/hulls/<key>.json``, ``CACHE`` being
``$CRYSTALGAN_CACHE`` where set, else ``$XDG_CACHE_HOME/crystalgan_jax`` (default
``~/.cache/crystalgan_jax``). The key is the sha256 of the input structures' hashes (in
order, with their kinds and names), the potential's name and version, and the relaxation
settings: a second screening of the same system reads the file and relaxes nothing.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from pymatgen.core import Structure

from crystalgan_jax.materials import alloys
from crystalgan_jax.materials.io import HYDROGEN
from crystalgan_jax.screening.hull import Hull, reference_structure
from crystalgan_jax.screening.relax import Relaxation, relaxation_from_json, relaxation_json

KINDS = ("element", "training", "alloy", "substitution")
BASE_KINDS = ("element", "training", "alloy")  # the hull E_hull is reported against
CACHE_ENV = "CRYSTALGAN_CACHE"
CACHE_FORMAT = 1
# relax_many([(name, structure, relax_cell), ...]) -> [Relaxation, ...] in that order; in
# screening a journaled Relaxer (crystalgan_jax.screening.workers), all cores at once
RelaxMany = Callable[[Sequence[tuple[str, Structure, bool]]], list[Relaxation]]
Log = Callable[[str], None]


def cache_dir() -> Path:
    """``$CRYSTALGAN_CACHE``, else ``$XDG_CACHE_HOME/crystalgan_jax`` (``~/.cache/...``)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "crystalgan_jax"


def structure_hash(structure: Structure) -> str:
    """sha256 of a structure's lattice, species and fractional coordinates (1e-6 rounded)."""
    data = {"lattice": [[round(float(x), 6) + 0.0 for x in row]
                        for row in structure.lattice.matrix],
            "species": [site.specie.symbol for site in structure],
            "frac": [[round(float(x), 6) + 0.0 for x in site.frac_coords]
                     for site in structure]}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def cache_key(inputs: Sequence[tuple[str, str, Structure]], potential: str,
              settings: Mapping[str, Any]) -> str:
    """sha256 of ``(kind, name, structure hash)`` of each input, potential and settings."""
    payload = {"format": CACHE_FORMAT, "potential": potential,
               "settings": {k: settings[k] for k in sorted(settings)},
               "inputs": [[kind, name, structure_hash(s)] for kind, name, s in inputs]}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


@dataclasses.dataclass
class Phase:
    """One relaxed hull phase: its kind (:data:`KINDS`), name and relaxation."""

    kind: str
    name: str
    relaxation: Relaxation

    @property
    def ok(self) -> bool:
        return self.relaxation.ok

    def to_json(self) -> dict[str, Any]:
        r = self.relaxation
        return {"kind": self.kind, "name": self.name, "relaxation": relaxation_json(r),
                "initial": r.initial.as_dict(),
                "final": r.final.as_dict() if r.final is not None else None}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "Phase":
        final = Structure.from_dict(data["final"]) if data["final"] else None
        r = relaxation_from_json(data["relaxation"], Structure.from_dict(data["initial"]),
                                 final)
        return cls(data["kind"], data["name"], r)


@dataclasses.dataclass
class SystemHull:
    """The relaxed phases of one A-B-H system (see the module doc).

    Attributes:
      elements: (A, B, "H").
      phases: every phase relaxed, failed ones included (left out of any hull).
      key: the cache key; cached: whether this object was read from the cache.
    """

    elements: tuple[str, ...]
    phases: list[Phase]
    key: str = ""
    cached: bool = False

    def of_kind(self, *kinds: str, usable: bool = True) -> list[Phase]:
        return [p for p in self.phases if p.kind in kinds and (p.ok or not usable)]

    @property
    def references(self) -> dict[str, Relaxation]:
        return {p.name: p.relaxation for p in self.of_kind("element", usable=False)}

    def hull(self, kinds: Sequence[str] = BASE_KINDS) -> Hull:
        """The :class:`Hull` of the usable phases of ``kinds`` (elements always included)."""
        refs = {p.name: p.relaxation.energy_per_atom for p in self.of_kind("element")}
        phases = [(f"{p.kind}: {p.name}", p.relaxation.final.composition,
                   p.relaxation.energy_per_atom)
                  for p in self.phases if p.kind in kinds and p.kind != "element" and p.ok]
        return Hull.build(self.elements, refs, phases)

    def structures(self, kind: str) -> list[Structure]:
        """The relaxed structures of ``kind`` that can be used."""
        return [p.relaxation.final for p in self.of_kind(kind)]

    def to_json(self) -> dict[str, Any]:
        return {"format": CACHE_FORMAT, "key": self.key, "elements": list(self.elements),
                "phases": [p.to_json() for p in self.phases]}

    @classmethod
    def from_json(cls, data: Mapping[str, Any], cached: bool = False) -> "SystemHull":
        return cls(tuple(data["elements"]), [Phase.from_json(p) for p in data["phases"]],
                   data.get("key", ""), cached)


def hull_inputs(element_a: str, element_b: str, training: Sequence[tuple[str, Structure]],
                substitution: Sequence[tuple[str, Structure]] | None = None
                ) -> list[tuple[str, str, Structure, bool]]:
    """``(kind, name, structure, relax_cell)`` of every phase of the system's hull."""
    out = []
    for symbol in (element_a, element_b, HYDROGEN):
        structure, cell = reference_structure(symbol)
        out.append(("element", symbol, structure, cell))
    out += [("training", n, s, True) for n, s in training]
    out += [("alloy", n, s, True) for n, s in alloys.ordered_alloys(element_a, element_b)]
    out += [("substitution", n, s, True) for n, s in (substitution or [])]
    return out


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def build_system_hull(element_a: str, element_b: str,
                      training: Sequence[tuple[str, Structure]], relax_many: RelaxMany, *,
                      potential: str, settings: Mapping[str, Any],
                      substitution: Sequence[tuple[str, Structure]] | None = None,
                      use_cache: bool = True, log: Log | None = None,
                      start_from: "SystemHull | None" = None) -> SystemHull:
    """Relaxes (or reads from the cache) every phase of the system's hull.

    Args:
      element_a, element_b: the metals.
      training: ``(name, structure)`` of the training binaries.
      relax_many: relaxes a list of ``(name, structure, relax_cell)`` (names
        ``"<kind>: <name>"``), giving the :class:`Relaxation` of each in order.
      potential: the potential's name and version (e.g. ``"CHGNet 0.3.0"``), for the key.
      settings: the relaxation settings (fmax, max_steps, ...), for the key.
      substitution: ``(name, structure)`` of the substitution baseline, or None.
      use_cache: read and write ``cache_dir()/hulls/<key>.json``.
      start_from: another potential's relaxed hull of the same inputs: each phase is
        relaxed from that potential's relaxed structure where it has one (a second
        opinion's hull: from near its minimum a relaxation takes a fraction of the steps).
        Its key joins this hull's key.
    Raises:
      RuntimeError: an element's reference failed to relax.
    """
    inputs = hull_inputs(element_a, element_b, training, substitution)
    if start_from is not None:
        settings = {**settings, "start_from": start_from.key}
        starts = {(p.kind, p.name): p.relaxation.final for p in start_from.phases if p.ok}
        inputs = [(k, n, starts.get((k, n), s), cell) for k, n, s, cell in inputs]
    key = cache_key([(k, n, s) for k, n, s, _ in inputs], potential, settings)
    path = cache_dir() / "hulls" / f"{key}.json"
    if not use_cache:
        return _build(element_a, element_b, inputs, relax_many, key, None, log)
    path.parent.mkdir(parents=True, exist_ok=True)
    # one builder per key at a time: shards of an array job started together wait for
    # the first to relax the hull, then read it (flock: released if the holder dies)
    fd = os.open(path.with_suffix(".lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        return _build(element_a, element_b, inputs, relax_many, key, path, log)
    finally:
        os.close(fd)


def _build(element_a: str, element_b: str, inputs, relax_many: RelaxMany, key: str,
           path: Path | None, log: Log | None) -> SystemHull:
    if path is not None and path.exists():
        try:
            out = SystemHull.from_json(json.loads(path.read_text()), cached=True)
            if log:
                log(f"hull of {element_a}-{element_b}-H read from the cache {path}")
            return out
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
            if log:
                log(f"{path}: unreadable ({err}); relaxing the hull again")
    phases = []
    relaxations = relax_many([(f"{kind}: {name}", structure, cell)
                              for kind, name, structure, cell in inputs])
    for (kind, name, _, _), r in zip(inputs, relaxations):
        if kind == "element" and not r.ok:
            raise RuntimeError(f"reference {name} failed to relax: {r.reason}")
        if not r.ok and log:
            log(f"{kind} {name} left out of the hull: {r.reason}")
        phases.append(Phase(kind, name, r))
    out = SystemHull((element_a, element_b, HYDROGEN), phases, key, False)
    if path is not None:
        _write_atomic(path, json.dumps(out.to_json()))
        if log:
            log(f"hull of {element_a}-{element_b}-H cached in {path}")
    return out

