"""One run path: a population's members equal single runs of the improved method, learned
settings and files included; no module reaches into another's underscore names."""

import ast
import dataclasses
import json
from pathlib import Path

import jax
import numpy as np
import pytest

from crystalgan_jax.pipeline import schedule
from crystalgan_jax.pipeline.job import run
from crystalgan_jax.pipeline.spec import RunSpec
from crystalgan_jax.train import population as train_population
from crystalgan_jax import train
from tests.conftest import REPO, small_domain

TINY = train.TrainConfig(epochs=2, batch_size=5, depth=1, width=16, chunk_epochs=1,
                            generator_steps=1)
SEEDS = (0, 4)
# what a run writes that is not one of the files a member writes
POPULATION_ONLY = {"checkpoints", ".lock", "flags.txt", "outputs.json"}


@pytest.fixture(scope="module")
def plus_runs(tmp_path_factory):
    """A crystalgan_plus population of two seeds built as Table 2 builds its rows, and the
    two single runs of those seeds."""
    tmp = tmp_path_factory.mktemp("plus")
    ah, bh = small_domain(tmp, "PdH", 5), small_domain(tmp, "NiH", 5)
    base = RunSpec(data_ah=str(ah), data_bh=str(bh), element_a="Pd", element_b="Ni",
                   output_dir=str(tmp / "unused"), train=TINY, checkpoint_every=1)
    specs = schedule.table2_specs(base, ["crystalgan_plus"], SEEDS, tmp / "table2")
    pop = run(specs["crystalgan_plus"], log=lambda m: None)
    singles = {}
    for seed in SEEDS:
        spec = dataclasses.replace(specs["crystalgan_plus"].base, seed=seed,
                                   output_dir=str(tmp / f"single_{seed}"))
        singles[seed] = run(spec, log=lambda m: None)
    return pop, singles


def _files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")
            if not (set(p.relative_to(folder).parts) & POPULATION_ONLY)}


def test_population_members_equal_single_runs_of_the_improved_method(plus_runs):
    pop, singles = plus_runs
    names = [m.name for m in pop.members]
    for seed, single in singles.items():
        index = names.index(f"seed_{seed}")
        member_dir = pop.output_dir / "members" / names[index]
        member = json.loads((member_dir / "config.json").read_text())["spec"]
        alone = json.loads((single.output_dir / "config.json").read_text())["spec"]
        assert member.pop("output_dir") != alone.pop("output_dir")
        assert member == alone  # every setting, the learned ones included
        # the windows and plane spacing were learned from the data, not left empty
        assert member["train"]["pair_windows"] and member["train"]["min_plane_spacing"] > 0
        learned = single.spec.train
        assert learned.pair_windows and learned.min_plane_spacing > 0
        params = train_population.member_state(pop.state.members, index).params
        for a, b in zip(jax.tree_util.tree_leaves(single.state.params),
                        jax.tree_util.tree_leaves(params), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
        # a member's folder holds the files of a single run's folder
        assert _files(member_dir) == _files(single.output_dir)
        assert {"structures.extxyz", "run.db", "report.json"} <= _files(member_dir)
        assert "novel" in json.loads((member_dir / "report.json").read_text())["counts"]


def test_table2_row_of_the_improved_method_trains_with_its_windows(plus_runs):
    pop, _ = plus_runs
    config = json.loads((pop.output_dir / "config.json").read_text())
    assert config["spec"]["train"]["method"] == "crystalgan_plus"
    windows = config["spec"]["train"]["pair_windows"]
    assert windows and all(w[-2] < w[-1] for w in windows)  # (source, target, lo, hi)
    # and the window term was in the program: its loss is logged for every member
    for m in pop.members:
        rows = [json.loads(line) for line in
                (pop.output_dir / "members" / m.name / "metrics.jsonl").read_text().splitlines()]
        assert any(r.get("L_win") is not None for r in rows if r["stage"] == "stage3")


def _our_modules(tree: ast.Module) -> set[str]:
    """Names bound by ``from crystalgan_jax... import x`` / ``import crystalgan_jax...``."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("crystalgan_jax"):
            names.update(a.asname or a.name for a in node.names)
        elif isinstance(node, ast.Import):
            names.update(a.asname or a.name.split(".")[0] for a in node.names
                         if a.name.startswith("crystalgan_jax"))
    return names


def test_no_module_calls_another_modules_underscore_names():
    offences = []
    for folder in ("crystalgan_jax", "experiments", "benchmarks", "examples", "tests"):
        for path in sorted((REPO / folder).rglob("*.py")):
            tree = ast.parse(path.read_text())
            ours = _our_modules(tree)
            for node in ast.walk(tree):
                if (isinstance(node, ast.Attribute) and node.attr.startswith("_")
                        and not node.attr.startswith("__")
                        and isinstance(node.value, ast.Name) and node.value.id in ours):
                    offences.append(f"{path.relative_to(REPO)}:{node.lineno} "
                                    f"{node.value.id}.{node.attr}")
                if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
                        "crystalgan_jax"):
                    offences += [f"{path.relative_to(REPO)}:{node.lineno} import {a.name}"
                                 for a in node.names if a.name.startswith("_")]
    assert not offences, "\n".join(offences)


def test_the_public_api_resolves_and_import_is_cheap():
    import subprocess
    import sys

    import crystalgan_jax

    for name in crystalgan_jax.__all__:
        assert getattr(crystalgan_jax, name) is not None, name
    code = "import sys, crystalgan_jax; print('jax' in sys.modules, 'pymatgen' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=REPO, check=True).stdout.split()
    assert out == ["False", "False"]
