"""Starting data sets of binary M-H crystal structures, built from hydride prototypes.

For a metal M the builder makes two families of structures:

* the classic stoichiometric hydride types (rock-salt MH, zinc-blende MH, wurtzite MH,
  NiAs-type MH, CsCl-type MH, fluorite MH2, rutile MH2, BiF3-type MH3, ReO3-type MH3,
  Fe4N-type M4H), whatever the host lattice of M;
* interstitial hydrides of M's own host lattice (fcc, hcp or bcc): H in octahedral (O)
  and tetrahedral (T) sites of the host and of supercells of it, at fillings of 1/4,
  1/2, 3/4 and all of a site class, in every symmetry-distinct ordering (classes of up
  to 8 sites) or in the most symmetric orderings (classes of 9 to 16 sites).

Host lattice. pymatgen ships no elemental crystal structures, so the symmetry and lattice
constants come from ``ase.data.reference_states`` (ASE's table of the elements' standard
states). Elements whose standard state is not fcc, hcp or bcc (Mn, Ga, In, Sn, Sm, Hg,
Bi, Pa, U, Np, Pu), or that ASE has none for (Pm, Ra, Am ... Es), get an fcc host, the
metal sublattice of the fluorite dihydrides that lanthanides and actinides form, with
the atomic volume from pymatgen's ``Element.molar_volume``. For the fcc/hcp/bcc metals the
atomic volume is that of ASE's reference lattice rather than pymatgen's molar volume,
because the latter is off for some of them (Pd: 8.56 cm^3/mol in pymatgen against the
8.85 cm^3/mol of a = 3.89 A and of pymatgen's own density, -3.4 %; Tm: +5 %).

Volume rule. A structure with n_M metal atoms and n_H hydrogen atoms gets the cell volume
``n_M * v_M + n_H * 2.9 A^3`` (isotropic scaling of the prototype), v_M the metal's atomic
volume: 2.9 A^3 is the mean volume expansion per interstitial H atom measured across
metals, Delta v / Omega ~ 0.19 (H. Peisl, "Lattice strains due to hydrogen in metals", in
Hydrogen in Metals I, eds. G. Alefeld and J. Voelkl, Topics in Applied Physics 28,
Springer 1978; Y. Fukai, The Metal-Hydrogen System, 2nd ed., Springer 2005).

The structures are prototypes with that volume, NOT relaxed ones (no DFT). Every one
holds at least one H and one metal atom, has no two atoms closer than 0.75 x the sum of
their covalent radii (``ase.data.covalent_radii``) and no two H atoms closer than
``min_hh`` (1.5 A by default: Switendick's empirical bound for stable hydrides is 2.1 A,
and the shortest H-H separations reported in metal hydrides, in RNiIn deuterides, are
about 1.6 A; pairs closer than 1.5 A, such as face-sharing tetrahedra in hcp or O-T
neighbours in bcc, are unphysical). pymatgen's StructureMatcher (default tolerances)
keeps one structure per match. The build is deterministic: no randomness, fixed order.

Command line::

    python -m crystalgan_jax.materials.datasets --metal Pd --out data/PdH
"""

from __future__ import annotations

import argparse
import functools
import itertools
import math
import sys
import warnings
from pathlib import Path
from typing import Iterator, NamedTuple, Sequence

import numpy as np
from ase.data import covalent_radii, reference_states
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Element, Lattice, Structure
from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

from crystalgan_jax.core import cells
from crystalgan_jax.materials import io

HYDROGEN = "H"
H_VOLUME = 2.9  # A^3 added to the cell per H atom (Peisl 1978; Fukai 2005)
MIN_HH_DISTANCE = 1.5  # A
SANITY_FACTOR = 0.75  # of the sum of covalent radii
DEFAULT_MAX_H = 18
DEFAULT_MAX_METAL = 8
ALL_ORDERINGS_MAX_SITES = 8  # site classes up to this size: every distinct ordering
ORDERINGS_MAX_SITES = 16  # larger classes: the most symmetric orderings; beyond: none
FILLINGS = (0.25, 0.5, 0.75, 1.0)  # fractions of a site class that H occupies
AVOGADRO = 6.02214076e23  # 1/mol
CM3_TO_A3 = 1e24
IDEAL_C_OVER_A = math.sqrt(8.0 / 3.0)
RUTILE_C_OVER_A = 0.669  # alpha-MgH2 (Bortz et al. 1999)
RUTILE_X = 0.304

# Conventional cells in fractional coordinates: metal sites, octahedral, tetrahedral.
_FCC_M = ((0, 0, 0), (0, 0.5, 0.5), (0.5, 0, 0.5), (0.5, 0.5, 0))
_FCC_O = ((0.5, 0.5, 0.5), (0.5, 0, 0), (0, 0.5, 0), (0, 0, 0.5))
_FCC_T = tuple(itertools.product((0.25, 0.75), repeat=3))
_BCC_M = ((0, 0, 0), (0.5, 0.5, 0.5))
_BCC_O = ((0.5, 0.5, 0), (0.5, 0, 0.5), (0, 0.5, 0.5), (0.5, 0, 0), (0, 0.5, 0), (0, 0, 0.5))
_BCC_T = tuple(  # four per cube face: (1/2, 1/4, 0) and its images
    tuple(np.roll((u, v, 0.0), axis))
    for axis in range(3) for u, v in ((0.5, 0.25), (0.5, 0.75), (0.25, 0.5), (0.75, 0.5)))
_HCP_M = ((1 / 3, 2 / 3, 0.25), (2 / 3, 1 / 3, 0.75))
_HCP_O = ((0, 0, 0), (0, 0, 0.5))
_HCP_T = ((1 / 3, 2 / 3, 0.625), (1 / 3, 2 / 3, 0.875), (2 / 3, 1 / 3, 0.125), (2 / 3, 1 / 3, 0.375))
_HOST_SITES = {"fcc": (_FCC_M, _FCC_O, _FCC_T), "bcc": (_BCC_M, _BCC_O, _BCC_T),
               "hcp": (_HCP_M, _HCP_O, _HCP_T)}

# Supercells of each conventional cell (rows: new vectors in the conventional basis),
# smallest first, so that StructureMatcher keeps the smallest cell of a structure.
_CELLS: dict[str, tuple[tuple[str, tuple], ...]] = {
    "fcc": (("p", ((0, .5, .5), (.5, 0, .5), (.5, .5, 0))),
            ("t", ((.5, -.5, 0), (.5, .5, 0), (0, 0, 1))),
            ("c", ((1, 0, 0), (0, 1, 0), (0, 0, 1))),
            ("c211", ((2, 0, 0), (0, 1, 0), (0, 0, 1))),
            ("p222", ((0, 1, 1), (1, 0, 1), (1, 1, 0)))),
    "bcc": (("p", ((-.5, .5, .5), (.5, -.5, .5), (.5, .5, -.5))),
            ("p211", ((-1, 1, 1), (.5, -.5, .5), (.5, .5, -.5))),
            ("c", ((1, 0, 0), (0, 1, 0), (0, 0, 1))),
            ("c211", ((2, 0, 0), (0, 1, 0), (0, 0, 1))),
            ("r2", ((1, 1, 0), (-1, 1, 0), (0, 0, 1)))),
    "hcp": (("p", ((1, 0, 0), (0, 1, 0), (0, 0, 1))),
            ("112", ((1, 0, 0), (0, 1, 0), (0, 0, 2))),
            ("211", ((2, 0, 0), (0, 1, 0), (0, 0, 1))),
            ("o", ((1, 0, 0), (1, 2, 0), (0, 0, 1))),
            ("r3", ((2, 1, 0), (-1, 1, 0), (0, 0, 1))),
            ("221", ((2, 0, 0), (0, 2, 0), (0, 0, 1))),
            ("114", ((1, 0, 0), (0, 1, 0), (0, 0, 4)))),
}


class UnsupportedMetalError(ValueError):
    """The symbol is not a metal the builder can make a data set for."""

    def __init__(self, symbol: str):
        super().__init__(
            f"cannot build an M-H data set for {symbol!r}: it is not a metal with a known "
            f"atomic volume. Accepted symbols: {', '.join(supported_metals())}")


class Host(NamedTuple):
    """A metal's host lattice: 'fcc', 'hcp' or 'bcc', its volume per atom (A^3), c/a."""

    symmetry: str
    atomic_volume: float
    c_over_a: float


class Prototype(NamedTuple):
    """One built structure and its short label (used in file names)."""

    label: str
    structure: Structure


@functools.cache
def supported_metals() -> tuple[str, ...]:
    """Symbols of the metals the builder accepts (pymatgen metals with a molar volume)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pymatgen warns for each element without data
        return tuple(e.symbol for e in Element if e.is_metal and e.molar_volume is not None)


def check_metal(symbol: str) -> str:
    """Returns ``symbol`` if the builder accepts it; raises UnsupportedMetalError if not."""
    if symbol not in supported_metals():
        raise UnsupportedMetalError(symbol)
    return symbol


def host_of(metal: str) -> Host:
    """The host lattice of ``metal`` and its atomic volume in A^3 (see the module doc)."""
    check_metal(metal)
    state = reference_states[Element(metal).Z] or {}
    symmetry = state.get("symmetry")
    a = state.get("a", 0.0)
    if symmetry == "fcc":
        return Host("fcc", a ** 3 / 4, 1.0)
    if symmetry == "bcc":
        return Host("bcc", a ** 3 / 2, 1.0)
    if symmetry == "hcp":
        c_over_a = state["c/a"]
        return Host("hcp", math.sqrt(3) / 4 * a ** 3 * c_over_a, c_over_a)
    molar_volume = float(Element(metal).molar_volume)  # cm^3/mol
    return Host("fcc", molar_volume * CM3_TO_A3 / AVOGADRO, 1.0)


def rule_volume(metal: str, n_metal: int, n_h: int) -> float:
    """Cell volume in A^3 the builder gives n_metal atoms of ``metal`` and n_h H atoms."""
    return n_metal * host_of(metal).atomic_volume + n_h * H_VOLUME


def _conventional_lattice(symmetry: str, c_over_a: float) -> np.ndarray:
    """Conventional cell of edge a = 1 (arbitrary unit; the volume rule rescales)."""
    if symmetry == "hcp":
        return Lattice.hexagonal(1.0, c_over_a).matrix
    return np.eye(3)


def _sites_in_supercell(frac: Sequence[Sequence[float]], cell: np.ndarray) -> np.ndarray:
    """All images of conventional-cell sites inside a supercell, fractional in it, sorted.

    ``cell`` rows are the supercell vectors in the conventional basis (may be rational,
    e.g. a primitive cell); every site must be a lattice translate of a given one.
    """
    frac = np.asarray(frac, float)
    inverse = np.linalg.inv(cell)
    reach = int(np.ceil(np.abs(cell).sum(axis=0).max())) + 1
    shifts = np.array(list(itertools.product(range(-reach, reach + 1), repeat=3)), float)
    images = (frac[:, None, :] + shifts[None, :, :]).reshape(-1, 3) @ inverse
    images -= np.floor(images + 1e-9)  # into [0, 1), with 0.9999999999 taken as 0
    images[np.abs(images) < 1e-9] = 0.0
    # Rounded keys only find the duplicates; the exact coordinates are kept.
    _, first = np.unique(np.round(images, 6), axis=0, return_index=True)
    return images[first]


def _site_permutations(lattice: np.ndarray, metal_frac: np.ndarray,
                       site_frac: np.ndarray) -> np.ndarray:
    """The host's symmetry operations as permutations of the given interstitial sites.

    Returns an int array [n_ops, n_sites]: operation g moves site i to site P[g, i].
    """
    host = Structure(lattice, ["Cu"] * len(metal_frac), metal_frac)  # any one element
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # spglib's, about its own API
        ops = SpacegroupAnalyzer(host, symprec=1e-3).get_symmetry_operations()
    permutations = []
    for op in ops:
        moved = op.operate_multi(site_frac)
        delta = moved[:, None, :] - site_frac[None, :, :]
        same = np.all(np.abs(delta - np.round(delta)) < 1e-4, axis=2)
        if np.all(same.sum(axis=1) == 1):
            permutations.append(same.argmax(axis=1))
    return np.unique(np.array(permutations), axis=0)


def min_image_distances(frac: np.ndarray, lattice: np.ndarray) -> np.ndarray:
    """Pairwise shortest distances (Angstrom) between sites over periodic images.

    Exact for any cell: :func:`cells.pair_distances` (float64, on the host) over
    every lattice image within the longest minimum-image pair distance
    (:func:`cells.image_range`); a fixed +-1 shell is not enough for thin cells.

    Args:
      frac: ``[N, 3]`` fractional coordinates.
      lattice: ``[3, 3]`` rows a, b, c (Angstrom).
    Returns:
      ``[N, N]``; the diagonal (a site and its own images) is ``inf``.
    """
    lattice = np.asarray(lattice, np.float64)
    cart = np.asarray(frac, np.float64) @ lattice
    wrapped = cells.pair_distances(lattice, cart, cart, np.zeros((1, 3)))
    # the minimum image of each pair is at most its wrapped distance away
    shifts = cells.lattice_shifts(cells.image_range(lattice, float(wrapped.max())))
    best = cells.pair_distances(lattice, cart, cart, shifts).min(axis=2)
    np.fill_diagonal(best, np.inf)
    return best


def _orderings(permutations: np.ndarray, k: int, too_close: np.ndarray,
               all_orderings: bool) -> list[tuple[int, ...]]:
    """Symmetry-distinct ways to put k H atoms on the sites, none of them too close.

    Each is the lexicographically first member of its orbit under ``permutations``.
    With ``all_orderings`` False only those of the largest stabiliser (the most
    symmetric orderings) are kept, so that big site classes do not flood the set.
    """
    n = permutations.shape[1]
    weights = np.left_shift(1, permutations.astype(np.int64))  # bit of site P[g, i]
    seen: set[int] = set()
    found: list[tuple[int, tuple[int, ...]]] = []
    for combo in itertools.combinations(range(n), k):
        mask = sum(1 << i for i in combo)
        if mask in seen:
            continue
        images = weights[:, list(combo)].sum(axis=1)
        seen.update(images.tolist())
        if too_close[np.ix_(combo, combo)].any():
            continue
        found.append((int(np.count_nonzero(images == mask)), combo))
    if not all_orderings and found:
        most = max(stabiliser for stabiliser, _ in found)
        found = [f for f in found if f[0] == most]
    return [combo for _, combo in found]


def _fillings(n_sites: int, max_h: int) -> list[int]:
    """H counts for the FILLINGS fractions of n_sites sites (half rounds up), <= max_h."""
    counts = {max(1, math.floor(n_sites * f + 0.5)) for f in FILLINGS}
    return sorted(k for k in counts if k <= max_h)


def _scaled(metal: str, lattice: np.ndarray, metal_frac: np.ndarray,
            h_frac: np.ndarray) -> Structure:
    """The structure with H listed first, scaled to the rule volume."""
    species = [HYDROGEN] * len(h_frac) + [metal] * len(metal_frac)
    coords = np.concatenate([np.reshape(h_frac, (-1, 3)), metal_frac])
    structure = Structure(Lattice(lattice), species, coords)
    structure.scale_lattice(rule_volume(metal, len(metal_frac), len(h_frac)))
    return structure


def interstitial_prototypes(metal: str, max_h: int = DEFAULT_MAX_H,
                            max_metal: int = DEFAULT_MAX_METAL,
                            min_hh: float = MIN_HH_DISTANCE) -> Iterator[Prototype]:
    """H orderings on the O, T and O+T sites of the metal's host and its supercells.

    Labels read ``<host>-<cell>-<class><n_H>``, e.g. ``fcc-c-T4``: 4 H on tetrahedral
    sites of the conventional fcc cell.
    """
    host = host_of(metal)
    conventional = _conventional_lattice(host.symmetry, host.c_over_a)
    metal_sites, octahedral, tetrahedral = _HOST_SITES[host.symmetry]
    for cell_name, rows in _CELLS[host.symmetry]:
        cell = np.array(rows, float)
        metal_frac = _sites_in_supercell(metal_sites, cell)
        if len(metal_frac) > max_metal:
            continue
        lattice = cell @ conventional
        o_frac = _sites_in_supercell(octahedral, cell)
        t_frac = _sites_in_supercell(tetrahedral, cell)
        for class_name, sites in (("O", o_frac), ("T", t_frac), ("OT", np.vstack([o_frac, t_frac]))):
            if len(sites) > ORDERINGS_MAX_SITES:
                continue
            permutations = _site_permutations(lattice, metal_frac, sites)
            distances = min_image_distances(sites, lattice)
            for k in _fillings(len(sites), max_h):
                # Distances grow with the cell, whose volume depends on k.
                scale = (rule_volume(metal, len(metal_frac), k)
                         / abs(np.linalg.det(lattice))) ** (1 / 3)
                too_close = distances * scale < min_hh
                for combo in _orderings(permutations, k, too_close,
                                        len(sites) <= ALL_ORDERINGS_MAX_SITES):
                    yield Prototype(f"{host.symmetry}-{cell_name}-{class_name}{k}",
                                    _scaled(metal, lattice, metal_frac, sites[list(combo)]))


def classic_prototypes(metal: str) -> Iterator[Prototype]:
    """The classic stoichiometric hydride types, in conventional cells."""
    cubic = np.eye(3)
    hexagonal = Lattice.hexagonal(1.0, IDEAL_C_OVER_A).matrix
    fcc_m, fcc_o, fcc_t = (np.array(s, float) for s in (_FCC_M, _FCC_O, _FCC_T))
    hcp_m, hcp_o, hcp_t = (np.array(s, float) for s in (_HCP_M, _HCP_O, _HCP_T))
    x = RUTILE_X
    types = (
        ("rocksalt", cubic, fcc_m, fcc_o),  # PdH, NiH
        ("zincblende", cubic, fcc_m, fcc_t[[0, 3, 5, 6]]),  # one T-site sublattice
        ("fluorite", cubic, fcc_m, fcc_t),  # TiH2, ZrH2, lanthanide dihydrides
        ("BiF3", cubic, fcc_m, np.vstack([fcc_o, fcc_t])),  # cubic LaH3, CeH3
        ("Fe4N", cubic, fcc_m, fcc_o[:1]),  # H at the cube centre only
        ("CsCl", cubic, np.zeros((1, 3)), np.full((1, 3), 0.5)),
        ("ReO3", cubic, np.zeros((1, 3)), np.eye(3) / 2),  # H on the cube edges
        ("NiAs", hexagonal, hcp_m, hcp_o),  # CrH
        ("wurtzite", hexagonal, hcp_m, hcp_t[[0, 2]]),  # CuH
        ("rutile", Lattice.tetragonal(1.0, RUTILE_C_OVER_A).matrix,  # alpha-MgH2
         np.array([[0, 0, 0], [0.5, 0.5, 0.5]]),
         np.array([[x, x, 0], [1 - x, 1 - x, 0], [0.5 + x, 0.5 - x, 0.5], [0.5 - x, 0.5 + x, 0.5]])),
    )
    for label, lattice, metal_frac, h_frac in types:
        yield Prototype(label, _scaled(metal, lattice, metal_frac, h_frac))


def is_sane(structure: Structure, min_hh: float = MIN_HH_DISTANCE) -> bool:
    """No two atoms (periodic images included) closer than SANITY_FACTOR x the sum of
    their covalent radii, and no two H atoms closer than ``min_hh`` (A)."""
    radii = np.array([covalent_radii[site.specie.Z] for site in structure])
    cutoff = max(SANITY_FACTOR * 2 * radii.max(), min_hh)
    centres, neighbours, _, distances = structure.get_neighbor_list(cutoff)
    limit = SANITY_FACTOR * (radii[centres] + radii[neighbours])
    is_h = np.array([site.specie.symbol == HYDROGEN for site in structure])
    limit = np.where(is_h[centres] & is_h[neighbours], np.maximum(limit, min_hh), limit)
    return not np.any(distances < limit)


def build_dataset(metal: str, max_h: int = DEFAULT_MAX_H, max_metal: int = DEFAULT_MAX_METAL,
                  min_hh: float = MIN_HH_DISTANCE) -> list[Prototype]:
    """The symmetry-distinct M-H prototypes of ``metal``, classic types first.

    Args:
      metal: element symbol, one of supported_metals().
      max_h: most H atoms per structure.
      max_metal: most metal atoms per structure.
      min_hh: shortest H-H distance allowed, A.

    Raises:
      UnsupportedMetalError: ``metal`` is not a metal the builder accepts.
    """
    check_metal(metal)
    candidates = [
        prototype for prototype in itertools.chain(
            classic_prototypes(metal), interstitial_prototypes(metal, max_h, max_metal, min_hh))
        if 0 < prototype.structure.composition[HYDROGEN] <= max_h
        and 0 < prototype.structure.composition[metal] <= max_metal
        and is_sane(prototype.structure, min_hh)]
    # group_structures reduces each structure once and keeps a group's members in input
    # order, so the first member of each group is the one kept: classic types and small
    # cells win over their duplicates.
    groups = StructureMatcher().group_structures([p.structure for p in candidates])
    index = {id(p.structure): i for i, p in enumerate(candidates)}
    firsts = sorted(min(index[id(s)] for s in group) for group in groups)
    return [candidates[i] for i in firsts]


def write_dataset(metal: str, out: str | Path, max_h: int = DEFAULT_MAX_H,
                  max_metal: int = DEFAULT_MAX_METAL) -> list[Path]:
    """Builds the data set of ``metal`` and writes ``out/NNN_<label>.vasp`` POSCAR files.

    H sites come first, then the metal. Returns the written paths, in index order.
    """
    prototypes = build_dataset(metal, max_h, max_metal)
    out = Path(out)
    paths = []
    for index, (label, structure) in enumerate(prototypes):
        path = out / f"{index:03d}_{label}.vasp"
        formula = structure.composition.formula.replace(" ", "")
        io.write_poscar(io.sorted_by_species(structure, [HYDROGEN, metal]), path,
                        comment=f"{formula} {label} prototype, volume rule (not relaxed)")
        paths.append(path)
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m crystalgan_jax.materials.datasets --metal Pd --out data/PdH``."""
    parser = argparse.ArgumentParser(
        prog="python -m crystalgan_jax.materials.datasets",
        description="Write a binary M-H data set of hydride prototypes as POSCAR files.")
    parser.add_argument("--metal", required=True, help="element symbol of the metal, e.g. Pd")
    parser.add_argument("--out", required=True, help="output folder (created if absent)")
    parser.add_argument("--max-h", type=int, default=DEFAULT_MAX_H,
                        help=f"most H atoms per structure (default {DEFAULT_MAX_H})")
    parser.add_argument("--max-metal", type=int, default=DEFAULT_MAX_METAL,
                        help=f"most metal atoms per structure (default {DEFAULT_MAX_METAL})")
    parser.add_argument("--force", action="store_true",
                        help="first delete the NNN_*.vasp files already in --out")
    args = parser.parse_args(argv)
    if args.max_h < 1 or args.max_metal < 1:
        parser.error("--max-h and --max-metal must be at least 1")
    try:
        check_metal(args.metal)
    except UnsupportedMetalError as err:
        parser.error(str(err))
    out = Path(args.out)
    stale = sorted(out.glob("[0-9][0-9][0-9]_*.vasp")) if out.is_dir() else []
    if stale and not args.force:
        # Left in place, old files beyond the new count would join the data set.
        parser.error(f"{out} already holds data set files ({stale[0].name}, ...); "
                     "pass --force to replace them, or choose another folder")
    for path in stale:
        path.unlink()
    paths = write_dataset(args.metal, out, args.max_h, args.max_metal)
    print(f"wrote {len(paths)} {args.metal}-H structures to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
