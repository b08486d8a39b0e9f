"""Candidates worth a DFT calculation: learned distance windows, symmetry snapping, novelty.

Host-side helpers of the ``crystalgan_plus`` method (issue 13), all on pymatgen
structures:

* :func:`learn_windows`: per-class nearest-neighbour windows (Angstrom) from the training
  binaries, for the differentiable window term of training
  (:func:`crystalgan_jax.core.geometry.window_penalty`), and :func:`learn_distance_quantiles`,
  the same distances' distributions for the distance-matching term
  (:func:`crystalgan_jax.core.losses.distance_matching`);
* :func:`snap_to_symmetry`: a near-symmetric generated structure -> its idealised
  primitive standard cell (spglib through pymatgen), which the criteria then re-check;
* :func:`novel_flags` / :func:`count_novel`: whether a candidate matches (pymatgen
  StructureMatcher, default tolerances) any reference structure, i.e. the substitution
  baseline's structures and the training structures (:func:`reference_structures`).
"""

from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Structure

from crystalgan_jax.materials import evaluation, substitution
from crystalgan_jax.core.encoding import A_BLOCK, B_BLOCK, H_BLOCK
from crystalgan_jax.materials.io import HYDROGEN

Window = tuple[tuple[int, ...], tuple[int, ...], float, float]
Profile = tuple[tuple[int, ...], tuple[int, ...], tuple[float, ...]]


def nearest_to(evaluations: Sequence[evaluation.StructureEvaluation], source: set[str],
               target: set[str]) -> np.ndarray:
    """Every ``source`` atom's distance (Angstrom) to its nearest ``target`` atom, pooled.

    Reads :attr:`StructureEvaluation.site_nearest` (periodic, own images included); an
    atom whose structure holds no target atom gives no entry.
    """
    out = []
    for ev in evaluations:
        for symbol, row in zip(ev.symbols, ev.site_nearest):
            if symbol in source:
                d = min((v for s, v in row.items() if s in target), default=np.inf)
                if np.isfinite(d):
                    out.append(d)
    return np.asarray(out, np.float64)


def _pair_distances(ah: Sequence[Structure], bh: Sequence[Structure], element_a: str,
                    element_b: str, d1: float, d2: float
                    ) -> list[tuple[tuple[int, ...], tuple[int, ...], np.ndarray, bool]]:
    """The training binaries' nearest distances per pair type the generated cells are held to.

    ``(source blocks, target blocks, distances in Angstrom, paper class)``, in this order:
    A -> nearest H (from the A-H data), B -> nearest H (from the B-H data), H -> nearest
    metal (both domains pooled), metal -> nearest metal and H -> nearest H (pooled; the
    paper's constrained classes).
    """
    ev_ah = evaluation.evaluate_structures(ah, element_a, element_b, d1=d1, d2=d2)
    ev_bh = evaluation.evaluate_structures(bh, element_a, element_b, d1=d1, d2=d2)
    both = ev_ah + ev_bh
    metals = {element_a, element_b}
    spec = [((A_BLOCK,), (H_BLOCK,), ev_ah, {element_a}, {HYDROGEN}, False),
            ((B_BLOCK,), (H_BLOCK,), ev_bh, {element_b}, {HYDROGEN}, False),
            ((H_BLOCK,), (A_BLOCK, B_BLOCK), both, {HYDROGEN}, metals, False),
            ((A_BLOCK, B_BLOCK), (A_BLOCK, B_BLOCK), both, metals, metals, True),
            ((H_BLOCK,), (H_BLOCK,), both, {HYDROGEN}, {HYDROGEN}, True)]
    return [(source, target, nearest_to(evs, src, tgt), paper_class)
            for source, target, evs, src, tgt, paper_class in spec]


def learn_windows(ah: Sequence[Structure], bh: Sequence[Structure], element_a: str,
                  element_b: str, percentiles: tuple[float, float], d1: float, d2: float
                  ) -> tuple[Window, ...]:
    """Nearest-neighbour windows learned from the binary training structures.

    Windows, as ``(source blocks, target blocks, lo, hi)`` with lo..hi the given
    percentiles of the training distances of each pair type (:func:`_pair_distances`:
    metal -> H per metal, H -> metal, metal -> metal, H -> H); the metal-H pairs are the
    ones the paper leaves free, and the metal-metal and H-H windows are intersected with
    the paper's [d1, d2] so that they never contradict the paper's criterion.

    A window whose data are empty, or whose intersection with [d1, d2] is empty, is left
    out.
    """
    windows = []
    for source, target, d, paper_class in _pair_distances(ah, bh, element_a, element_b, d1, d2):
        if d.size == 0:
            continue
        lo, hi = (float(v) for v in np.percentile(d, percentiles))
        if paper_class:
            lo, hi = max(lo, d1), min(hi, d2)
        if lo < hi:
            windows.append((source, target, round(lo, 4), round(hi, 4)))
    return tuple(windows)


def hydrogen_fraction(structure: Structure) -> float:
    """n_H / n_atoms of one structure."""
    return structure.composition[HYDROGEN] / structure.composition.num_atoms


def hydrogen_per_metal(structure: Structure) -> float | None:
    """n_H / n_metal (H/M) of one structure; None where it holds no metal atom."""
    c = structure.composition
    metal = c.num_atoms - c[HYDROGEN]
    return c[HYDROGEN] / metal if metal else None


def quantiles(values: Sequence[float], levels: int) -> tuple[float, ...]:
    """``levels`` quantiles of ``values`` at the levels ``(k + 1/2) / levels``, rounded to 1e-4."""
    grid = (np.arange(levels) + 0.5) / levels * 100.0
    return tuple(round(float(q), 4) for q in np.percentile(values, grid))


def learn_distance_quantiles(ah: Sequence[Structure], bh: Sequence[Structure],
                             element_a: str, element_b: str, levels: int, d1: float,
                             d2: float) -> tuple[Profile, ...]:
    """The training binaries' nearest-distance distributions, as quantiles per pair type.

    One ``(source blocks, target blocks, quantiles)`` per pair type of
    :func:`_pair_distances` that has data, with ``levels`` quantiles (Angstrom, rounded to
    1e-4) at the levels ``(k + 1/2) / levels``: what
    :func:`crystalgan_jax.core.losses.distance_matching` pulls the generated distances to.
    """
    return tuple((source, target, quantiles(d, levels))
                 for source, target, d, _ in _pair_distances(ah, bh, element_a, element_b,
                                                             d1, d2) if d.size)


def learn_h_fraction_quantiles(ah: Sequence[Structure], bh: Sequence[Structure], levels: int
                               ) -> tuple[float, ...]:
    """The training structures' hydrogen fractions (:func:`hydrogen_fraction`) as
    :func:`quantiles`: what :func:`crystalgan_jax.core.losses.composition_matching` pulls
    the generated ones to."""
    return quantiles([hydrogen_fraction(s) for s in list(ah) + list(bh)], levels)


def learn_compositions(ah: Sequence[Structure], bh: Sequence[Structure], element_a: str,
                       element_b: str) -> tuple[tuple[int, int, int], ...]:
    """The ternary compositions the training binaries suggest, as ``(n_H, n_A, n_B)``.

    Each training cell's hydrogen count with its metal sites split between A and B in
    every way that keeps both (n_A = 1 .. n_M - 1): a PdH cell of 4 Pd and 2 H gives
    (2, 1, 3), (2, 2, 2) and (2, 3, 1). Hydrogen per metal stays the training cells', and
    every composition fits the layout the same cells set. Sorted, without repeats.
    """
    out = set()
    for s, metal in [(s, element_a) for s in ah] + [(s, element_b) for s in bh]:
        c = s.composition
        n_h, n_m = int(round(c[HYDROGEN])), int(round(c[metal]))
        out.update((n_h, k, n_m - k) for k in range(1, n_m))
    return tuple(sorted(out))


def learn_block_volumes(ah: Sequence[Structure], bh: Sequence[Structure], element_a: str,
                        element_b: str) -> tuple[float, float, float]:
    """Volume per atom of H, A and B (Angstrom^3) that best explains the training cells.

    Least squares over both domains' cells of ``V = n_H v_H + n_A v_A + n_B v_B`` (H's
    volume is shared by the two binaries, which is what ties them together), clipped at 0
    and rounded to 1e-4: what :func:`crystalgan_jax.core.geometry.scale_to_volume` scales
    a generated ternary to.
    """
    rows, volumes = [], []
    for s in list(ah) + list(bh):
        c = s.composition
        rows.append([c[HYDROGEN], c[element_a], c[element_b]])
        volumes.append(s.volume)
    fitted, *_ = np.linalg.lstsq(np.asarray(rows, float), np.asarray(volumes, float), rcond=None)
    return tuple(round(float(max(v, 0.0)), 4) for v in fitted)


def snap_to_symmetry(structure: Structure, symprec: float) -> tuple[Structure, int]:
    """The idealised primitive standard cell where spglib finds more than P1 at ``symprec``.

    Returns:
      (structure, space-group number): the snapped structure, or the input unchanged with
      number 1 where it is P1 at this tolerance or spglib fails on the cell.
    """
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            analyzer = SpacegroupAnalyzer(structure, symprec=symprec)
            number = int(analyzer.get_space_group_number())
            if number <= 1:
                return structure, 1
            snapped = analyzer.get_primitive_standard_structure()
    except Exception:  # spglib refuses some generated cells (overlapping atoms, ...)
        return structure, 1
    if len(snapped) == 0 or snapped.composition.reduced_formula != \
            structure.composition.reduced_formula:
        return structure, 1
    return snapped, number


def reference_structures(ah: Sequence[Structure], bh: Sequence[Structure], element_a: str,
                         element_b: str) -> list[Structure]:
    """What a candidate must not match to count as new: substitution baseline + training."""
    return (substitution.substitution(ah, bh, element_a, element_b) + list(ah) + list(bh))


def novel_flags(candidates: Sequence[Structure], references: Sequence[Structure],
                matcher: StructureMatcher | None = None) -> list[bool]:
    """Per candidate, True where StructureMatcher matches no reference structure.

    References are bucketed by reduced formula first: with the default (species)
    comparator StructureMatcher never matches different reduced compositions, so only
    the candidate's own bucket needs fitting.
    """
    matcher = matcher or StructureMatcher()
    buckets: dict[str, list[Structure]] = {}
    for ref in references:
        buckets.setdefault(ref.composition.reduced_formula, []).append(ref)
    flags = []
    for candidate in candidates:
        same = buckets.get(candidate.composition.reduced_formula, [])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            flags.append(not any(matcher.fit(ref, candidate) for ref in same))
    return flags


def count_novel(structures: Sequence[Structure],
                evaluations: Sequence[evaluation.StructureEvaluation],
                references: Sequence[Structure],
                matcher: StructureMatcher | None = None,
                labels: Sequence[int] | None = None) -> int:
    """Unique strictly good structures (StructureMatcher groups) that match no reference.

    One representative per group (its first member) is compared, as
    :func:`crystalgan_jax.materials.evaluation.unique_groups` groups them; ``labels``:
    those groups of the strictly good structures, in order, where computed already.
    """
    strict = [s for s, e in zip(structures, evaluations) if e.good_strict]
    labels = list(evaluation.unique_groups(strict, matcher) if labels is None else labels)
    representatives = [strict[labels.index(g)] for g in sorted(set(labels))]
    return sum(novel_flags(representatives, references, matcher))
