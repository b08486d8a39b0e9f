"""Populations at scale: members written without a file per sample pool the same
candidates and counts as with them, and their one file per member reads back with ASE."""

import json
import subprocess
import sys

import ase.db
import ase.io
import numpy as np
import pytest

from crystalgan_jax.core import encoding
from crystalgan_jax.materials import io, substitution
from crystalgan_jax.pipeline import job, outputs, pooled
from crystalgan_jax.pipeline.spec import PopulationSpec, RunSpec, make_members
from crystalgan_jax import train
from tests.conftest import small_domain

TINY = train.TrainConfig(method="crystalgan_plus", epochs=4, batch_size=5, depth=1, width=16,
                         chunk_epochs=2, generator_steps=1, samples_per_input=3,
                         snapshots=2)
SEEDS = (0, 1, 2)


@pytest.fixture(scope="module")
def both(tmp_path_factory):
    """The same population written with files per sample and without (in two worker
    processes, the default's way)."""
    tmp = tmp_path_factory.mktemp("scale")
    ah, bh = small_domain(tmp, "PdH", 6), small_domain(tmp, "NiH", 6)
    results = {}
    for mode, workers in (("all", 1), ("candidates", 2)):
        base = RunSpec(data_ah=str(ah), data_bh=str(bh), element_a="Pd", element_b="Ni",
                       output_dir=str(tmp / mode), train=TINY, checkpoint_every=4,
                       write_files=mode, output_workers=workers)
        results[mode] = job.run(PopulationSpec(base, make_members(SEEDS, TINY.weights)),
                                log=lambda m: None)
    return results


def _pooled(result):
    return json.loads((result.output_dir / "report.json").read_text())


def test_files_off_pool_the_same_candidates_and_counts(both):
    on, off = _pooled(both["all"]), _pooled(both["candidates"])
    assert on["counts"] == off["counts"]  # integers from the same trained state
    assert ([(r["member"], r["counts"]) for r in on["members"]]
            == [(r["member"], r["counts"]) for r in off["members"]])
    key = lambda c: (c["file"], c["formula"], tuple(c["found_by"]), len(c["files"]))  # noqa: E731
    assert sorted(map(key, on["candidates"])) == sorted(map(key, off["candidates"]))
    for a, b in zip(on["candidates"], off["candidates"]):
        assert a["spacegroup"] == b["spacegroup"]
        np.testing.assert_allclose(a["volume_per_atom_A3"], b["volume_per_atom_A3"],
                                   rtol=1e-6)
        assert a["min_distances_A"].keys() == b["min_distances_A"].keys()
        np.testing.assert_allclose(list(a["min_distances_A"].values()),
                                   list(b["min_distances_A"].values()), rtol=1e-6)
    for c in off["candidates"]:  # the pooled candidates in full either way
        path = both["candidates"].output_dir / c["file"]
        assert path.exists() and path.with_suffix(".cif").exists()
    assert (both["candidates"].output_dir / "distances.png").exists()  # pooled figure


def test_member_reports_agree_and_files_are_only_where_asked(both):
    for m in both["all"].members:
        on = both["all"].output_dir / "members" / m.name
        off = both["candidates"].output_dir / "members" / m.name
        r_on = json.loads((on / "report.json").read_text())
        r_off = json.loads((off / "report.json").read_text())
        assert r_on["counts"] == r_off["counts"]
        assert r_on["counts_by_group"] == r_off["counts_by_group"]
        strict_on = [s for s in r_on["structures"] if s["good_strict"]]
        assert len(r_off["structures"]) == len(strict_on)  # only the strictly good ones
        assert [s["formula"] for s in r_off["structures"]] == [s["formula"] for s in strict_on]
        assert (on / "structures" / "final").is_dir() and not (off / "structures").exists()
        assert len(list((on / "structures").rglob("*.vasp"))) > 0


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    # the writer and the pool on samples with many strictly good structures (a tiny
    # training gives none): each "member" generated the substitution ternaries of the
    # embedded Pd-H / Ni-H prototypes, members 0 and 1 the same ones (pooled once, found
    # by both), member 2 the others and, for the batch's fallback, one thin cell
    tmp_path = tmp_path_factory.mktemp("real")
    folder = io.read_domain(small_domain(tmp_path, "PdH", 12), "Pd"), \
        io.read_domain(small_domain(tmp_path, "NiH", 12), "Ni")
    ternaries = substitution.substitution(folder[0].structures, folder[1].structures, "Pd",
                                          "Ni")
    layout = encoding.Layout.fit("Pd", "Ni", ternaries)
    half = len(ternaries) // 2
    picks = {0: ternaries[:half], 1: ternaries[:half], 2: ternaries[half:]}
    members = make_members([0, 1, 2], TINY.weights)
    reports = {}
    for mode in ("all", "candidates"):
        out = tmp_path / mode
        for m in members:
            crystals = encoding.encode_batch(picks[m.seed], layout)
            if m.seed == 2:  # a cell 30 times longer along c: more images than a batch takes
                lattice = crystals.lattice.copy()
                lattice[0, 2] *= 30
                crystals = crystals.replace(lattice=lattice)
            spec = RunSpec(data_ah="-", data_bh="-", element_a="Pd", element_b="Ni",
                           output_dir=str(out / "members" / m.name), train=TINY,
                           seed=m.seed, write_files=mode)
            outputs.write_member_outputs(spec, {"final": {"AHB": crystals}}, layout,
                                         folder[0], folder[1], out / "members" / m.name,
                                         [], lambda msg: None, member=True)
        reports[mode] = pooled.write_pooled_report(out, members, "Pd", "Ni")
    return {"members": members, "reports": reports,
            "out": {mode: tmp_path / mode for mode in reports}, "tmp": tmp_path}


def test_members_of_real_crystals_pool_the_same_with_files_on_and_off(real):
    on, off = real["reports"]["all"], real["reports"]["candidates"]
    tmp_path = real["tmp"]
    assert on["counts"]["good_strict"] > 10 and on["counts"] == off["counts"]
    assert [r["counts"] for r in on["members"]] == [r["counts"] for r in off["members"]]
    assert [(c["file"], c["formula"], c["found_by"]) for c in on["candidates"]] == \
        [(c["file"], c["formula"], c["found_by"]) for c in off["candidates"]]
    assert any(c["found_by"] == ["seed_0", "seed_1"] for c in off["candidates"])
    for a, b in zip(on["candidates"], off["candidates"]):
        np.testing.assert_allclose(list(a["min_distances_A"].values()),
                                   list(b["min_distances_A"].values()), rtol=1e-6)
        for mode in ("all", "candidates"):
            assert io.read_structure(tmp_path / mode / a["file"]).composition.reduced_formula \
                == io.read_structure(tmp_path / "all" / a["file"]).composition.reduced_formula


@pytest.mark.parametrize("source", ["trained", "real"])
def test_member_file_reads_back_with_ase_and_ase_db(source, both, real):
    if source == "trained":
        m = both["candidates"].members[1]
        folder = both["candidates"].output_dir / "members" / m.name
    else:  # with strictly good structures
        m = real["members"][2]
        folder = real["out"]["candidates"] / "members" / m.name
    report = json.loads((folder / "report.json").read_text())
    frames = ase.io.read(folder / "structures.extxyz", index=":")
    assert len(frames) == report["counts"]["generated"]
    assert sum(bool(f.info["good_strict"]) for f in frames) == report["counts"]["good_strict"]
    assert sum(bool(f.info["good_paper"]) for f in frames) == report["counts"]["good_paper"]
    assert {f.info["seed"] for f in frames} == {m.seed}
    for f in frames:
        assert f.info["file"].startswith("structures.extxyz@")
        if not f.info["good_strict"]:
            assert f.info["reason_good_strict"]
    # a strict entry's file names its frame, as ase.io.read takes it
    for entry in report["structures"]:
        one = ase.io.read(folder / entry["file"])
        frame = frames[int(entry["file"].split("@")[1])]
        assert frame.info["good_strict"] and one.get_chemical_formula() == \
            frame.get_chemical_formula()
    assert source == "trained" or report["structures"]
    with ase.db.connect(folder / "run.db") as db:
        rows = list(db.select(good_strict=True))
        assert len(rows) == report["counts"]["good_strict"]
        assert db.count() == report["counts"]["generated"]
        assert all(r.spacegroup for r in rows)
    for query, count in (("good_strict=True", report["counts"]["good_strict"]),
                         ("good_paper=False", report["counts"]["generated"]
                          - report["counts"]["good_paper"])):
        proc = subprocess.run([sys.executable, "-m", "ase", "db", str(folder / "run.db"),
                               query, "-n"], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert f"{count} row" in proc.stdout, (query, proc.stdout)
