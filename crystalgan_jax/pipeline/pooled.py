"""A population's pooled outputs: its members ranked, and every strictly good structure of
all members once.

Into the population's folder::

    candidates/            every strictly good structure of all members once (one file
                           per StructureMatcher group across members), .vasp and .cif
    report.md, report.json members ranked by unique strictly good structures, with their
                           settings; then the pooled candidates
    distances.png          the pooled candidates' nearest-neighbour distances against the
                           training structures' (where the run passes their evaluations)

Members written with or without a file per sample (``write_files``) pool the same way.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Sequence

from crystalgan_jax.materials import evaluation, io
from crystalgan_jax.pipeline.spec import Member

COUNT_KEYS = ("generated", "ternary", "good_paper", "good_strict", "unique")


def member_structure(folder: Path, file: str, frames: dict[str, list]) -> tuple[Any, str]:
    """(pymatgen Structure, name) of one strictly good entry of a member's report.

    ``file`` is a structure file (``structures/final/AHB/017.vasp``, named ``AHB_017``)
    or a frame of the member's extended-XYZ file (``structures.extxyz@K``, named by the
    frame's direction and sample, so the same sample has the same name either way).
    ``frames`` caches each file's frames (read once per member).
    """
    if "@" not in file:
        return io.read_structure(folder / file), "_".join(Path(file).parts[-2:]).removesuffix(
            ".vasp")
    import ase.io
    from pymatgen.io.ase import AseAtomsAdaptor

    name, index = file.rsplit("@", 1)
    key = str(folder / name)
    if key not in frames:
        frames[key] = ase.io.read(key, index=":", format="extxyz")
    atoms = frames[key][int(index)]
    return (AseAtomsAdaptor.get_structure(atoms),
            f"{atoms.info['direction']}_{int(atoms.info['sample']):03d}")


def write_pooled_report(out: Path, members: Sequence[Member], element_a: str,
                        element_b: str, training: Sequence | None = None,
                        criteria: dict | None = None) -> dict[str, Any]:
    """``candidates/``, ``report.json`` and ``report.md`` from the members' reports.

    Each member's StructureMatcher groups of strictly good structures are taken from its
    report (``unique_group``; an entry without one is its own group); the first structure
    of each group stands for it, and these are matched across members
    (:func:`evaluation.unique_groups`): matching every member's every strictly good
    structure again would cost the square of the population's size in fits.
    ``candidates/`` holds, per pooled group, the first structure as POSCAR and CIF, named
    ``NNN_<member>_<direction>_<sample>``, read from the member's structure file or from
    its ``structures.extxyz`` frame (members written with ``write_files="candidates"``).
    ``training``: the training structures' evaluations, with ``criteria`` (d1, d2 and the
    options of :func:`crystalgan_jax.materials.report.write_report`): where given,
    ``distances.png`` compares the pooled candidates with them.
    """
    rows, strict = [], []
    for index, m in enumerate(members):
        folder = out / "members" / m.name
        report = json.loads((folder / "report.json").read_text())
        rows.append({"member": m.name, "index": index, **m.settings(),
                     "counts": report["counts"]})
        groups: dict[Any, dict] = {}
        frames: dict[str, list] = {}
        for k, s in enumerate(report["structures"]):
            if not s["good_strict"]:
                continue
            label = s.get("unique_group")
            file = str((folder / s["file"]).relative_to(out))
            if label is not None and label in groups:
                groups[label]["files"].append(file)
                continue
            structure, name = member_structure(folder, s["file"], frames)
            groups[k if label is None else label] = {
                "member": m.name, "file": file, "name": name, "files": [file],
                "formula": s["formula"], "spacegroup": s["spacegroup_symbol"],
                "volume_per_atom_A3": s["volume_per_atom_A3"],
                "min_distances_A": s["min_distances_A"], "structure": structure}
        strict.extend(groups.values())
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
        stem = f"{label:03d}_{first['member']}_{first['name']}"
        io.write_poscar(first["structure"], candidates / f"{stem}.vasp",
                        comment=f"{first['member']} {first['name']}")
        io.write_cif(first["structure"], candidates / f"{stem}.cif")
        pooled_candidates.append({
            "file": f"candidates/{stem}.vasp", "formula": first["formula"],
            "spacegroup": first["spacegroup"],
            "volume_per_atom_A3": first["volume_per_atom_A3"],
            "min_distances_A": first["min_distances_A"],
            "found_by": sorted({s["member"] for s in found}),
            "files": [f for s in found for f in s["files"]]})
    ranked = sorted(rows, key=lambda r: (-r["counts"]["unique"], -r["counts"]["good_strict"],
                                         -r["counts"]["good_paper"], r["index"]))
    totals = {k: sum(r["counts"][k] for r in rows) for k in COUNT_KEYS}
    totals["unique"] = len(groups)
    figures = {"distance_histograms": None}
    if training is not None:  # always, an empty panel where no member has a candidate
        from crystalgan_jax.materials import report as report_lib

        firsts = [found[0]["structure"] for _, found in sorted(groups.items())]
        options = dict(criteria or {})
        d1, d2 = options.pop("d1"), options.pop("d2")
        evaluations = evaluation.evaluate_structures(firsts, element_a, element_b, d1=d1,
                                                     d2=d2, symprec=None, **options)
        figures["distance_histograms"] = report_lib.plot_distance_histograms(
            evaluations, training, element_a, element_b, out / report_lib.DISTANCES_PNG,
            d1, d2).name
    pooled = {"system": f"{element_a}-{element_b}-H", "members": ranked,
              "counts": totals, "candidates": pooled_candidates, "figures": figures}
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
    if pooled.get("figures", {}).get("distance_histograms"):
        lines += [f"![Nearest-neighbour distances, pooled candidates vs training]"
                  f"({pooled['figures']['distance_histograms']})", ""]
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
