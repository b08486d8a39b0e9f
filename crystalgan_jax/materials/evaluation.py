"""Evaluation of generated A-B-H structures by the spec's counting rules.

Per structure (:func:`evaluate_structure`): the Figure-5 neighbour table, the minimum
distance per pair type, each constrained atom's nearest same-class distance, the volume
per atom, the space group, and three verdicts:

- *ternary*: holds A, B and H and nothing else;
- *good (paper)*: ternary, and every atom of a constrained class (default: the metals A
  and B together, and H) has its nearest atom of the same class at a distance in
  [d1, d2] (the caller's thresholds: a run passes its TrainConfig's); an atom with none within the cutoff fails;
- *good (strict)*: good (paper), no two atoms closer than 0.75 x the sum of their
  covalent radii (``ase.data.covalent_radii``, Cordero et al. 2008), and a volume per
  atom within 2..40 Angstrom^3.

For a list (:func:`count_verdicts`): how many were generated, ternary, good (paper),
good (strict), and how many good (strict) ones are *unique* under pymatgen's
StructureMatcher (default tolerances).

All distances are periodic and come from :mod:`crystalgan_jax.core.geometry` (the same
primitives as the training penalty), evaluated in float64. Lengths are Angstrom,
volumes Angstrom^3.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import math
import os
import warnings
from typing import Any, Sequence

import numpy as np
from pymatgen.core import Lattice, Structure

from crystalgan_jax.core import cells
from crystalgan_jax.materials.io import HYDROGEN, MIN_CELL_VOLUME

CUTOFF = 3.0  # Angstrom, neighbour table radius (the paper's Figure 5)
SYMPREC = 0.1  # Angstrom, SpacegroupAnalyzer tolerance
COVALENT_FACTOR = 0.75  # strict: no pair closer than this x (r_cov_i + r_cov_j)
VOLUME_PER_ATOM_RANGE = (2.0, 40.0)  # Angstrom^3, strict
# Largest N*N*S distance array computed for one structure (float64: 8 bytes per entry
# and as much again for a temporary, so about 80 MB). Only a nearly degenerate generated
# cell needs more; its verdicts then fail with a reason instead of exhausting memory.
MAX_DISTANCE_ENTRIES = 5_000_000
# Entries per atom kept in the Figure-5 neighbour table of a report (the nearest shells):
# a degenerate generated cell can hold thousands of images within the cutoff, which made
# report.json hundreds of MB. cells.neighbour_table gives the full list of one structure.
MAX_NEIGHBOURS = 12
# Failure messages listed per verdict before the rest are only counted.
MAX_LISTED_FAILURES = 4

Classes = Sequence[Sequence[str]]


def default_classes(element_a: str, element_b: str) -> tuple[tuple[str, ...], ...]:
    """The spec's constrained classes: metal-metal (A and B together) and H-H'."""
    return ((element_a, element_b), (HYDROGEN,))


def class_name(members: Sequence[str]) -> str:
    """Label of a constrained class, e.g. ``"Pd/Ni"`` or ``"H"``."""
    return "/".join(members)


def pair_key(x: str, y: str) -> str:
    """Key of an unordered pair type: the two symbols sorted, e.g. ``"H-Pd"``."""
    return "-".join(sorted((x, y)))


def chemical_pair(x: str, y: str) -> str:
    """A pair as a chemist writes it: H last, otherwise alphabetical (``"Pd-H"``)."""
    return "-".join(sorted((x, y), key=lambda s: (s == HYDROGEN, s)))


@dataclasses.dataclass(frozen=True)
class AtomNearest:
    """One constrained atom's nearest atom of its own class.

    Attributes:
      label: element and 1-based site index, as in the paper's Figure 5 (``"Ni5"``).
      class_name: its class (:func:`class_name`).
      distance: Angstrom; ``inf`` where the class holds no other atom or image.
    """

    label: str
    class_name: str
    distance: float


@dataclasses.dataclass(frozen=True)
class StructureEvaluation:
    """Everything measured about one structure, with the verdicts and why they fail.

    Attributes:
      formula: pymatgen formula, e.g. ``"Ni2 H2 Pd2"``.
      n_atoms: number of sites.
      volume_per_atom: Angstrom^3 (``nan`` for a structure without atoms).
      spacegroup_symbol, spacegroup_number: from SpacegroupAnalyzer; ``None`` where it
        failed on the cell.
      min_distances: pair key (:func:`pair_key`) -> shortest distance in Angstrom between
        atoms of the two species over periodic images (an atom's own images count for
        like pairs).
      symbols: element symbol per site.
      site_nearest: per site, ``{symbol: distance}`` to the nearest atom of each species
        present (Angstrom, periodic, own images included).
      nearest: one entry per atom of a constrained class, in site order.
      neighbours: Figure-5 table, per site ``((symbol, distance), ...)`` within the cutoff
        (the first ``max_neighbours`` entries of each row).
      ternary, good_paper, good_strict: the verdicts.
      ternary_reason, good_paper_reason, good_strict_reason: why each verdict failed
        (``None`` where it holds).
    """

    formula: str
    n_atoms: int
    volume_per_atom: float
    spacegroup_symbol: str | None
    spacegroup_number: int | None
    min_distances: dict[str, float]
    symbols: tuple[str, ...]
    site_nearest: tuple[dict[str, float], ...]
    nearest: tuple[AtomNearest, ...]
    neighbours: tuple[tuple[tuple[str, float], ...], ...]
    ternary: bool
    good_paper: bool
    good_strict: bool
    ternary_reason: str | None
    good_paper_reason: str | None
    good_strict_reason: str | None

    def to_json(self) -> dict[str, Any]:
        """Plain-JSON dict (an infinite or undefined distance becomes ``None``)."""
        return {
            "formula": self.formula,
            "n_atoms": self.n_atoms,
            "volume_per_atom_A3": _finite(self.volume_per_atom),
            "spacegroup_symbol": self.spacegroup_symbol,
            "spacegroup_number": self.spacegroup_number,
            "min_distances_A": {k: _finite(v) for k, v in self.min_distances.items()},
            "symbols": list(self.symbols),
            "site_nearest_A": [{k: _finite(v) for k, v in row.items()}
                               for row in self.site_nearest],
            "nearest_in_class_A": [
                {"atom": a.label, "class": a.class_name, "distance": _finite(a.distance)}
                for a in self.nearest],
            "neighbours": [[[sym, d] for sym, d in row] for row in self.neighbours],
            "ternary": self.ternary,
            "good_paper": self.good_paper,
            "good_strict": self.good_strict,
            "reasons": {"ternary": self.ternary_reason, "good_paper": self.good_paper_reason,
                        "good_strict": self.good_strict_reason},
        }


def _finite(x: float) -> float | None:
    return float(x) if x is not None and math.isfinite(x) else None


def class_failure(label: str, name: str, dist: float, d1: float, d2: float,
                  cutoff: float) -> str | None:
    """Why one atom's nearest neighbour of a constrained class fails good (paper), or None.

    ``dist``: that neighbour's distance (Angstrom; inf where none within ``cutoff``).
    """
    if dist > cutoff:
        return f"{label}: no {name} within {cutoff:.1f} A"
    if dist < d1:
        return f"{label}: nearest {name} {dist:.3f} A < d1={d1:.3f} A"
    if dist > d2:
        return f"{label}: nearest {name} {dist:.3f} A > d2={d2:.3f} A"
    return None


def paper_reason(ternary: bool, ternary_reason: str | None,
                 paper_failures: Sequence[str]) -> str | None:
    """good (paper)'s reason from the ternary verdict and the per-atom failures."""
    if ternary and not paper_failures:
        return None
    return join_failures(([f"not ternary ({ternary_reason})"] if not ternary else [])
                         + list(paper_failures))


def strict_failures(min_distances: dict[str, float], good_paper: bool,
                    covalent_factor: float, volume_per_atom: float,
                    volume_per_atom_range: tuple[float, float]) -> list[str]:
    """Why a structure fails good (strict): good (paper) failed, a pair closer than
    ``covalent_factor`` times its covalent radii (Angstrom), or a volume per atom
    (Angstrom^3) outside the range; [] where it passes."""
    failures = [] if good_paper else ["fails good (paper)"]
    for key, dist in min_distances.items():
        x, y = key.split("-")
        rx, ry = covalent_radius(x), covalent_radius(y)
        limit = covalent_factor * (rx + ry)
        if dist < limit:
            first, second = chemical_pair(x, y).split("-")
            r1, r2 = (rx, ry) if first == x else (ry, rx)
            failures.append(f"{first}-{second} {dist:.3f} A < "
                            f"{covalent_factor:g}*({r1:.2f}+{r2:.2f})={limit:.3f} A")
    low, high = volume_per_atom_range
    if not low <= volume_per_atom <= high:
        failures.append(
            f"volume per atom {volume_per_atom:.2f} A^3 outside {low:g}..{high:g} A^3")
    return failures


def join_failures(failures: Sequence[str]) -> str | None:
    """A verdict's reason: the first :data:`MAX_LISTED_FAILURES` failures joined by "; ",
    the rest counted; None where there is none."""
    if not failures:
        return None
    listed = list(failures[:MAX_LISTED_FAILURES])
    if len(failures) > MAX_LISTED_FAILURES:
        listed.append(f"and {len(failures) - MAX_LISTED_FAILURES} more")
    return "; ".join(listed)


def _distance_lattice(lattice: Lattice) -> np.ndarray:
    """An LLL-reduced basis of the same lattice (same Cartesian frame).

    Distances do not depend on the basis, but the number of images needed does: a skewed
    generated cell needs far fewer images once reduced.
    """
    try:
        reduced = lattice.get_lll_reduced_lattice().matrix
        if abs(np.linalg.det(reduced)) > MIN_CELL_VOLUME:
            return np.asarray(reduced, np.float64)
    except Exception:  # reduction can fail on nearly singular cells: fall back
        pass
    return np.asarray(lattice.matrix, np.float64)


def _shifts_for(matrix: np.ndarray, radius: float, n_atoms: int) -> np.ndarray | None:
    """Lattice shifts that see every image within ``radius``; None if too many."""
    n = cells.image_range(matrix, radius)
    n_shifts = int(np.prod([2 * m + 1 for m in n]))
    if n_atoms ** 2 * n_shifts > MAX_DISTANCE_ENTRIES:
        return None
    return cells.lattice_shifts(n)


def periodic_distances(structure: Structure, cutoff: float = CUTOFF) -> np.ndarray | None:
    """``[N, N, S]`` distances (Angstrom) from each site to images of each site.

    The shifts cover every image within ``cutoff`` and every image that can be a
    nearest neighbour, so minima over the last axis are exact. The site itself at zero
    shift is set to ``inf``; its other images count. Computed with
    :func:`cells.pair_distances` (NumPy, float64) on an LLL-reduced basis of the
    cell.

    Returns:
      The array, or ``None`` where the cell is so thin that it would need more than
      ``MAX_DISTANCE_ENTRIES`` entries.
    """
    matrix = _distance_lattice(structure.lattice)
    cart = np.asarray(structure.cart_coords, np.float64)
    # The wrapped (zero-shift) distance bounds the nearest image of another atom, and the
    # shortest lattice vector bounds the nearest own image: together they say how many
    # images guarantee the exact minimum.
    zero = cells.pair_distances(matrix, cart, cart, np.zeros((1, 3)))[:, :, 0]
    radius = max(float(zero.max()), float(np.linalg.norm(matrix, axis=1).min()), cutoff)
    shifts = _shifts_for(matrix, radius, len(cart))
    if shifts is None:
        return None
    d = cells.pair_distances(matrix, cart, cart, shifts)
    d[np.arange(len(cart)), np.arange(len(cart)), 0] = np.inf  # the atom itself
    return d


def _site_nearest(d: np.ndarray, symbols: Sequence[str]) -> list[dict[str, float]]:
    """Per site, ``{symbol: distance}`` to its nearest atom of each species."""
    per_pair = d.min(axis=2)  # [N, N]
    symbols = np.asarray(symbols)
    species = list(dict.fromkeys(symbols.tolist()))  # in order of first appearance
    per_species = np.stack([per_pair[:, symbols == sp].min(axis=1) for sp in species], axis=1)
    return [dict(zip(species, map(float, row))) for row in per_species]


def spacegroup(structure: Structure, symprec: float) -> tuple[str | None, int | None]:
    """(symbol, number) of ``structure``'s space group at ``symprec`` (Angstrom), or
    (None, None) where spglib finds none."""
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            analyzer = SpacegroupAnalyzer(structure, symprec=symprec)
            return analyzer.get_space_group_symbol(), int(analyzer.get_space_group_number())
    except Exception:  # spglib rejects some generated cells (overlapping atoms, ...)
        return None, None


def covalent_radius(symbol: str) -> float:
    """Covalent radius (Angstrom; Cordero et al. 2008, as ``ase.data.covalent_radii``)."""
    from ase.data import atomic_numbers, covalent_radii

    return float(covalent_radii[atomic_numbers[symbol]])


def _failed(symbols: Sequence[str], formula: str, volume_per_atom: float,
            spacegroup: tuple[str | None, int | None], reason: str, ternary: bool,
            ternary_reason: str | None) -> StructureEvaluation:
    """An evaluation whose distances could not be measured: both quality verdicts fail."""
    return StructureEvaluation(
        formula=formula, n_atoms=len(symbols), volume_per_atom=volume_per_atom,
        spacegroup_symbol=spacegroup[0], spacegroup_number=spacegroup[1], min_distances={},
        symbols=tuple(symbols), site_nearest=(), nearest=(), neighbours=(), ternary=ternary,
        good_paper=False, good_strict=False, ternary_reason=ternary_reason,
        good_paper_reason=reason, good_strict_reason=reason)


def evaluate_structure(structure: Structure, element_a: str, element_b: str, *,
                       d1: float, d2: float, cutoff: float = CUTOFF,
                       classes: Classes | None = None, symprec: float | None = SYMPREC,
                       covalent_factor: float = COVALENT_FACTOR,
                       volume_per_atom_range: tuple[float, float] = VOLUME_PER_ATOM_RANGE,
                       max_neighbours: int | None = MAX_NEIGHBOURS) -> StructureEvaluation:
    """Measures one structure and gives its verdicts (see the module docstring).

    Args:
      structure: the structure (any lattice; odd generated cells are reported, not raised).
      element_a, element_b: the system's metals, e.g. "Pd", "Ni".
      d1, d2: allowed range (Angstrom) of a constrained atom's nearest same-class distance.
      cutoff: neighbour-table radius (Angstrom); an atom with no same-class atom within it
        fails good (paper) whatever d2 is.
      classes: constrained classes as element symbols; default :func:`default_classes`.
      symprec: SpacegroupAnalyzer tolerance (Angstrom); None leaves the space group out
        (None, None), for structures whose distances are all a caller needs.
      covalent_factor: strict: pairs closer than this x sum of covalent radii fail.
      volume_per_atom_range: strict: allowed volume per atom (Angstrom^3).
      max_neighbours: entries per atom kept in the neighbour table (nearest first);
        ``None`` keeps every neighbour within the cutoff. Verdicts do not depend on it.
    """
    classes = default_classes(element_a, element_b) if classes is None else classes
    symbols = [site.specie.symbol for site in structure]
    n_atoms = len(symbols)
    formula = structure.composition.formula if n_atoms else ""
    volume = abs(float(structure.lattice.volume))
    volume_per_atom = volume / n_atoms if n_atoms else math.nan

    wanted = {element_a, element_b, HYDROGEN}
    present = set(symbols)
    missing, extra = sorted(wanted - present), sorted(present - wanted)
    ternary = not missing and not extra
    ternary_reason = join_failures(([f"no {', '.join(missing)}"] if missing else [])
                           + ([f"holds {', '.join(extra)}"] if extra else []))

    if n_atoms == 0:
        return _failed(symbols, formula, volume_per_atom, (None, None), "no atoms", ternary,
                       ternary_reason)
    if volume < MIN_CELL_VOLUME or not np.all(np.isfinite(structure.lattice.matrix)):
        return _failed(symbols, formula, volume_per_atom, (None, None),
                       f"degenerate cell (volume {volume:.3g} A^3)", ternary, ternary_reason)
    symmetry = (None, None) if symprec is None else spacegroup(structure, symprec)
    d = periodic_distances(structure, cutoff)
    if d is None:
        return _failed(symbols, formula, volume_per_atom, symmetry,
                       "cell too thin to evaluate (too many periodic images)",
                       ternary, ternary_reason)
    nearest_species = _site_nearest(d, symbols)

    min_distances: dict[str, float] = {}
    for symbol, row in zip(symbols, nearest_species):
        for other, dist in row.items():
            key = pair_key(symbol, other)
            min_distances[key] = min(min_distances.get(key, math.inf), dist)
    min_distances = dict(sorted(min_distances.items()))

    nearest, paper_failures = [], []
    for i, (symbol, row) in enumerate(zip(symbols, nearest_species)):
        for members in classes:
            if symbol not in members:
                continue
            name = class_name(members)
            dist = min((row[m] for m in members if m in row), default=math.inf)
            label = f"{symbol}{i + 1}"
            nearest.append(AtomNearest(label, name, dist))
            failure = class_failure(label, name, dist, d1, d2, cutoff)
            if failure:
                paper_failures.append(failure)
    good_paper = ternary and not paper_failures
    good_paper_reason = paper_reason(ternary, ternary_reason, paper_failures)
    strict = strict_failures(min_distances, good_paper, covalent_factor, volume_per_atom,
                             volume_per_atom_range)
    good_strict = not strict

    table = tuple(map(tuple, cells.table_from_distances(d, symbols, cutoff,
                                                           max_neighbours=max_neighbours)))
    return StructureEvaluation(
        formula=formula, n_atoms=n_atoms, volume_per_atom=volume_per_atom,
        spacegroup_symbol=symmetry[0], spacegroup_number=symmetry[1],
        min_distances=min_distances, symbols=tuple(symbols),
        site_nearest=tuple(nearest_species), nearest=tuple(nearest), neighbours=table,
        ternary=ternary, good_paper=good_paper, good_strict=good_strict,
        ternary_reason=ternary_reason, good_paper_reason=good_paper_reason,
        good_strict_reason=join_failures(strict))


def evaluate_structures(structures: Sequence[Structure], element_a: str, element_b: str,
                        workers: int | None = None, **options: Any) -> list[StructureEvaluation]:
    """:func:`evaluate_structure` on each structure (same keyword options), in order.

    ``workers`` threads share the list (default: one per CPU core). Most of the time goes
    to the few nearly degenerate generated cells whose cutoff sphere holds 10^4-10^6
    images, and their NumPy distance arithmetic runs without the GIL.
    """
    workers = min(len(structures), workers or os.cpu_count() or 1)
    one = functools.partial(evaluate_structure, element_a=element_a, element_b=element_b,
                            **options)
    if workers <= 1:
        return [one(s) for s in structures]
    with concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="evaluate") as pool:
        return list(pool.map(one, structures))


def unique_groups(structures: Sequence[Structure], matcher=None) -> list[int]:
    """Group label per structure: structures that StructureMatcher matches share one.

    The groups are ``StructureMatcher.group_structures``'s (each structure joins the
    first group, per reduced formula, whose first member matches it); labels number the
    groups in the order of their first member in ``structures``. Default tolerances
    unless ``matcher`` is given.
    """
    if matcher is None:
        from pymatgen.analysis.structure_matcher import StructureMatcher  # heavy: load late

        matcher = StructureMatcher()
    if not structures:
        return []
    copies = [s.copy() for s in structures]  # distinct objects, even for repeated inputs
    index = {id(s): i for i, s in enumerate(copies)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        groups = matcher.group_structures(copies)
    groups = sorted(([index[id(s)] for s in group] for group in groups), key=min)
    labels = [0] * len(structures)
    for label, members in enumerate(groups):
        for i in members:
            labels[i] = label
    return labels


def count_verdicts(structures: Sequence[Structure], evaluations: Sequence[StructureEvaluation],
                   matcher=None) -> dict[str, int]:
    """The spec's counts over one set of final structures.

    Returns:
      ``{"generated", "ternary", "good_paper", "good_strict", "unique"}``; unique counts
      the StructureMatcher groups among the good (strict) structures.
    """
    if len(structures) != len(evaluations):
        raise ValueError(f"{len(structures)} structures but {len(evaluations)} evaluations")
    strict = [s for s, e in zip(structures, evaluations) if e.good_strict]
    return {
        "generated": len(evaluations),
        "ternary": sum(e.ternary for e in evaluations),
        "good_paper": sum(e.good_paper for e in evaluations),
        "good_strict": len(strict),
        "unique": len(set(unique_groups(strict, matcher))),
    }
