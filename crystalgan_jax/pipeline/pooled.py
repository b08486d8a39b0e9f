"""A population's pooled outputs: its members ranked, and every strictly good structure of
all members once.

Into the population's folder::

    candidates/            every strictly good structure of all members once (one file
                           per StructureMatcher group across members), .vasp and .cif
    report.md, report.json members ranked by unique strictly good structures, with their
                           settings; then the pooled candidates
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Sequence

from crystalgan_jax.materials import evaluation, io
from crystalgan_jax.pipeline.spec import Member

COUNT_KEYS = ("generated", "ternary", "good_paper", "good_strict", "unique")


def write_pooled_report(out: Path, members: Sequence[Member], element_a: str,
                        element_b: str) -> dict[str, Any]:
    """``candidates/``, ``report.json`` and ``report.md`` from the members' reports.

    Every strictly good structure of every member is matched against all others
    (StructureMatcher, :func:`evaluation.unique_groups`); ``candidates/`` holds the first
    file of each group, named ``NNN_<member>_<direction>_<file>``.
    """
    rows, strict = [], []
    for index, m in enumerate(members):
        folder = out / "members" / m.name
        report = json.loads((folder / "report.json").read_text())
        rows.append({"member": m.name, "index": index, **m.settings(),
                     "counts": report["counts"]})
        for s in report["structures"]:
            if s["good_strict"]:
                path = folder / s["file"]
                strict.append({"member": m.name, "file": str(path.relative_to(out)),
                               "formula": s["formula"],
                               "spacegroup": s["spacegroup_symbol"],
                               "volume_per_atom_A3": s["volume_per_atom_A3"],
                               "min_distances_A": s["min_distances_A"],
                               "structure": io.read_structure(path)})
    labels = evaluation.unique_groups([s["structure"] for s in strict])
    candidates = out / "candidates"
    shutil.rmtree(candidates, ignore_errors=True)
    candidates.mkdir()
    groups: dict[int, list[dict]] = {}
    for s, label in zip(strict, labels):
        groups.setdefault(label, []).append(s)
    pooled_candidates = []
    for label, found in sorted(groups.items()):
        first = found[0]
        src = out / first["file"]
        stem = f"{label:03d}_{first['member']}_{'_'.join(Path(first['file']).parts[-2:])}"
        stem = stem.removesuffix(".vasp")
        shutil.copy(src, candidates / f"{stem}.vasp")
        shutil.copy(src.with_suffix(".cif"), candidates / f"{stem}.cif")
        pooled_candidates.append({
            "file": f"candidates/{stem}.vasp", "formula": first["formula"],
            "spacegroup": first["spacegroup"],
            "volume_per_atom_A3": first["volume_per_atom_A3"],
            "min_distances_A": first["min_distances_A"],
            "found_by": sorted({s["member"] for s in found}),
            "files": [s["file"] for s in found]})
    ranked = sorted(rows, key=lambda r: (-r["counts"]["unique"], -r["counts"]["good_strict"],
                                         -r["counts"]["good_paper"], r["index"]))
    totals = {k: sum(r["counts"][k] for r in rows) for k in COUNT_KEYS}
    totals["unique"] = len(groups)
    pooled = {"system": f"{element_a}-{element_b}-H", "members": ranked,
              "counts": totals, "candidates": pooled_candidates}
    (out / "report.json").write_text(json.dumps(pooled, indent=1))
    (out / "report.md").write_text(_pooled_markdown(pooled, members))
    return pooled


def _pooled_markdown(pooled: dict, members: Sequence[Member]) -> str:
    swept = members[0].swept
    lines = [f"# CrystalGAN population: {pooled['system']}, {len(members)} members", "",
             "Members ranked by unique strictly good structures (StructureMatcher groups "
             "within the member); each member's own report is in members/<name>/report.md.",
             "", "| rank | member | seed | " + "".join(f"{k} | " for k in swept)
             + "generated | ternary | good (paper) | good (strict) | unique |",
             "| ---: | --- | ---: | " + "---: | " * len(swept) + "---: | ---: | ---: | ---: | ---: |"]
    for rank, r in enumerate(pooled["members"], start=1):
        c = r["counts"]
        lines.append(f"| {rank} | {r['member']} | {r['seed']} | "
                     + "".join(f"{r[k]:g} | " for k in swept)
                     + " | ".join(str(c[k]) for k in COUNT_KEYS) + " |")
    t = pooled["counts"]
    lines += ["", f"All members together: {t['generated']} generated, {t['good_strict']} "
              f"strictly good, {t['unique']} unique across members (StructureMatcher).", "",
              "## Candidates for DFT (pooled)", ""]
    if not pooled["candidates"]:
        lines.append("No member produced a strictly good structure.")
    else:
        lines += ["One file per StructureMatcher group over all members, in candidates/.", "",
                  "| candidate | formula | space group | V/atom (A^3) | min distances (A) | "
                  "found by |", "| --- | --- | --- | ---: | --- | --- |"]
        for c in pooled["candidates"]:
            dists = ", ".join(f"{k} {v:.2f}" for k, v in c["min_distances_A"].items()
                              if v is not None)
            vol = c["volume_per_atom_A3"]
            lines.append(f"| {c['file']} | {c['formula']} | {c['spacegroup'] or '-'} | "
                         f"{'-' if vol is None else f'{vol:.2f}'} | {dists} | "
                         f"{', '.join(c['found_by'])} |")
    return "\n".join(lines) + "\n"
