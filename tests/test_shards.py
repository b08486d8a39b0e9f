"""Sharded screening: shards plus --collect equal one unsharded screening (EMT, seconds)."""

import json
import os
import subprocess
import sys

import pytest
from pymatgen.core import Lattice, Structure

from crystalgan_jax.materials import io
from crystalgan_jax.screening import shards
from tests.conftest import REPO
from tests.test_locking import holder

pytest.importorskip("ase.calculators.emt")


def rocksalt(metal, a):
    return Structure(Lattice([[0, a / 2, a / 2], [a / 2, 0, a / 2], [a / 2, a / 2, 0]]),
                     [metal, "H"], [[0, 0, 0], [0.5, 0.5, 0.5]])


def candidates():
    a = 4.0
    rock = Structure(Lattice([[0, a, 0], [a / 2, 0, a / 2], [a / 2, 0, -a / 2]]),
                     ["Pd", "Ni", "H", "H"],
                     [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0, 0], [0, 0.5, 0.5]])
    layered = Structure(Lattice.tetragonal(2.9, 5.2), ["Pd", "Ni", "H", "H"],
                        [[0, 0, 0], [0, 0, 0.5], [0.5, 0.5, 0.25], [0.5, 0.5, 0.75]])
    shifted = rock.copy()
    shifted.translate_sites(range(len(shifted)), [0.1, 0.2, 0.05])  # same crystal as rock
    pd3 = Structure(Lattice.cubic(3.9), ["Pd", "Pd", "Pd", "Ni", "H"],
                    [[0, .5, .5], [.5, 0, .5], [.5, .5, 0], [0, 0, 0], [.5, .5, .5]])
    return {"a.vasp": rock, "b.vasp": layered, "c.vasp": pd3, "d.vasp": shifted}


def strip(result):
    """screening.json without what depends on timing or on the folder."""
    rows = []
    for row in result["structures"]:
        row = dict(row)
        row["relaxation"] = {k: v for k, v in row["relaxation"].items() if k != "seconds"}
        rows.append(row)
    return {"counts": result["counts"], "structures": rows,
            "hull": result["settings"]["hull"]}


def test_two_shards_collected_equal_one_screening(tmp_path):
    for metal, a in (("Pd", 4.1), ("Ni", 3.7)):
        io.write_poscar(rocksalt(metal, a), tmp_path / f"{metal}H" / "rocksalt.vasp")
    folder = tmp_path / "candidates"
    for name, s in candidates().items():
        io.write_poscar(s, folder / name)
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "CRYSTALGAN_CACHE": str(tmp_path / "cache"),
           "OMP_NUM_THREADS": "1"}
    base = [sys.executable, str(REPO / "experiments" / "screen.py"), f"--structures={folder}",
            f"--data_ah={tmp_path / 'PdH'}", f"--data_bh={tmp_path / 'NiH'}",
            "--element_a=Pd", "--element_b=Ni", "--potential=emt", "--only=all",
            "--max_steps=40", "--fmax=0.05"]

    def run(*extra, rc=0):
        proc = subprocess.run(base + list(extra), cwd=REPO, capture_output=True, text=True,
                              timeout=600, env=env)
        assert proc.returncode == rc, proc.stderr[-3000:]
        return proc

    whole, sharded = tmp_path / "whole", tmp_path / "sharded"
    run(f"--output={whole}")
    # collecting before the shards ran is refused, naming what is missing
    early = run(f"--output={sharded}", "--collect=2", rc=2)
    assert "shard 0/2" in early.stderr and "not found" in early.stderr
    run(f"--output={sharded}", "--shard=1/2")
    assert "2 relaxations reused" in run(f"--output={sharded}", "--shard=1/2").stderr  # resumes
    half = run(f"--output={sharded}", "--collect=2", rc=2)
    assert "shard 0/2" in half.stderr and "not found" in half.stderr
    run(f"--output={sharded}", "--shard=0/2")
    shard0 = json.loads((shards.shard_dir(sharded, 0, 2) / "screening.json").read_text())
    assert [r["name"] for r in shard0["structures"]] == ["a.vasp", "c.vasp"]
    collected = run(f"--output={sharded}", "--collect=2")
    assert "4 relaxations reused" in collected.stderr and "[screen]" not in collected.stderr
    one = json.loads((whole / "screening.json").read_text())
    two = json.loads((sharded / "screening.json").read_text())
    assert one["counts"]["screened"] == 4
    # a.vasp and d.vasp (the same crystal) were in different shards: one group after collect
    groups = {r["name"]: r.get("unique_group") for r in two["structures"]}
    assert groups["a.vasp"] == groups["d.vasp"]
    assert strip(one) == strip(two)
    assert (sharded / "relaxed" / "b.vasp").exists()
    assert (sharded / "phase_diagram.png").stat().st_size > 1000
    # a candidate no shard relaxed (a shard cut short) is named, nothing merged
    before = (sharded / "relaxations.jsonl").read_text()
    with pytest.raises(shards.ShardError, match="1 candidates relaxed by no shard of 2: e.vasp"):
        shards.merge_journals(sharded, 2, [*candidates(), "e.vasp"])
    assert (sharded / "relaxations.jsonl").read_text() == before


def test_bad_shard_and_locked_folder_are_refused(tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "CRYSTALGAN_CACHE": str(tmp_path / "cache")}
    for metal, a in (("Pd", 4.1), ("Ni", 3.7)):
        io.write_poscar(rocksalt(metal, a), tmp_path / f"{metal}H" / "rocksalt.vasp")
    folder = tmp_path / "candidates"
    io.write_poscar(candidates()["a.vasp"], folder / "a.vasp")
    base = [sys.executable, str(REPO / "experiments" / "screen.py"), f"--structures={folder}",
            f"--data_ah={tmp_path / 'PdH'}", f"--data_bh={tmp_path / 'NiH'}",
            "--element_a=Pd", "--element_b=Ni", "--potential=emt", "--max_steps=5"]
    proc = subprocess.run(base + ["--shard=2/2"], cwd=REPO, capture_output=True, text=True,
                          timeout=300, env=env)
    assert proc.returncode == 2 and "0 <= i < N" in proc.stderr
    out = tmp_path / "out"
    other = holder(out)
    try:
        proc = subprocess.run(base + [f"--output={out}"], cwd=REPO, capture_output=True,
                              text=True, timeout=300, env=env)
        assert proc.returncode == 3, proc.stderr[-2000:]
        assert f"in use by another screening (pid {other.pid} on " in proc.stderr
    finally:
        other.stdin.close()
        other.wait(timeout=60)


def test_parse_and_split():
    assert shards.parse_shard("1/4") == (1, 4)
    for bad in ("4/4", "1", "a/b", "-1/3", "0/0"):
        with pytest.raises(shards.ShardError):
            shards.parse_shard(bad)
    items = list(range(7))
    parts = [shards.shard_of(items, i, 3) for i in range(3)]
    assert parts == [[0, 3, 6], [1, 4], [2, 5]]
    assert sorted(sum(parts, [])) == items
