"""The verdicts of many generated samples at once, from their padded arrays (NumPy float64).

:func:`evaluate_batch` gives, for a batch of samples of one layout, the same verdicts,
minimum distances, volumes and formulas as
:func:`crystalgan_jax.materials.evaluation.evaluate_structure` gives one decoded structure,
without building a pymatgen Structure per sample: every row of a block holds the same
element, so the nearest atom of each species and the minimum distance of each pair type
are reductions over fixed row ranges of one ``[C, R, R, S]`` distance array per chunk of
``C`` samples. What the evaluation tables hold beyond the verdicts (the neighbour table,
the nearest atom of its class per atom) and the space group are left empty; the caller adds
the space group where it needs it (the strictly good ones). A sample whose cell needs more
lattice images than :data:`MAX_SHIFTS_PER_AXIS` allows, or whose numbers are not finite, is
evaluated by :func:`~crystalgan_jax.materials.evaluation.evaluate_structure` instead.

Lengths are Angstrom, volumes Angstrom^3; positions are Cartesian (fractional ones are
converted first).
"""

from __future__ import annotations

import functools
import math
from typing import Any, Sequence

import numpy as np

from crystalgan_jax.core import cells, encoding
from crystalgan_jax.materials import evaluation
from crystalgan_jax.materials.evaluation import StructureEvaluation

# Lattice images per axis (k in [-n, n]) a batched sample may need; more (a thin or
# skewed cell) and it is evaluated alone, as evaluate_structure does it.
MAX_SHIFTS_PER_AXIS = 2
# Samples per chunk: the [C, R, R, S] float64 array of 28 rows and 125 shifts is ~6 MB
# per sample, so a chunk stays near 100 MB.
CHUNK = 16


@functools.lru_cache(maxsize=None)
def _formula(counts: tuple[tuple[str, int], ...]) -> str:
    """pymatgen's formula string (e.g. ``"Ni2 H2 Pd2"``) of element counts."""
    from pymatgen.core import Composition

    return Composition(dict(counts)).formula


@functools.lru_cache(maxsize=None)
def _reduced(counts: tuple[tuple[str, int], ...]) -> str:
    from pymatgen.core import Composition

    return Composition(dict(counts)).reduced_formula


def reduced_formula(symbols: Sequence[str]) -> str:
    """pymatgen's reduced formula (e.g. ``"NiHPd"``) of a structure's site symbols,
    computed once per composition."""
    counts: dict[str, int] = {}
    for s in symbols:
        counts[s] = counts.get(s, 0) + 1
    return _reduced(tuple(sorted(counts.items())))


def _needed_images(lattice: np.ndarray, cart: np.ndarray, atoms: np.ndarray) -> np.ndarray:
    """``[C, 3]`` images per axis that make every nearest-neighbour distance exact.

    As :func:`crystalgan_jax.materials.evaluation.periodic_distances`: the wrapped
    (zero-shift) distance bounds the nearest image of another atom, the shortest lattice
    vector the nearest own image.
    """
    inv = np.linalg.inv(lattice)
    frac = (cart[:, None, :, :] - cart[:, :, None, :]) @ inv[:, None]
    v = (frac - np.round(frac)) @ lattice[:, None]
    zero = np.linalg.norm(v, axis=-1)
    pair = atoms[:, :, None] & atoms[:, None, :]
    radius = np.maximum(np.where(pair, zero, 0.0).max(axis=(1, 2)),
                        np.linalg.norm(lattice, axis=-1).min(axis=-1))
    return np.floor(radius[:, None] / cells.plane_spacings(lattice) + 0.5 + 1e-9)


def _chunk_minima(lattice: np.ndarray, cart: np.ndarray, atoms: np.ndarray,
                  shifts: np.ndarray) -> np.ndarray:
    """``[C, R, R]`` minimum distance over the images from row i to row j (inf where
    either row is padding; own zero shift excluded, own other images included)."""
    inv = np.linalg.inv(lattice)
    frac = (cart[:, None, :, :] - cart[:, :, None, :]) @ inv[:, None]  # [C, R, R, 3]
    v = (frac - np.round(frac)) @ lattice[:, None]
    t = np.einsum("sk,ckl->csl", shifts, lattice)  # [C, S, 3]
    # |v + t|^2 = |v|^2 + 2 v.t + |t|^2, as cells.pair_distances
    sq = (np.einsum("cijk,cijk->cij", v, v)[..., None]
          + 2.0 * np.einsum("cijk,csk->cijs", v, t)
          + np.einsum("csk,csk->cs", t, t)[:, None, None, :])
    rows = np.arange(cart.shape[1])
    sq[:, rows, rows, 0] = np.inf  # the atom itself (the zero shift is first)
    d = np.sqrt(np.maximum(sq.min(axis=-1), 0.0))
    pair = atoms[:, :, None] & atoms[:, None, :]
    return np.where(pair, d, np.inf)


def evaluate_batch(crystals: encoding.Crystal, layout: encoding.Layout, element_a: str,
                   element_b: str, *, d1: float, d2: float,
                   cutoff: float = evaluation.CUTOFF,
                   classes: evaluation.Classes | None = None,
                   covalent_factor: float = evaluation.COVALENT_FACTOR,
                   volume_per_atom_range: tuple[float, float] = evaluation.VOLUME_PER_ATOM_RANGE,
                   threshold: float = 0.5, **unused: Any) -> list[StructureEvaluation]:
    """The evaluation of each sample of ``crystals`` (leading axis ``[K]``), in order.

    Rows with mask > ``threshold`` are atoms, as :func:`encoding.decode` reads them. The
    verdicts, reasons, formula, volume per atom and minimum distances per pair type equal
    those of :func:`evaluation.evaluate_structure` on the decoded structure;
    ``site_nearest`` too (what the distance histograms read); ``spacegroup_*`` is None and
    the tables ``nearest`` and ``neighbours`` are empty. ``unused`` takes the options that only the per-structure
    evaluation has (``symprec``), so that one set of criteria serves both.
    """
    classes = evaluation.default_classes(element_a, element_b) if classes is None else classes
    lattice = np.asarray(crystals.lattice, np.float64)
    positions = [np.asarray(p, np.float64) for p in crystals.positions]
    if crystals.fractional:
        positions = [p @ lattice for p in positions]
    cart = np.concatenate(positions, axis=1)  # [K, R, 3], blocks H, A, B
    atoms = np.concatenate([np.asarray(m) > threshold for m in crystals.masks], axis=1)
    row_symbols = np.concatenate([[s] * n for s, n in zip(layout.symbols, layout.rows)])
    species = list(layout.symbols)
    in_species = {s: row_symbols == s for s in species}
    count = lattice.shape[0]
    finite = (np.isfinite(lattice).all(axis=(1, 2)) & np.isfinite(cart).all(axis=(1, 2))
              & (np.abs(np.linalg.det(lattice)) >= evaluation.MIN_CELL_VOLUME)
              & atoms.any(axis=1))
    batched = np.zeros(count, bool)
    needed = np.full((count, 3), np.inf)
    if finite.any():
        needed[finite] = _needed_images(lattice[finite], cart[finite], atoms[finite])
        batched = finite & (needed <= MAX_SHIFTS_PER_AXIS).all(axis=1)
    out: list[StructureEvaluation | None] = [None] * count
    index = np.nonzero(batched)[0]
    for start in range(0, len(index), CHUNK):
        chunk = index[start:start + CHUNK]
        n = tuple(int(v) for v in needed[chunk].max(axis=0))
        d = _chunk_minima(lattice[chunk], cart[chunk], atoms[chunk], cells.lattice_shifts(n))
        for k, c in enumerate(chunk):
            out[c] = _verdicts(d[k], atoms[c], row_symbols, in_species, lattice[c],
                               element_a, element_b, d1=d1, d2=d2, cutoff=cutoff,
                               classes=classes, covalent_factor=covalent_factor,
                               volume_per_atom_range=volume_per_atom_range)
    options = dict(d1=d1, d2=d2, cutoff=cutoff, classes=classes, symprec=None,
                   covalent_factor=covalent_factor, volume_per_atom_range=volume_per_atom_range,
                   max_neighbours=0)
    for c in np.nonzero(~batched)[0]:  # thin, skewed or broken cells: one by one
        structure = encoding.decode(encoding.index(crystals, int(c)), layout, threshold)
        out[c] = evaluation.evaluate_structure(structure, element_a, element_b, **options)
    return out


def _verdicts(d: np.ndarray, atoms: np.ndarray, row_symbols: np.ndarray,
              in_species: dict[str, np.ndarray], lattice: np.ndarray, element_a: str, element_b: str, *, d1: float, d2: float,
              cutoff: float, classes: evaluation.Classes, covalent_factor: float,
              volume_per_atom_range: tuple[float, float]) -> StructureEvaluation:
    """One sample's evaluation from its ``[R, R]`` row-to-row minima (the rules and
    messages of :func:`evaluation.evaluate_structure`)."""
    symbols = [str(s) for s in row_symbols[atoms]]
    n_atoms = len(symbols)
    present = [s for s in in_species if (in_species[s] & atoms).any()]
    formula = _formula(tuple((s, int((in_species[s] & atoms).sum())) for s in present))
    volume_per_atom = abs(float(np.linalg.det(lattice))) / n_atoms

    wanted = {element_a, element_b, evaluation.HYDROGEN}
    missing, extra = sorted(wanted - set(present)), sorted(set(present) - wanted)
    ternary = not missing and not extra
    ternary_reason = evaluation.join_failures(
        ([f"no {', '.join(missing)}"] if missing else [])
        + ([f"holds {', '.join(extra)}"] if extra else []))

    min_distances = {}
    for x in present:
        for y in present:
            key = evaluation.pair_key(x, y)
            if key not in min_distances:
                block = d[np.ix_(in_species[x], in_species[y])]
                min_distances[key] = float(block.min())
    min_distances = dict(sorted(min_distances.items()))

    rows = np.nonzero(atoms)[0]
    nearest_of = {s: d[np.ix_(rows, in_species[s])].min(axis=1) for s in present}
    site_nearest = tuple({s: float(nearest_of[s][k]) for s in present}
                         for k in range(len(rows)))
    site = np.cumsum(atoms)  # 1-based site number of each atom row, as decode orders them
    paper_failures = []
    for r in np.nonzero(atoms)[0]:
        symbol = str(row_symbols[r])
        for members in classes:
            if symbol not in members:
                continue
            name = evaluation.class_name(members)
            mask = np.isin(row_symbols, list(members))
            dist = float(d[r, mask].min()) if mask.any() else math.inf
            failure = evaluation.class_failure(f"{symbol}{site[r]}", name, dist, d1, d2,
                                               cutoff)
            if failure:
                paper_failures.append(failure)
    good_paper = ternary and not paper_failures
    good_paper_reason = evaluation.paper_reason(ternary, ternary_reason, paper_failures)
    strict_failures = evaluation.strict_failures(min_distances, good_paper, covalent_factor,
                                                 volume_per_atom, volume_per_atom_range)
    return StructureEvaluation(
        formula=formula, n_atoms=n_atoms, volume_per_atom=volume_per_atom,
        spacegroup_symbol=None, spacegroup_number=None, min_distances=min_distances,
        symbols=tuple(symbols), site_nearest=site_nearest, nearest=(), neighbours=(),
        ternary=ternary, good_paper=good_paper, good_strict=not strict_failures,
        ternary_reason=ternary_reason, good_paper_reason=good_paper_reason,
        good_strict_reason=evaluation.join_failures(strict_failures))


def with_spacegroup(ev: StructureEvaluation, structure, symprec: float) -> StructureEvaluation:
    """``ev`` with the space group of ``structure`` at ``symprec`` (Angstrom) filled in."""
    import dataclasses

    symbol, number = evaluation.spacegroup(structure, symprec)
    return dataclasses.replace(ev, spacegroup_symbol=symbol, spacegroup_number=number)

