"""Structures <-> fixed-shape arrays, with one padded block and occupancy mask per species.

A structure of the A-B-H system is held as a :class:`Crystal`: the lattice (rows a, b, c,
Angstrom) and three position blocks in the order H, A, B. Each block is padded to its own
row count (``Layout.n_h``, ``n_a``, ``n_b``) and carries an occupancy mask (1 for an atom,
0 for padding), so that an atom at the origin is never mistaken for padding and the
geometric penalty only visits the rows it needs (the metal blocks are much shorter than
the H block in the reference data). In domain AH the B block is empty (mask all zero), in
domain BH the A block is.

Coordinates are Cartesian Angstrom by default; ``fractional=True`` stores fractional
coordinates instead. The paper's single-N view, a ``[4, N, 3]`` tensor of [lattice, H, A,
B] with zero padding, is available through :func:`to_paper_view` / :func:`from_paper_view`.

Host-side functions here work on NumPy arrays (float64 by default so that a round trip is
exact); the array functions also accept JAX arrays.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Sequence

import jax
import numpy as np

if TYPE_CHECKING:  # pymatgen is needed only to encode and decode, and imported there
    from pymatgen.core import Structure

BLOCKS = ("H", "A", "B")  # block order, as in the paper's tensor after the lattice
H_BLOCK, A_BLOCK, B_BLOCK = 0, 1, 2


@dataclasses.dataclass(frozen=True)
class Layout:
    """Static shape information: element symbols and per-species padding.

    Attributes:
      element_a: symbol of metal A (e.g. "Pd").
      element_b: symbol of metal B (e.g. "Ni").
      n_h, n_a, n_b: rows of the H, A and B blocks.
    """

    element_a: str
    element_b: str
    n_h: int
    n_a: int
    n_b: int

    @property
    def symbols(self) -> tuple[str, str, str]:
        """Element symbol of each block, in block order H, A, B."""
        return ("H", self.element_a, self.element_b)

    @property
    def rows(self) -> tuple[int, int, int]:
        """Row count of each block, in block order H, A, B."""
        return (self.n_h, self.n_a, self.n_b)

    @classmethod
    def fit(cls, element_a: str, element_b: str, structures: Sequence[Structure],
            n_h: int | None = None, n_a: int | None = None, n_b: int | None = None) -> "Layout":
        """A layout whose unset row counts are the largest counts in ``structures``.

        Both metal blocks get the larger of the two metal maxima, so that a generated
        structure can hold as many B atoms as the AH data hold A atoms and vice versa.
        """
        def most(symbol: str) -> int:
            return max((int(s.composition[symbol]) for s in structures), default=0)

        metal = max(most(element_a), most(element_b), 1)
        return cls(element_a, element_b,
                   n_h if n_h is not None else max(most("H"), 1),
                   n_a if n_a is not None else metal,
                   n_b if n_b is not None else metal)


def class_symbols(classes, element_a: str, element_b: str) -> tuple[tuple[str, ...], ...]:
    """Constrained classes as block indices, e.g. ((1, 2), (0,)) -> (("Pd", "Ni"), ("H",))."""
    symbols = ("H", element_a, element_b)
    return tuple(tuple(symbols[b] for b in blocks) for blocks in classes)


@dataclasses.dataclass(frozen=True)
class Crystal:
    """One structure, or a batch of them with leading axes ``[...]``.

    Attributes:
      lattice: ``[..., 3, 3]``, rows are the lattice vectors a, b, c in Angstrom.
      positions: blocks H, A, B of shape ``[..., N_s, 3]``; Cartesian Angstrom, or
        fractional when ``fractional`` is set.
      masks: blocks H, A, B of shape ``[..., N_s]``; 1 where a row is an atom, 0 for
        padding (generators produce occupancy probabilities in between).
      fractional: whether ``positions`` are fractional coordinates (static).

    A JAX pytree (registered below; ``fractional`` is static metadata) defined without
    Flax or pymatgen, so that :mod:`crystalgan_jax.core.geometry` and
    :mod:`crystalgan_jax.core.losses` import neither.
    """

    lattice: np.ndarray
    positions: tuple
    masks: tuple
    fractional: bool = False

    def replace(self, **changes) -> "Crystal":
        """A copy with ``changes`` applied (like ``flax.struct`` dataclasses)."""
        return dataclasses.replace(self, **changes)


jax.tree_util.register_dataclass(Crystal, data_fields=["lattice", "positions", "masks"],
                                 meta_fields=["fractional"])


def _block_positions(structure: Structure, symbol: str, fractional: bool) -> np.ndarray:
    rows = [i for i, site in enumerate(structure) if site.specie.symbol == symbol]
    coords = structure.frac_coords if fractional else structure.cart_coords
    return np.asarray(coords[rows], np.float64).reshape(-1, 3)


def encode(structure: Structure, layout: Layout, *, fractional: bool = False,
           source: str | None = None, dtype=np.float64) -> Crystal:
    """One structure -> padded arrays.

    Raises:
      StructureFileError: an element outside the layout, or more atoms of a species
        than its block has rows (naming ``source``).
    """
    from crystalgan_jax.materials.io import StructureFileError
    source = source or structure.composition.formula
    allowed = set(layout.symbols)
    others = sorted({site.specie.symbol for site in structure} - allowed)
    if others:
        raise StructureFileError(
            source, f"holds {', '.join(others)}; the layout takes only {sorted(allowed)}")
    positions, masks = [], []
    for symbol, rows, block in zip(layout.symbols, layout.rows, BLOCKS):
        coords = _block_positions(structure, symbol, fractional)
        if len(coords) > rows:
            raise StructureFileError(
                source, f"{len(coords)} {symbol} atoms but the {block} block is padded to "
                f"{rows} rows; raise the padding (n_{block.lower()})")
        padded = np.zeros((rows, 3), dtype)
        padded[: len(coords)] = coords
        mask = np.zeros((rows,), dtype)
        mask[: len(coords)] = 1
        positions.append(padded)
        masks.append(mask)
    return Crystal(np.asarray(structure.lattice.matrix, dtype), tuple(positions), tuple(masks),
                   fractional)


def stack(crystals: Sequence[Crystal]) -> Crystal:
    """Stacks crystals of one layout along a new leading batch axis."""
    if not crystals:
        raise ValueError("nothing to stack")
    return jax.tree_util.tree_map(lambda *xs: np.stack(xs), *crystals)


def encode_batch(structures: Sequence[Structure], layout: Layout, *, fractional: bool = False,
                 sources: Sequence[str] | None = None, dtype=np.float64) -> Crystal:
    """Structures -> one padded batch ``Crystal`` with leading axis ``[len(structures)]``."""
    sources = sources or [None] * len(structures)
    return stack([encode(s, layout, fractional=fractional, source=src, dtype=dtype)
                  for s, src in zip(structures, sources)])


def index(crystal: Crystal, i) -> Crystal:
    """Element (or slice) ``i`` of a batched crystal."""
    return jax.tree_util.tree_map(lambda x: x[i], crystal)


def decode(crystal: Crystal, layout: Layout, threshold: float = 0.5) -> Structure:
    """One crystal -> pymatgen Structure; rows with mask > ``threshold`` are atoms.

    Sites come out grouped H, A, B in block order.
    """
    from pymatgen.core import Lattice, Structure
    species, coords = [], []
    for symbol, pos, mask in zip(layout.symbols, crystal.positions, crystal.masks):
        keep = np.asarray(mask) > threshold
        species += [symbol] * int(keep.sum())
        coords.append(np.asarray(pos, np.float64)[keep])
    return Structure(Lattice(np.asarray(crystal.lattice, np.float64)), species,
                     np.concatenate(coords), coords_are_cartesian=not crystal.fractional)


def decode_batch(crystal: Crystal, layout: Layout, threshold: float = 0.5) -> list[Structure]:
    """A batched crystal (one leading axis) -> list of Structures."""
    return [decode(index(crystal, i), layout, threshold) for i in range(crystal.lattice.shape[0])]


def to_fractional(crystal: Crystal) -> Crystal:
    """Cartesian -> fractional coordinates (r = f @ L, so f = r @ L^-1)."""
    if crystal.fractional:
        return crystal
    xp = _namespace(crystal.lattice)
    inv = xp.linalg.inv(crystal.lattice)
    positions = tuple(p @ inv for p in crystal.positions)
    return crystal.replace(positions=positions, fractional=True)


def to_cartesian(crystal: Crystal) -> Crystal:
    """Fractional -> Cartesian Angstrom coordinates (r = f @ L)."""
    if not crystal.fractional:
        return crystal
    positions = tuple(p @ crystal.lattice for p in crystal.positions)
    return crystal.replace(positions=positions, fractional=False)


def _namespace(x):
    if isinstance(x, np.ndarray):
        return np
    import jax.numpy as jnp

    return jnp


def to_paper_view(crystal: Crystal, n: int | None = None):
    """The paper's single-N view: ``[..., 4, N, 3]`` [lattice, H, A, B] and masks ``[..., 3, N]``.

    The lattice fills the first three rows of block 0; every block is zero-padded to N
    rows (default: the largest block). Masks keep the occupancy that zero rows lose.
    """
    xp = _namespace(crystal.lattice)
    n = n or max(3, *(p.shape[-2] for p in crystal.positions))

    def pad(x, rows):
        if x.shape[-2] > rows:
            raise ValueError(f"block of {x.shape[-2]} rows does not fit N={rows}")
        widths = [(0, 0)] * (x.ndim - 2) + [(0, rows - x.shape[-2]), (0, 0)]
        return xp.pad(x, widths)

    tensor = xp.stack([pad(crystal.lattice, n)] + [pad(p, n) for p in crystal.positions], axis=-3)
    masks = xp.stack([pad(m[..., None], n)[..., 0] for m in crystal.masks], axis=-2)
    return tensor, masks


def from_paper_view(tensor, masks, layout: Layout, fractional: bool = False) -> Crystal:
    """Inverse of :func:`to_paper_view` for ``layout``'s row counts."""
    return Crystal(tensor[..., 0, :3, :],
                   tuple(tensor[..., 1 + k, :rows, :] for k, rows in enumerate(layout.rows)),
                   tuple(masks[..., k, :rows] for k, rows in enumerate(layout.rows)),
                   fractional)


def empty_block(crystal: Crystal, block: int) -> Crystal:
    """``crystal`` with block ``block`` made the domain placeholder (no atoms)."""
    xp = _namespace(crystal.lattice)
    positions = list(crystal.positions)
    masks = list(crystal.masks)
    positions[block] = xp.zeros_like(positions[block])
    masks[block] = xp.zeros_like(masks[block])
    return crystal.replace(positions=tuple(positions), masks=tuple(masks))


def replace_block(crystal: Crystal, block: int, donor: Crystal) -> Crystal:
    """``crystal`` with block ``block`` (positions and mask) taken from ``donor``.

    This is the feature transfer of CrystalGAN's step 2.
    """
    positions = list(crystal.positions)
    masks = list(crystal.masks)
    positions[block] = donor.positions[block]
    masks[block] = donor.masks[block]
    return crystal.replace(positions=tuple(positions), masks=tuple(masks))


def metal_view(crystal: Crystal, block: int) -> Crystal:
    """The two-block view (H, metal) of a binary crystal whose metal sits in ``block``.

    Stage 1 of CrystalGAN maps A-H structures to B-H-like ones and back; on this view
    both domains have the same shape, so a generator's output can be fed to the other.
    """
    return crystal.replace(positions=(crystal.positions[H_BLOCK], crystal.positions[block]),
                           masks=(crystal.masks[H_BLOCK], crystal.masks[block]))


def from_metal_view(view: Crystal, block: int) -> Crystal:
    """Inverse of :func:`metal_view`: the metal goes to ``block``, the other metal is empty."""
    xp = _namespace(view.lattice)
    h, metal = view.positions
    mh, mm = view.masks
    empty, empty_mask = xp.zeros_like(metal), xp.zeros_like(mm)
    if block == A_BLOCK:
        return view.replace(positions=(h, metal, empty), masks=(mh, mm, empty_mask))
    if block == B_BLOCK:
        return view.replace(positions=(h, empty, metal), masks=(mh, empty_mask, mm))
    raise ValueError(f"block must be A_BLOCK ({A_BLOCK}) or B_BLOCK ({B_BLOCK}), got {block}")
