"""The honest hull: elements, training binaries, alloys, substitution; its cache."""

import json

import pytest
from pymatgen.core import Composition, Lattice, Structure

from crystalgan_jax.materials import alloys
from crystalgan_jax.screening import hull as hulls, system_hull, verdicts
from tests.screening_fakes import CountingRelax, relaxation


def rocksalt(metal: str, a: float) -> Structure:
    return Structure(Lattice([[0, a / 2, a / 2], [a / 2, 0, a / 2], [a / 2, a / 2, 0]]),
                     [metal, "H"], [[0, 0, 0], [0.5, 0.5, 0.5]])


def ternary(other: bool = False) -> Structure:
    """PdNiH2: rocksalt-like with Ni on one Pd site, or (``other``) a layered tetragonal cell."""
    if other:
        return Structure(Lattice.tetragonal(2.9, 5.2), ["Pd", "Ni", "H", "H"],
                         [[0, 0, 0], [0, 0, 0.5], [0.5, 0.5, 0.25], [0.5, 0.5, 0.75]])
    a = 4.0
    return Structure(Lattice([[0, a, 0], [a / 2, 0, a / 2], [a / 2, 0, -a / 2]]),
                     ["Pd", "Ni", "H", "H"],
                     [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0, 0], [0, 0.5, 0.5]])


def element(symbol: str) -> Structure:
    return hulls.reference_structure(symbol)[0]


E = {"Pd": -5.0, "Ni": -5.5, "H": -3.4}


def hand_made_hull() -> system_hull.SystemHull:
    pd3ni = alloys.l12("Pd", "Ni")
    phases = [system_hull.Phase("element", s, relaxation(element(s), E[s])) for s in E]
    phases += [
        system_hull.Phase("training", "PdH", relaxation(rocksalt("Pd", 4.1), -4.4)),
        system_hull.Phase("training", "NiH", relaxation(rocksalt("Ni", 3.7), -4.5)),
        # Pd3Ni 0.05 eV/atom below the Pd..Ni tie line (-5.125 there)
        system_hull.Phase("alloy", "L1_2 Pd3Ni", relaxation(pd3ni, -5.175)),
        # the substitution structure PdNiH2: its reference mixture (PdH + NiH) is -4.45
        system_hull.Phase("substitution", "000.vasp", relaxation(ternary(), -4.55)),
    ]
    return system_hull.SystemHull(("Pd", "Ni", "H"), phases)


def test_alloys_are_on_the_hull_and_substitution_defines_its_own():
    sh = hand_made_hull()
    base = sh.hull(system_hull.BASE_KINDS).phase_diagram()
    training_only = sh.hull(("element", "training")).phase_diagram()
    # the alloy is on the hull E_hull is reported against, not on one without alloys
    assert hulls.energetics(base, Composition("Pd3Ni"), -5.175)[1] == pytest.approx(0.0, abs=1e-9)
    assert hulls.energetics(training_only, Composition("Pd3Ni"), -5.175)[1] == pytest.approx(
        -0.05, abs=1e-9)
    # PdNiH2 against the base hull: PdH + NiH at -4.45, so -4.55 is 0.1 below it
    assert hulls.energetics(base, Composition("PdNiH2"), -4.55)[1] == pytest.approx(-0.1, abs=1e-9)
    full = sh.hull(system_hull.KINDS).phase_diagram()
    assert hulls.energetics(full, Composition("PdNiH2"), -4.55)[1] == pytest.approx(0.0, abs=1e-9)
    assert [p.name for p in sh.of_kind("substitution")] == ["000.vasp"]


def test_candidates_beat_substitution_only_below_it_and_unmatched():
    sh = hand_made_hull()
    sub = sh.structures("substitution")
    named = [("sub itself", ternary()), ("other lower", ternary(other=True)),
             ("other higher", ternary(other=True))]
    relaxations = [relaxation(ternary(), -4.55), relaxation(ternary(other=True), -4.60),
                   relaxation(ternary(other=True), -4.40)]
    result = verdicts.screen(named, relaxations, sh.hull(), "Pd", "Ni",
                             novelty_references={"substitution": sub},
                             evaluation_options={"d1": 1.0, "d2": 1.5},
                             stability_threshold=0.1,
                             substitution_hull=sh.hull(system_hull.KINDS),
                             substitution_structures=sub)
    from pymatgen.analysis.structure_matcher import StructureMatcher

    assert not StructureMatcher().fit(ternary(), ternary(other=True))
    rows = {r["name"]: r for r in result["structures"]}
    s = rows["sub itself"]
    assert s["e_hull_vs_substitution_eV_per_atom"] == pytest.approx(0.0, abs=1e-9)
    assert s["e_hull_eV_per_atom"] == pytest.approx(-0.1, abs=1e-9)
    assert s["beats_substitution"] is False  # matches the substitution structure
    lower = rows["other lower"]
    assert lower["e_hull_vs_substitution_eV_per_atom"] == pytest.approx(-0.05, abs=1e-9)
    assert lower["beats_substitution"] is True
    higher = rows["other higher"]
    assert higher["e_hull_vs_substitution_eV_per_atom"] == pytest.approx(0.15, abs=1e-9)
    # stable against the base hull (+0.05), not against substitution (+0.15 > 0.1)
    assert higher["beats_substitution"] is False and higher["stable"] is True
    assert higher["e_hull_eV_per_atom"] == pytest.approx(0.05, abs=1e-9)
    assert result["counts"]["beats_substitution"] == 1
    md = verdicts.markdown(result, "t", {"fmax": 0.1, "max_steps": 3})
    assert "Beats substitution" in md and "1 distinct groups" in md


def training():
    return [("PdH", rocksalt("Pd", 4.1)), ("NiH", rocksalt("Ni", 3.7))]


def test_cache_round_trip_relaxes_nothing_the_second_time(tmp_path, monkeypatch):
    monkeypatch.setenv(system_hull.CACHE_ENV, str(tmp_path / "cache"))
    settings = {"fmax": 0.1, "max_steps": 10}
    sub = [("000.vasp", ternary())]
    first = CountingRelax()
    a = system_hull.build_system_hull("Pd", "Ni", training(), first, potential="fake 1",
                                      settings=settings, substitution=sub)
    n_inputs = 3 + 2 + len(alloys.ORDERINGS) + 1
    assert first.calls == n_inputs and not a.cached
    path = tmp_path / "cache" / "hulls" / f"{a.key}.json"
    assert path.exists() and json.loads(path.read_text())["key"] == a.key
    second = CountingRelax()
    b = system_hull.build_system_hull("Pd", "Ni", training(), second, potential="fake 1",
                                      settings=settings, substitution=sub)
    assert second.calls == 0 and b.cached and b.key == a.key
    assert b.hull(system_hull.KINDS) == a.hull(system_hull.KINDS)
    assert [p.relaxation.final for p in b.phases] == [p.relaxation.final for p in a.phases]
    # other settings, another potential or another training set: another key, relaxed again
    for changed in ({"settings": {"fmax": 0.05, "max_steps": 10}, "potential": "fake 1"},
                    {"settings": settings, "potential": "fake 2"}):
        third = CountingRelax()
        c = system_hull.build_system_hull("Pd", "Ni", training(), third, **changed)
        assert third.calls == n_inputs - 1 and c.key != a.key  # no substitution here
    moved = training()[:1] + [("NiH", rocksalt("Ni", 3.8))]
    assert system_hull.build_system_hull("Pd", "Ni", moved, CountingRelax(), potential="fake 1",
                                         settings=settings, substitution=sub).key != a.key


def test_cache_folder_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv(system_hull.CACHE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert system_hull.cache_dir() == tmp_path / "xdg" / "crystalgan_jax"
    monkeypatch.setenv(system_hull.CACHE_ENV, str(tmp_path / "mine"))
    assert system_hull.cache_dir() == tmp_path / "mine"


def test_failed_element_reference_is_fatal(tmp_path, monkeypatch):
    monkeypatch.setenv(system_hull.CACHE_ENV, str(tmp_path))

    def failing(jobs):
        return [relaxation(structure, -1.0, status="diverged") for _, structure, _ in jobs]

    with pytest.raises(RuntimeError, match="reference Pd failed"):
        system_hull.build_system_hull("Pd", "Ni", training(), failing, potential="x",
                                      settings={})


def test_two_builders_at_once_relax_the_hull_once(tmp_path, monkeypatch):
    import threading
    import time

    monkeypatch.setenv(system_hull.CACHE_ENV, str(tmp_path))
    counter = CountingRelax()
    lock = threading.Lock()

    def slow(jobs):
        time.sleep(0.02 * len(jobs))
        with lock:
            return counter(jobs)

    results = []

    def build():
        results.append(system_hull.build_system_hull("Pd", "Ni", training(), slow,
                                                     potential="p", settings={}))

    threads = [threading.Thread(target=build) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert len(results) == 2 and sorted(r.cached for r in results) == [False, True]
    assert counter.calls == 3 + 2 + len(alloys.ORDERINGS)
    # without the cache nothing is read or written
    other = CountingRelax()
    system_hull.build_system_hull("Pd", "Ni", training(), other, potential="p", settings={},
                                  use_cache=False)
    assert other.calls == counter.calls


def test_a_hull_started_from_another_relaxes_from_its_minima(tmp_path, monkeypatch):
    """A second opinion's hull starts each phase from the first hull's relaxed structure:
    with the same potential (EMT) every phase is then already relaxed."""
    from crystalgan_jax.screening.workers import Relaxer

    monkeypatch.setenv(system_hull.CACHE_ENV, str(tmp_path))
    settings = {"fmax": 0.05, "max_steps": 200}
    with Relaxer("emt", fmax=0.05, max_steps=200) as relaxer:
        def relax_many(jobs):
            return relaxer.relax(jobs)

        first = system_hull.build_system_hull("Pd", "Ni", training(), relax_many,
                                              potential="EMT", settings=settings)
        second = system_hull.build_system_hull("Pd", "Ni", training(), relax_many,
                                               potential="EMT", settings=settings,
                                               start_from=first)
    assert second.key != first.key and not second.cached
    assert [p.name for p in second.phases] == [p.name for p in first.phases]
    moved = [p for p in first.phases if p.ok and p.relaxation.steps > 2]
    assert moved, "the first hull should have relaxed something"
    for a, b in zip(first.phases, second.phases):
        if not a.ok:
            continue
        assert system_hull.structure_hash(b.relaxation.initial) == system_hull.structure_hash(
            a.relaxation.final)
        assert b.relaxation.steps <= 2, (b.name, b.relaxation.steps)
        assert b.relaxation.energy_per_atom == pytest.approx(a.relaxation.energy_per_atom,
                                                             abs=1e-3)
