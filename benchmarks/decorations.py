"""How low can decorations of the training binaries go? Every formula both sides reach.

    python benchmarks/decorations.py --run_dir=runs/pdni [--per_formula=30] [--supercells=1x1x1]
        [--formulas=F,...] [--workers=2] [--output_dir=DIR] [--out=FILE]

Substitution puts the other metal on the *first* k metal sites of each training binary;
site projection lets the generator choose the k sites. Both stay inside one family: the
training binaries' cells and sites with some metal sites swapped. This measures that
family's floor in the formulas a screened run's generator and substitution both reach
(``RUN_DIR/screening/comparison.json``): for each formula, the symmetry-distinct
decorations of every training binary that give it (or of its supercells, ``--supercells``,
which neither method reaches)
(:func:`crystalgan_jax.materials.substitution.distinct_decorations`, Vegard-scaled as
substitution is), at most ``--per_formula`` of them drawn at random (seeded; 0: all),
written to ``OUT_DIR/structures`` and screened exactly as the run's candidates were
(``experiments/screen.py --structures --hull_substitution``: CHGNet, FIRE, the symmetry
pass, the same cached hull). Prints and writes (``benchmarks/results/decorations.json``, or
``--out``), per formula: the decorations' lowest E_hull against the run's generator and
substitution, and which of the three is lowest (within 1 meV/atom a tie, as the run's
comparison counts). The run's hull journal is copied and reused, so the hull is the run's
and nothing of it is relaxed again; ``--potential`` must be the run's.

An interrupted run picks up where it stopped (the screening's journals).
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

from absl import app, flags

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))  # common.py

from common import RESULTS, write_results  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("run_dir", str(REPO / "runs" / "pdni"), "A screened run folder.")
flags.DEFINE_string("output_dir", "/tmp/decorations", "Where the decorations and their "
                    "screening go.")
flags.DEFINE_integer("per_formula", 30, "Decorations screened per formula, drawn at random "
                     "from the distinct ones (0: all).")
flags.DEFINE_integer("seed", 0, "Seed of the draw.")
flags.DEFINE_list("formulas", [], "Only these reduced formulas (default: every one both "
                  "sides reach).")
flags.DEFINE_list("supercells", ["1x1x1"], "Cells to decorate: each training binary "
                  "repeated so many times along its lattice vectors (2x1x1: doubled along a).")
flags.DEFINE_integer("workers", 2, "Relaxation processes.")
flags.DEFINE_string("potential", "chgnet", "The potential (emt: a fast stand-in for tests).")
flags.DEFINE_string("out", str(RESULTS / "decorations.json"), "JSON file to write.")


def main(argv: list[str]) -> int:
    del argv
    from pymatgen.core import Composition

    from crystalgan_jax.materials import io, substitution
    from crystalgan_jax.screening.runs import run_system

    run = Path(FLAGS.run_dir)
    comparison = run / "screening" / "comparison.json"
    if not comparison.is_file():
        print(f"{comparison}: no comparison here; screen the run first "
              f"(experiments/screen.py --run_dir={run})")
        return 2
    compared = json.loads(comparison.read_text())
    tie = float(compared.get("tie_eV_per_atom", 0.001))
    shared = [r for r in compared["formulas"]
              if r["generator"] is not None and r["substitution"] is not None]
    if FLAGS.formulas:  # these, whether the run reached them or not
        known = {Composition(r["formula"]).reduced_formula: r for r in compared["formulas"]}
        shared = [known.get(Composition(f).reduced_formula,
                            {"formula": f, "generator": None, "substitution": None,
                             "lower": "neither"}) for f in FLAGS.formulas]
    system = run_system(run)
    a, b = system["element_a"], system["element_b"]
    screened = json.loads((run / "screening" / "screening.json").read_text())["settings"]
    # the data as the run's screening read them (absolute paths, which also name the hull's
    # training entries, so that the run's hull journal below is reused as it is)
    data_ah, data_bh = screened["data"]
    domains = (("AH", io.read_domain(data_ah, a).structures, a, b),
               ("BH", io.read_domain(data_bh, b).structures, b, a))

    # every cell to decorate, built once: (domain, index, supercell, structure, parent, dopant)
    cells = [(domain, i, cell, unit * [int(x) for x in cell.split("x")], parent, dopant)
             for domain, structures, parent, dopant in domains
             for i, unit in enumerate(structures) for cell in FLAGS.supercells]

    out = Path(FLAGS.output_dir)
    folder = out / "structures"
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(FLAGS.seed)
    manifest, distinct, screened_of = {}, {}, {}
    for row in shared:
        target = Composition(row["formula"]).reduced_composition
        options = []
        for domain, i, cell, s, parent, dopant in cells:
            n = s.composition[parent]
            for k in range(1, int(n)):
                formula = Composition({"H": s.composition["H"], parent: n - k, dopant: k})
                if formula.reduced_composition != target:
                    continue
                options += [(f"{domain}[{i}] {cell} sites {list(sites)}", s, parent, dopant,
                             sites) for sites in substitution.distinct_decorations(s, parent, k)]
        distinct[row["formula"]] = len(options)
        if FLAGS.per_formula and len(options) > FLAGS.per_formula:
            options = rng.sample(options, FLAGS.per_formula)
        screened_of[row["formula"]] = len(options)
        for source, s, parent, dopant, sites in options:
            name = f"{len(manifest):04d}.vasp"
            if not (folder / name).exists():
                io.write_poscar(substitution.decorate(s, parent, dopant, sites, source),
                                folder / name, comment=source)
            manifest[name] = {"formula": row["formula"], "source": source}
        print(f"{row['formula']}: {distinct[row['formula']]} distinct decorations, "
              f"{screened_of[row['formula']]} screened", flush=True)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))

    screening = out / "screening"
    journal = out / "hull_relaxations.jsonl"
    if not journal.exists():  # the run's hull: nothing to relax again
        shutil.copyfile(run / "screening" / "hull_relaxations.jsonl", journal)
    command = [sys.executable, str(REPO / "experiments" / "screen.py"),
               f"--structures={folder}", f"--output={screening}", f"--element_a={a}",
               f"--element_b={b}", f"--data_ah={data_ah}", f"--data_bh={data_bh}",
               "--hull_substitution", f"--hull_journal={journal}",
               f"--workers={FLAGS.workers}", f"--potentials={FLAGS.potential}",
               f"--max_steps={screened['max_steps']}", f"--fmax={screened['fmax']}",
               f"--optimizer={screened['optimizer']}",
               f"--hull_optimizer={screened['hull_optimizer']}"]
    print(" ".join(command), flush=True)
    done = subprocess.run(command, cwd=REPO)
    if done.returncode != 0:
        print(f"the screening failed (exit {done.returncode}); rerun to go on")
        return done.returncode
    result = json.loads((screening / "screening.json").read_text())
    lowest: dict[str, tuple[float, str]] = {}
    for r in result["structures"]:
        e = r.get("e_hull_eV_per_atom")
        if e is None or r["relaxation"]["status"] != "converged":
            continue
        f = manifest[Path(r["name"]).name]["formula"]
        if f not in lowest or e < lowest[f][0]:
            lowest[f] = (e, manifest[Path(r["name"]).name]["source"])

    table, wins = [], {"decoration": 0, "generator": 0, "substitution": 0, "tie": 0}
    print(f"{'formula':12s} {'generator':>9s} {'substitution':>12s} {'decorations':>11s} "
          f"{'distinct':>8s}  lowest")
    for row in shared:
        f = row["formula"]
        if f not in lowest:
            continue
        e_dec, source = lowest[f]
        sides = {"generator": row["generator"], "substitution": row["substitution"],
                 "decoration": e_dec}
        best = min(v for v in sides.values() if v is not None)
        winners = [k for k, v in sides.items() if v is not None and v <= best + tie]
        verdict = winners[0] if len(winners) == 1 else "tie"
        wins[verdict] += 1
        table.append({"formula": f, **sides, "decoration_source": source,
                      "distinct": distinct[f],
                      "screened": screened_of[f],
                      "generator_vs_substitution": row["lower"],
                      "decoration_below_substitution": (row["substitution"] is not None and
                                                        e_dec < row["substitution"] - tie),
                      "lowest": verdict})
        shown = ["-" if v is None else f"{v:.4f}" for v in (row["generator"],
                                                              row["substitution"])]
        print(f"{f:12s} {shown[0]:>9s} {shown[1]:>12s} {e_dec:11.4f} {distinct[f]:8d}  "
              f"{verdict} ({row['lower']} before)")
    below = sum(t["decoration_below_substitution"] for t in table)
    report = {"run_dir": str(run), "per_formula": FLAGS.per_formula, "seed": FLAGS.seed,
              "supercells": FLAGS.supercells,
              "tie_eV_per_atom": tie, "formulas": len(table),
              "decorations_screened": len(manifest),
              "decoration_below_substitution": below,
              "generator_below_substitution": sum(r["lower"] == "generator" for r in shared),
              "lowest_of_three": wins, "rows": table}
    print(f"{len(table)} formulas: a decoration below substitution's lowest (by more than "
          f"{tie} eV/atom) in {below}; the generator below substitution in "
          f"{report['generator_below_substitution']}; lowest of the three: {wins}")
    write_results(FLAGS.out, report)
    print(f"wrote {FLAGS.out}")
    return 0


if __name__ == "__main__":
    app.run(main)
