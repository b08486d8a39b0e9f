"""Periodic-cell tools on the host, in NumPy float64: image ranges, shifts, distances, tables.

The host twins of :mod:`crystalgan_jax.core.geometry` (which is JAX and traceable) carry
the same names: :func:`plane_spacings` and :func:`pair_distances` here take NumPy arrays
and need no compilation, for evaluation, reports and the shift sets the JAX functions
are compiled with. Why :func:`image_range` suffices for any cell is in the docstring of
:mod:`crystalgan_jax.core.geometry`. Lengths are Angstrom; positions are Cartesian.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def plane_spacings(lattice: np.ndarray) -> np.ndarray:
    """Spacing h_m (Angstrom) of the lattice planes normal to each reciprocal axis.

    Args:
      lattice: ``[..., 3, 3]`` rows a, b, c in Angstrom.
    Returns:
      ``[..., 3]``: ``V / |b x c|``, ``V / |c x a|``, ``V / |a x b|``.
    """
    lattice = np.asarray(lattice, np.float64)
    a, b, c = lattice[..., 0, :], lattice[..., 1, :], lattice[..., 2, :]
    volume = np.abs(np.einsum("...i,...i", a, np.cross(b, c)))
    areas = np.stack([np.linalg.norm(np.cross(b, c), axis=-1),
                      np.linalg.norm(np.cross(c, a), axis=-1),
                      np.linalg.norm(np.cross(a, b), axis=-1)], axis=-1)
    return volume[..., None] / areas


def image_range(lattice: np.ndarray, cutoff: float | None = None) -> tuple[int, int, int]:
    """Images per axis needed to see every neighbour within ``cutoff`` (host side).

    Args:
      lattice: ``[..., 3, 3]`` one lattice or a batch (the maximum over it is returned).
      cutoff: Angstrom; ``None`` means the shortest lattice vector of each cell, which
        suffices for nearest-neighbour distances.
    Returns:
      ``(n_a, n_b, n_c)``: shifts k_m in ``[-n_m, n_m]`` are needed.
    """
    lattice = np.asarray(lattice, np.float64).reshape(-1, 3, 3)
    if cutoff is None:
        r = np.linalg.norm(lattice, axis=-1).min(axis=-1, keepdims=True)
    else:
        r = np.full((len(lattice), 1), float(cutoff))
    # 1e-9 keeps an image lying exactly at the cutoff (e.g. a cubic cell's own image).
    n = np.floor(r / plane_spacings(lattice) + 0.5 + 1e-9).astype(int)
    return tuple(int(v) for v in n.max(axis=0))


def lattice_shifts(n: Sequence[int]) -> np.ndarray:
    """All integer triples k with ``|k_m| <= n_m``, the zero shift first; ``[S, 3]`` float32.

    Ordered by ``sum |k_m|``, then lexicographically (NumPy sort: a degenerate cell can
    need tens of thousands of shifts).
    """
    axes = [np.arange(-int(m), int(m) + 1) for m in n]
    k = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    order = np.lexsort((k[:, 2], k[:, 1], k[:, 0], np.abs(k).sum(axis=1)))
    return k[order].astype(np.float32)


def pair_distances(lattice: np.ndarray, pos_i: np.ndarray, pos_j: np.ndarray,
                   shifts: np.ndarray) -> np.ndarray:
    """:func:`crystalgan_jax.core.geometry.pair_distances` in NumPy float64 on the host.

    For evaluation and tables: the same image set and wrap as the penalty; no
    compilation, so a report of many differently shaped generated cells costs only the
    arithmetic.

    Args:
      lattice: ``[3, 3]``; pos_i ``[Ni, 3]``; pos_j ``[Nj, 3]`` (Cartesian Angstrom).
      shifts: ``[S, 3]`` integer lattice translations.
    Returns:
      ``[Ni, Nj, S]`` distances (Angstrom).
    """
    lattice = np.asarray(lattice, np.float64)
    frac = (np.asarray(pos_j, np.float64)[None, :, :]
            - np.asarray(pos_i, np.float64)[:, None, :]) @ np.linalg.inv(lattice)
    v = (frac - np.round(frac)) @ lattice
    t = np.asarray(shifts, np.float64) @ lattice
    # |v + t|^2 = |v|^2 + 2 v.t + |t|^2: one matmul; float64 keeps the cancellation
    # ~1e-12 A for cells of tens of Angstrom
    sq = (np.einsum("ijk,ijk->ij", v, v)[:, :, None] + 2.0 * (v @ t.T)
          + np.einsum("sk,sk->s", t, t)[None, None, :])
    return np.sqrt(np.maximum(sq, 0.0))


def neighbour_table(lattice: np.ndarray, positions: np.ndarray, symbols: Sequence[str],
                    cutoff: float = 3.0, decimals: int = 4, max_neighbours: int | None = None
                    ) -> list[list[tuple[str, float]]]:
    """Every atom's neighbours within ``cutoff`` (the layout of the paper's Figure 5).

    Uses :func:`pair_distances` (the penalty's image set and wrap, float64).

    Args:
      lattice: ``[3, 3]`` Angstrom.
      positions: ``[N, 3]`` Cartesian Angstrom, all rows atoms.
      symbols: ``N`` element symbols.
      cutoff: Angstrom.
      decimals, max_neighbours: see :func:`table_from_distances` (default: all).
    Returns:
      per atom, ``(symbol, distance)`` sorted by distance.
    """
    lattice = np.asarray(lattice, np.float64)
    shifts = lattice_shifts(image_range(lattice, cutoff))
    d = pair_distances(lattice, positions, positions, shifts)
    n = len(positions)
    d[np.arange(n), np.arange(n), 0] = np.inf  # the atom itself; its other images count
    return table_from_distances(d, symbols, cutoff, decimals, max_neighbours)


def table_from_distances(d: np.ndarray, symbols: Sequence[str], cutoff: float = 3.0,
                         decimals: int = 4, max_neighbours: int | None = None
                         ) -> list[list[tuple[str, float]]]:
    """The Figure-5 table from precomputed ``[N, N, S]`` distances (self pair set to inf).

    Equal (species, distance) pairs from several images, after rounding to ``decimals``
    (as ``np.round``), are listed once, as in the paper; each row is sorted by distance,
    then symbol. ``max_neighbours`` keeps only the first entries of each row (the nearest
    shells), which bounds the table of a degenerate cell whose cutoff sphere holds
    thousands of images; ``None`` keeps all.

    Each (distance, species) pair is one integer key, so a row is deduplicated by a 1-D
    integer sort; with ``max_neighbours`` only the smallest keys are sorted (found by
    ``np.partition``, linear time), which keeps a cell with millions of images within
    the cutoff cheap.
    """
    names, species = np.unique(np.asarray(symbols), return_inverse=True)  # sorted names
    n_species, scale = len(names), 10.0 ** decimals
    table = []
    for i in range(len(symbols)):
        within = d[i] <= cutoff  # [N, S]
        j = np.nonzero(within)[0]
        keys = np.rint(d[i][within] * scale).astype(np.int64) * n_species + species[j]
        table.append([(str(names[k % n_species]), float((k // n_species) / scale))
                      for k in _smallest_unique(keys, max_neighbours)])
    return table


def _smallest_unique(keys: np.ndarray, count: int | None) -> np.ndarray:
    """The ``count`` smallest distinct values of ``keys`` (all if None), ascending."""
    if count is None:
        return np.unique(keys)
    take = 8 * count
    while take < len(keys):
        # the `take` smallest keys hold every key below their largest, so once they hold
        # `count` distinct values those are the smallest distinct values of all keys
        head = np.unique(np.partition(keys, take)[:take])
        if len(head) >= count:
            return head[:count]
        take *= 4
    return np.unique(keys)[:count]
