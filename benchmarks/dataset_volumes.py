"""How well the data set builder's volume rule predicts the reference cell volumes.

For every structure of the CrystalGAN authors' Pd-H and Ni-H data (DFT-relaxed, kept in
``../shared/data/crystalgan-reference/`` beside the repository), compares the volume that
``crystalgan_jax.materials.datasets.rule_volume`` gives the same composition (n_M metal atoms,
n_H H atoms) with the reference cell volume. Prints, per metal, the median and the worst
relative error, and writes them with the per-structure figures to a JSON file.

    python benchmarks/dataset_volumes.py [--reference DIR] [--out FILE]

Exits 0 with a message naming the reference folder when it is absent.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # common.py, run as a module too
from common import write_results  # noqa: E402

from crystalgan_jax.materials import datasets, io  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_REFERENCE = REPO.parent / "shared" / "data" / "crystalgan-reference"
DEFAULT_OUT = REPO / "benchmarks" / "results" / "dataset_volumes.json"
# (metal, file, block of the metal in the authors' .mat layout: 2 for A, 3 for B)
REFERENCE_SETS = (("Pd", "PdH_dataset.mat", 2), ("Ni", "NiH_dataset.mat", 3))


def compare(domain: io.Domain) -> dict:
    """Rule volume against reference volume for each structure of a domain (A^3).

    Relative errors are (rule - reference) / reference; "worst" is the largest in size.
    """
    rows = []
    for source, structure in zip(domain.sources, domain.structures):
        n_metal = int(structure.composition[domain.metal])
        n_h = int(structure.composition["H"])
        reference = float(structure.volume)
        rule = datasets.rule_volume(domain.metal, n_metal, n_h)
        rows.append({"source": Path(source).name, "n_metal": n_metal, "n_h": n_h,
                     "reference_volume": reference, "rule_volume": rule,
                     "relative_error": (rule - reference) / reference})
    errors = np.array([row["relative_error"] for row in rows])
    worst = int(np.argmax(np.abs(errors)))
    # 2.9 A^3 per H is measured on interstitial solutions; H-richer cells are reported
    # apart, since that is where the rule is expected to be weakest.
    h_per_metal = np.array([row["n_h"] / row["n_metal"] for row in rows])
    regimes = {}
    for name, selected in (("H/M <= 1", h_per_metal <= 1), ("H/M > 1", h_per_metal > 1)):
        if selected.any():
            regimes[name] = {"n_structures": int(selected.sum()),
                             "median_abs_relative_error": float(np.median(np.abs(errors[selected]))),
                             "median_relative_error": float(np.median(errors[selected]))}
    return {
        "metal": domain.metal,
        "atomic_volume": datasets.host_of(domain.metal).atomic_volume,
        "h_volume": datasets.H_VOLUME,
        "n_structures": len(rows),
        "median_abs_relative_error": float(np.median(np.abs(errors))),
        "median_relative_error": float(np.median(errors)),
        "worst_relative_error": float(errors[worst]),
        "worst_source": rows[worst]["source"],
        "by_h_per_metal": regimes,
        "structures": rows,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference", type=Path, default=DEFAULT_REFERENCE,
                        help=f"folder of the reference .mat files (default {DEFAULT_REFERENCE})")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help=f"JSON file to write (default {DEFAULT_OUT})")
    args = parser.parse_args(argv)
    if not args.reference.is_dir():
        print(f"skipping: reference data folder {args.reference} not found "
              "(expected ../shared/data/crystalgan-reference/ beside the repository)")
        return 0
    results = []
    for metal, name, block in REFERENCE_SETS:
        summary = compare(io.read_domain(args.reference / name, metal, block))
        results.append(summary)
        print(f"{metal}: {summary['n_structures']} structures, v_{metal} = "
              f"{summary['atomic_volume']:.3f} A^3, v_H = {summary['h_volume']} A^3; "
              f"relative volume error (rule - reference) / reference: "
              f"median |e| = {summary['median_abs_relative_error']:.2%}, "
              f"median e = {summary['median_relative_error']:+.2%}, "
              f"worst e = {summary['worst_relative_error']:+.2%} ({summary['worst_source']})")
        for name, regime in summary["by_h_per_metal"].items():
            print(f"  {name}: "
                  f"{regime['n_structures']} structures, median |e| = "
                  f"{regime['median_abs_relative_error']:.2%}, median e = {regime['median_relative_error']:+.2%}")
    write_results(args.out, {"metals": results})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
