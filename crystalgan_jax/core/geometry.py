"""Periodic nearest-neighbour geometry and CrystalGAN's geometric penalty, in JAX.

Every function here is written for ONE structure and is jit-, vmap- and grad-friendly;
lift it over a batch with ``jax.vmap``. :func:`array_penalty`, :func:`class_nearest` and
:func:`clash_energy` take plain arrays (lattice, positions, mask, class ids or radii,
shifts), so any JAX model can use them; :func:`geometric_penalty`, :func:`clash_penalty`
and :func:`window_penalty` take a ``Crystal`` and wrap them for CrystalGAN's H/A/B
blocks. The host tools (image ranges, lattice shifts, NumPy distances, neighbour tables)
are in :mod:`crystalgan_jax.core.cells`; a twin there has the same name as here
(:func:`pair_distances`, :func:`plane_spacings`, :func:`image_range`). Lengths are
Angstrom; positions are Cartesian unless a docstring says otherwise.

Periodic images. The distance from atom i to atom j is taken over the images
``r_j - r_i + k @ L`` for integer triples k in a fixed set of *shifts*. The fractional
difference ``f_j - f_i`` is first wrapped into [-0.5, 0.5), so an image within ``r_c`` of
atom i has ``|f_j - f_i + k|_m * h_m <= r_c`` along each axis m, where ``h_m = V / |a_p x a_q|``
is the spacing of the lattice planes spanned by the other two vectors. Hence
``|k_m| <= r_c / h_m + 1/2``, and :func:`image_range` here and in
:mod:`~crystalgan_jax.core.cells` take ``n_m = floor(r_c / h_m + 1/2)``. This is exact
for any cell, however skewed or thin (a fixed +-1 shell is not: a thin cell has small
``h_m`` and needs many images). For a *nearest*-neighbour distance no cutoff is needed:
an atom's own image at the shortest lattice vector bounds it, so ``r_c`` defaults to the
shortest lattice vector. Under ``jit`` the shift set must have a static size: it is
computed on the host from concrete lattices (the training data, with a margin) and passed
in. For a lattice outside that range the distance returned is still a real image
distance, only possibly not the shortest one, i.e. an upper bound.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from crystalgan_jax.core.encoding import A_BLOCK, B_BLOCK, H_BLOCK, Crystal

# Metal-metal (A-A', B-B', A-B counted together) and H-H': the spec's default classes.
DEFAULT_CLASSES: tuple[tuple[int, ...], ...] = ((A_BLOCK, B_BLOCK), (H_BLOCK,))
_TINY = 1e-12  # squared Angstrom; keeps sqrt differentiable for coincident atoms


def pair_distances(lattice: jax.Array, pos_i: jax.Array, pos_j: jax.Array,
                   shifts: jax.Array) -> jax.Array:
    """``[Ni, Nj, S]`` distances (Angstrom) from atom i to each image of atom j.

    The pair vector ``v`` is wrapped to the minimum image in fractional coordinates,
    then each shift ``t = k @ L`` is added. ``|v + t|^2`` is summed per Cartesian
    component, so XLA fuses it into one loop without a ``[Ni, Nj, S, 3]`` temporary.

    Args:
      lattice: ``[3, 3]`` rows a, b, c (Angstrom).
      pos_i: ``[Ni, 3]`` Cartesian Angstrom.
      pos_j: ``[Nj, 3]`` Cartesian Angstrom.
      shifts: ``[S, 3]`` integer lattice translations (as floats); shift 0 is the
        minimum-image pair.
    """
    return jnp.sqrt(jnp.maximum(_image_sq(lattice, pos_i, pos_j, shifts), _TINY))


def _image_sq(lattice: jax.Array, pos_i: jax.Array, pos_j: jax.Array,
              shifts: jax.Array) -> jax.Array:
    """``[Ni, Nj, S]`` squared distances (A^2) of :func:`pair_distances`."""
    v = wrap(lattice, pos_j[None, :, :] - pos_i[:, None, :])  # [Ni, Nj, 3]
    return _shifted_sq(v, times3(shifts, lattice))


def _shifted_sq(v: jax.Array, t: jax.Array) -> jax.Array:
    """``[Ni, Nj, S]`` = ``|v_ij + t_k|^2`` for ``v [Ni, Nj, 3]``, ``t [S, 3]`` (Angstrom)."""
    # per component, so that XLA emits one fused loop (no [Ni, Nj, S, 3] temporary)
    return sum(jnp.square(v[:, :, None, m] + t[None, None, :, m]) for m in range(3))


def wrap(lattice: jax.Array, delta: jax.Array) -> jax.Array:
    """Cartesian pair vectors ``delta [..., 3]`` moved to their minimum image (Angstrom).

    ``delta - round(delta @ L^-1) @ L``: the fractional difference wrapped into
    [-0.5, 0.5], which makes the image range needed independent of where atoms sit
    (generated atoms can lie outside the cell). round() has zero gradient, as it should,
    so the gradient is the identity in ``delta`` and ``-round(.)`` in the lattice. Written
    this way, not as ``(frac - round(frac)) @ L``, the backward pass never goes through
    the inverse: the same value, and a much cheaper gradient.
    """
    n = jax.lax.stop_gradient(jnp.round(times3(delta, inverse3(lattice))))
    return delta - times3(n, lattice)


def times3(x: jax.Array, matrix: jax.Array) -> jax.Array:
    """``x @ matrix`` for ``x [..., 3]`` and ``matrix [3, 3]``, as broadcast products.

    The same numbers as the matmul, written so that XLA fuses them with what surrounds
    them: vmapped over a batch, ``@`` becomes a batched dot of 3 x 3 matrices, which
    XLA's CPU backend runs as one small library call per structure, which is slower.
    """
    return x[..., 0:1] * matrix[0] + x[..., 1:2] * matrix[1] + x[..., 2:3] * matrix[2]


def self_pairs(n: int, n_shifts: int) -> jax.Array:
    """``[n, n, S]``: True where an atom meets itself at zero shift (shift 0 first).

    The only pair excluded from neighbour searches: an atom's other images count.
    """
    return jnp.eye(n, dtype=bool)[:, :, None] & (jnp.arange(n_shifts) == 0)[None, None, :]


def inverse3(lattice: jax.Array) -> jax.Array:
    """Inverse of ``[..., 3, 3]`` matrices by the adjugate (rows a, b, c -> columns
    b x c, c x a, a x b over the determinant).

    Elementwise, so XLA fuses it; a batched LAPACK inverse of many 3 x 3 matrices costs
    far more on CPU than the arithmetic.
    """
    a, b, c = lattice[..., 0, :], lattice[..., 1, :], lattice[..., 2, :]
    bc, ca, ab = jnp.cross(b, c), jnp.cross(c, a), jnp.cross(a, b)
    det = jnp.sum(a * bc, axis=-1)
    return jnp.stack([bc, ca, ab], axis=-1) / det[..., None, None]


def _nearest_image(lattice: jax.Array, pos_i: jax.Array, pos_j: jax.Array,
                   excluded: jax.Array, shifts: jax.Array) -> jax.Array:
    """``[Ni]`` distance from each atom i to its nearest allowed image of an atom j.

    The search over all ``Ni x Nj x S`` images runs without gradient (the minimum is
    piecewise one pair's distance, so its gradient is that pair's); only the selected
    pair (j*, k*) per atom is then recomputed differentiably. Value and gradient equal
    those of ``min`` over :func:`pair_distances` (away from ties, where the minimum is not
    differentiable), at O(Ni) backward cost instead of O(Ni Nj S). The search uses
    broadcast differences ``|v + t|^2`` that XLA fuses into one loop with the reduction.

    Args:
      lattice: ``[3, 3]``; pos_i ``[Ni, 3]``; pos_j ``[Nj, 3]`` (Cartesian Angstrom).
      excluded: ``[Ni, Nj, S]`` pairs not to consider (padding, the atom itself).
      shifts: ``[S, 3]`` integer lattice translations.
    Returns:
      ``inf`` where every pair is excluded.
    """
    lat0, pi0, pj0 = (jax.lax.stop_gradient(x) for x in (lattice, pos_i, pos_j))
    sq = jnp.where(excluded, jnp.inf, _image_sq(lat0, pi0, pj0, shifts))
    smallest, flat = _min_and_first_index(sq.reshape(pos_i.shape[0], -1))
    found = jnp.isfinite(smallest)
    j, k = flat // shifts.shape[0], flat % shifts.shape[0]
    # the same wrap as above (round() of the same numbers), now with gradients
    vec = wrap(lattice, pos_j[j] - pos_i) + times3(shifts[k], lattice)
    d = jnp.sqrt(jnp.maximum(jnp.sum(vec * vec, axis=-1), _TINY))
    return jnp.where(found, d, jnp.inf)


def _unordered_pairs(n: int, n_shifts: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows a <= b of ``n`` atoms (``first``, ``second``, ``[P]``, P = n (n + 1) / 2), and
    ``itself [P, S]``: True where a row meets itself at zero shift (shift 0 first).

    With every shift these rows hold each periodic pair once, an atom's own images
    (a = b) at both k and -k: the unordered search of :func:`_nearest_within` and
    :func:`clash_energy`.
    """
    first, second = np.triu_indices(n)
    itself = (first == second)[:, None] & (np.arange(n_shifts) == 0)[None, :]
    return first, second, itself


def _nearest_within(lattice: jax.Array, positions: jax.Array, allowed: jax.Array,
                    shifts: jax.Array) -> jax.Array:
    """``[N]`` distance from each atom to its nearest allowed image within the SAME set.

    :func:`_nearest_image` with ``pos_j = pos_i``, at half the search: the image k of j
    seen from i and the image -k of i seen from j are the same pair, so the search runs
    over the unordered rows a <= b with every shift (``[P, S]``, P = N (N + 1) / 2; an
    atom's own images are the rows a = b, without k = 0), takes each pair's nearest
    image, then each atom's nearest pair. Only the selected pair per atom is recomputed
    with gradients, from i's side: ``wrap(r_j - r_i) + sign t_k`` where the pair's search
    ran from j's side (sign -1; wrap is odd, so it is the same vector). Value and gradient
    equal :func:`_nearest_image`'s (away from ties, where it may select another of the
    equally near images).

    Args:
      lattice: ``[3, 3]``; positions ``[N, 3]`` (Cartesian Angstrom).
      allowed: ``[N, N]`` symmetric bool, pairs that count (both rows atoms, same class).
      shifts: ``[S, 3]`` integer lattice translations, zero shift first.
    Returns:
      ``inf`` where an atom has no allowed pair.
    """
    n = positions.shape[0]
    first, second, itself = _unordered_pairs(n, shifts.shape[0])
    lat0, pos0 = jax.lax.stop_gradient(lattice), jax.lax.stop_gradient(positions)
    v = wrap(lat0, pos0[second] - pos0[first])  # [P, 3]
    excluded = ~allowed[first, second][:, None] | itself
    sq = jnp.where(excluded, jnp.inf, _shifted_sq(v[:, None, :], times3(shifts, lat0))[:, 0, :])
    pair_sq, pair_k = _min_and_first_index(sq)  # [P]
    # back to [N, N] (a static gather of P values) and each atom's nearest pair
    index = np.zeros((n, n), np.int32)
    index[first, second] = index[second, first] = np.arange(first.size)
    smallest, j = _min_and_first_index(pair_sq[index])
    k = pair_k[index][np.arange(n), j]
    sign = jnp.where(np.arange(n) > j, -1.0, 1.0).astype(positions.dtype)
    vec = wrap(lattice, positions[j] - positions) + sign[:, None] * times3(shifts[k], lattice)
    d = jnp.sqrt(jnp.maximum(jnp.sum(vec * vec, axis=-1), _TINY))
    return jnp.where(jnp.isfinite(smallest), d, jnp.inf)


def _min_and_first_index(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Row minima of ``x [R, C]`` and the first column attaining each (int32, < C)."""
    # min, then the first index attaining it as an integer min: faster on CPU than
    # argmin, or argmax of the equality, whose variadic reductions XLA does not vectorise
    smallest = jnp.min(x, axis=1)
    c = x.shape[1]
    column = jnp.arange(c, dtype=jnp.int32)[None, :]
    first = jnp.min(jnp.where(x == smallest[:, None], column, c), axis=1)
    return smallest, jnp.minimum(first, c - 1)


def nearest_distances(lattice: jax.Array, positions: jax.Array, mask: jax.Array,
                      shifts: jax.Array, target_positions: jax.Array | None = None,
                      target_mask: jax.Array | None = None) -> jax.Array:
    """Each atom's distance to its nearest atom of a target set, over periodic images.

    Without a target the set is ``positions`` itself, and only an atom at zero shift
    from itself is excluded (its own periodic images count, as in the spec). The
    function is differentiable with respect to ``lattice`` and positions (the gradient
    flows through each atom's nearest pair only; see :func:`_nearest_image`).

    Args:
      lattice: ``[3, 3]`` Angstrom.
      positions: ``[N, 3]`` Cartesian Angstrom.
      mask: ``[N]`` rows that are atoms (> 0.5).
      shifts: ``[S, 3]`` from :func:`crystalgan_jax.core.cells.lattice_shifts`, zero shift first.
      target_positions, target_mask: ``[M, 3]`` and ``[M]``, a different set.
    Returns:
      ``[N]`` distances (Angstrom); ``inf`` for padding rows and where the target set
      is empty.
    """
    if target_positions is None:
        atom = mask > 0.5
        nearest = _nearest_within(lattice, positions, atom[:, None] & atom[None, :], shifts)
    else:
        shape = (positions.shape[0], target_positions.shape[0], shifts.shape[0])
        excluded = jnp.broadcast_to(~(target_mask > 0.5)[None, :, None], shape)
        nearest = _nearest_image(lattice, positions, target_positions, excluded, shifts)
    return jnp.where(mask > 0.5, nearest, jnp.inf)


def class_nearest(lattice: jax.Array, positions: jax.Array, mask: jax.Array,
                  class_ids: jax.Array, shifts: jax.Array) -> jax.Array:
    """Each atom's distance to its nearest atom of the same class (array-level API).

    Args:
      lattice: ``[3, 3]`` Angstrom.
      positions: ``[N, 3]`` Cartesian Angstrom.
      mask: ``[N]`` rows that are atoms (> 0.5).
      class_ids: ``[N]`` integer class of each row; a negative id leaves the atom
        unconstrained (e.g. metal-H pairs are free in the spec: give the metals id 0,
        H id 1).
      shifts: ``[S, 3]`` from :func:`crystalgan_jax.core.cells.lattice_shifts`, zero shift first.
    Returns:
      ``[N]`` distances (Angstrom); ``inf`` for padding, unconstrained rows and atoms
      alone in their class with no own image in ``shifts``.
    """
    class_ids = jnp.asarray(class_ids)
    atom = mask > 0.5
    allowed = (class_ids[:, None] == class_ids[None, :]) & atom[:, None] & atom[None, :]
    nearest = _nearest_within(lattice, positions, allowed, shifts)
    return jnp.where((mask > 0.5) & (class_ids >= 0), nearest, jnp.inf)


def array_penalty(lattice: jax.Array, positions: jax.Array, mask: jax.Array,
                  class_ids: jax.Array, shifts: jax.Array, d1: float, d2: float,
                  form: str = "hinge") -> tuple[jax.Array, jax.Array]:
    """(L_geo1, L_geo2) of ONE structure from plain arrays (no :class:`Crystal` needed).

    :func:`penalty_terms` of :func:`class_nearest`; vmap it over a batch and reduce
    (e.g. mean) as the caller's loss needs. Differentiable in lattice and positions.

    Args:
      lattice: ``[3, 3]``; positions ``[N, 3]`` (Cartesian Angstrom); mask ``[N]``.
      class_ids: ``[N]`` integer class per row (negative: unconstrained).
      shifts: ``[S, 3]`` lattice shifts, zero shift first.
      d1, d2: shortest and longest allowed nearest same-class distance (Angstrom).
      form: "hinge" or "paper" (see :func:`penalty_terms`).
    Returns:
      two scalars.
    """
    s = class_nearest(lattice, positions, mask, class_ids, shifts)
    valid = (mask > 0.5) & (jnp.asarray(class_ids) >= 0)
    return penalty_terms(s, valid, d1, d2, form)


def class_rows(crystal: Crystal, blocks: Sequence[int]) -> tuple[jax.Array, jax.Array]:
    """Positions ``[sum N_s, 3]`` and mask of the blocks of one constrained class."""
    positions = jnp.concatenate([crystal.positions[b] for b in blocks], axis=0)
    mask = jnp.concatenate([crystal.masks[b] for b in blocks], axis=0)
    return positions, mask


def constrained_nearest(crystal: Crystal, shifts: jax.Array,
                        classes: Sequence[Sequence[int]] = DEFAULT_CLASSES
                        ) -> tuple[jax.Array, jax.Array]:
    """Nearest-neighbour distance of every atom within its constrained class.

    Only rows of the same class are compared (metal rows with metal rows, H with H),
    which is all the penalty needs and much cheaper than all pairs.

    Args:
      crystal: one structure, Cartesian coordinates.
      shifts: ``[S, 3]`` lattice shifts.
      classes: tuples of block indices (H=0, A=1, B=2); an atom's nearest neighbour is
        sought among the atoms of all blocks of its class.
    Returns:
      ``s [M]`` distances (Angstrom) and ``valid [M]`` (bool), concatenated over classes.
    """
    if crystal.fractional:
        raise ValueError("constrained_nearest needs Cartesian positions; use to_cartesian")
    s, valid = [], []
    for blocks in classes:
        positions, mask = class_rows(crystal, blocks)
        s.append(nearest_distances(crystal.lattice, positions, mask, shifts))
        valid.append(mask > 0.5)
    return jnp.concatenate(s), jnp.concatenate(valid)


def penalty_terms(s: jax.Array, valid: jax.Array, d1: float, d2: float,
                  form: str = "hinge") -> tuple[jax.Array, jax.Array]:
    """The two geometric terms (L_geo1, L_geo2) for one structure's distances ``s``.

    ``form="hinge"`` (default; keeps distances inside [d1, d2]):
      L_geo1 = sum_i relu(d1 - s_i)^2,  L_geo2 = sum_i relu(s_i - d2)^2.
    ``form="paper"`` (the paper's literal formulas):
      L_geo1 = min_i (d1 - s_i)^2,      L_geo2 = -min_i (d2 - s_i)^2.
    Sums and minima run over valid atoms only; an empty set gives 0.

    Args:
      s: ``[M]`` nearest-neighbour distances (Angstrom).
      valid: ``[M]`` bool, which entries are atoms.
      d1, d2: shortest and longest allowed distance (Angstrom).
    """
    s = jnp.where(valid, s, d1)  # any finite value: padding must not produce NaN grads
    if form == "hinge":
        low = jnp.where(valid, jax.nn.relu(d1 - s) ** 2, 0.0)
        high = jnp.where(valid, jax.nn.relu(s - d2) ** 2, 0.0)
        return jnp.sum(low), jnp.sum(high)
    if form == "paper":
        any_valid = jnp.any(valid)
        geo1 = jnp.min(jnp.where(valid, (d1 - s) ** 2, jnp.inf))
        geo2 = -jnp.min(jnp.where(valid, (d2 - s) ** 2, jnp.inf))
        return jnp.where(any_valid, geo1, 0.0), jnp.where(any_valid, geo2, 0.0)
    raise ValueError(f"unknown geometric penalty form {form!r}; use 'hinge' or 'paper'")


def geometric_penalty(crystal: Crystal, shifts: jax.Array, d1: float, d2: float,
                      classes: Sequence[Sequence[int]] = DEFAULT_CLASSES,
                      form: str = "hinge") -> tuple[jax.Array, jax.Array]:
    """(L_geo1, L_geo2) of one structure: :func:`penalty_terms` of its constrained distances.

    Differentiable with respect to the lattice and positions; padding rows (mask <= 0.5)
    change nothing. vmap it over a batch and average for a loss.
    """
    s, valid = constrained_nearest(crystal, shifts, classes)
    return penalty_terms(s, valid, d1, d2, form)


def clash_energy(lattice: jax.Array, positions: jax.Array, mask: jax.Array, radii: jax.Array,
                 shifts: jax.Array, factor: float = 0.8) -> jax.Array:
    """Sum over atom pairs of relu(factor * (r_i + r_j) - d_ij)^2 (Angstrom^2), one structure.

    The array-level form of :func:`clash_penalty`. Pairs run over periodic images (an
    atom's own images included) and each unordered pair counts once; padding rows
    (mask <= 0.5) count nothing. The gradient is exact (a custom VJP; see
    :func:`_repulsion`).

    Args:
      lattice: ``[3, 3]``; positions ``[N, 3]`` (Cartesian Angstrom); mask ``[N]``.
      radii: ``[N]`` radius of each row's atom (Angstrom).
      shifts: ``[S, 3]`` lattice shifts, zero shift first.
      factor: fraction of the radius sum below which a pair is penalised.
    """
    # Each unordered pair once: (i, j, k) and (j, i, -k) are the same pair, so the rows
    # i <= j with every shift hold each pair once, except that an atom's own images
    # (i = j) appear at k and -k and count half. Half the work of all ordered pairs.
    n = positions.shape[0]
    first, second, itself = _unordered_pairs(n, shifts.shape[0])
    # r_b - r_a as a product with a constant [P, N] matrix of +-1, not a gather: the
    # gather's gradient is a scatter-add, which XLA's CPU backend runs element by element
    difference = np.zeros((first.size, n), np.float32)
    np.add.at(difference, (np.arange(first.size), second), 1.0)
    np.add.at(difference, (np.arange(first.size), first), -1.0)
    v = wrap(lattice, jnp.asarray(difference, positions.dtype) @ positions)  # [P, 3]
    present = (mask[first] > 0.5) & (mask[second] > 0.5)
    weight = jnp.where(present, jnp.where(first == second, 0.5, 1.0), 0.0).astype(v.dtype)
    limit = factor * (radii[first] + radii[second])
    return _repulsion(v, times3(shifts, lattice), limit, weight, itself)


@jax.custom_vjp
def _repulsion(v: jax.Array, t: jax.Array, limit: jax.Array, weight: jax.Array,
               itself: jax.Array) -> jax.Array:
    """``sum_pk w_p relu(limit_p - |v_p + t_k|)^2``, but where ``itself``.

    ``v [P, 3]`` wrapped pair vectors, ``t [S, 3]`` Cartesian shifts, ``limit [P]``
    (Angstrom), ``weight [P]`` (0 for pairs with padding), ``itself [P, S]`` bool (an
    atom at zero shift from itself).

    Why a custom VJP: autodiff of the ``[P, S]`` expression keeps several temporaries of
    that size and reduces each back to v and t, many times the cost of the value.
    Here the forward pass also forms the two small cotangents, ``sum_k c (v + t)`` and
    ``sum_p c (v + t)`` with ``c = dE/d|u| / |u|``, and the backward pass only scales
    them. ``weight`` and ``itself`` get no gradient.
    """
    return _repulsion_fwd(v, t, limit, weight, itself)[0]


def _repulsion_fwd(v, t, limit, weight, itself):
    sq = _shifted_sq(v[:, None, :], t)[:, 0, :]  # [P, S]
    d = jnp.sqrt(jnp.maximum(sq, _TINY))
    gap = jnp.where(itself, 0.0, jax.nn.relu(limit[:, None] - d))
    energy = jnp.sum(weight[:, None] * gap * gap)
    # dE/du_pk = c_pk u_pk. Coincident atoms (|u|^2 below _TINY) get 0, the subgradient
    # that autodiff through the clamp gives. The barrier keeps c in memory: without it
    # XLA recomputes the distances inside each reduction and product below.
    c = jax.lax.optimization_barrier(jnp.where(sq > _TINY, -2.0 * weight[:, None] * gap / d, 0.0))
    # sum_k c (v + t) and sum_p c (v + t) as row and column sums of c and two thin
    # products: fewer passes over [P, S] than one reduction per component and axis
    d_v = v * jnp.sum(c, axis=1)[:, None] + c @ t
    d_t = c.T @ v + t * jnp.sum(c, axis=0)[:, None]
    d_limit = jnp.sum(2.0 * weight[:, None] * gap, axis=1)
    return energy, (d_v, d_t, d_limit, weight, itself)


def _repulsion_bwd(residuals, g):
    d_v, d_t, d_limit, weight, itself = residuals
    return (g * d_v, g * d_t, g * d_limit, jnp.zeros_like(weight),
            np.zeros(itself.shape, jax.dtypes.float0))


_repulsion.defvjp(_repulsion_fwd, _repulsion_bwd)


def clash_penalty(crystal: Crystal, shifts: jax.Array, radii: Sequence[float],
                  factor: float = 0.8) -> jax.Array:
    """:func:`clash_energy` of a :class:`Crystal`, with one radius per block.

    A repulsion between ALL atoms, whatever their species, where they come closer than
    ``factor`` times the sum of their covalent radii: the metal-H pairs that the
    spec's constrained classes leave free, and metal pairs closer than d1 allows for
    large atoms.

    Args:
      crystal: one structure, Cartesian.
      shifts: ``[S, 3]`` lattice shifts, zero shift first.
      radii: covalent radius (Angstrom) of the H, A and B blocks.
      factor: fraction of the radius sum below which a pair is penalised.
    """
    if crystal.fractional:
        raise ValueError("clash_penalty needs Cartesian positions; use to_cartesian")
    positions = jnp.concatenate(crystal.positions, axis=0)
    mask = jnp.concatenate(crystal.masks, axis=0)
    r = jnp.concatenate([jnp.full((p.shape[0],), rad, positions.dtype)
                         for p, rad in zip(crystal.positions, radii)])
    return clash_energy(crystal.lattice, positions, mask, r, shifts, factor)


# --- crystalgan_plus: per-class distance windows and cell shape (issue 13) ---------------

def cross_nearest(crystal: Crystal, shifts: jax.Array, source: Sequence[int],
                  target: Sequence[int]) -> tuple[jax.Array, jax.Array]:
    """Each atom of the ``source`` blocks' distance to its nearest atom of the ``target`` blocks.

    Where source and target are the same blocks this is :func:`nearest_distances` within
    the set (own images count); otherwise the nearest atom of the other set.

    Args:
      crystal: one structure, Cartesian Angstrom.
      shifts: ``[S, 3]`` lattice shifts, zero shift first.
      source, target: block indices (H=0, A=1, B=2).
    Returns:
      ``s [M]`` distances (Angstrom; ``inf`` where the target set is empty) and
      ``valid [M]`` (the source row is an atom and some target atom exists).
    """
    if crystal.fractional:
        raise ValueError("cross_nearest needs Cartesian positions; use to_cartesian")
    positions, mask = class_rows(crystal, source)
    if tuple(source) == tuple(target):
        s = nearest_distances(crystal.lattice, positions, mask, shifts)
    else:
        t_pos, t_mask = class_rows(crystal, target)
        s = nearest_distances(crystal.lattice, positions, mask, shifts, t_pos, t_mask)
    return s, (mask > 0.5) & jnp.isfinite(s)


def window_penalty(crystal: Crystal, shifts: jax.Array,
                   windows: Sequence[tuple[Sequence[int], Sequence[int], float, float]]
                   ) -> jax.Array:
    """Sum over windows and source atoms of relu(lo - s)^2 + relu(s - hi)^2 (Angstrom^2).

    Each window ``(source blocks, target blocks, lo, hi)`` asks every source atom's
    nearest target atom (:func:`cross_nearest`) to lie in [lo, hi]; the windows are
    learned from the training binaries (:func:`crystalgan_jax.materials.candidates.learn_windows`).
    Unlike the paper's classes this also covers metal-H pairs, in both directions.
    """
    total = jnp.zeros((), crystal.lattice.dtype)
    for source, target, lo, hi in windows:
        s, valid = cross_nearest(crystal, shifts, source, target)
        s = jnp.where(valid, s, lo)  # finite filler: no NaN gradients from padding
        total = total + jnp.sum(jnp.where(valid, jax.nn.relu(lo - s) ** 2
                                          + jax.nn.relu(s - hi) ** 2, 0.0))
    return total


def plane_spacings(lattice: jax.Array) -> jax.Array:
    """:func:`crystalgan_jax.core.cells.plane_spacings` for one ``[3, 3]`` lattice in JAX
    (differentiable), ``[3]``."""
    a, b, c = lattice[0], lattice[1], lattice[2]
    volume = jnp.abs(jnp.dot(a, jnp.cross(b, c)))
    areas = jnp.stack([jnp.linalg.norm(jnp.cross(b, c)), jnp.linalg.norm(jnp.cross(c, a)),
                       jnp.linalg.norm(jnp.cross(a, b))])
    return volume / jnp.maximum(areas, _TINY)


def image_range(lattice: jax.Array) -> jax.Array:
    """:func:`crystalgan_jax.core.cells.image_range` in the graph, for one lattice and the
    nearest-neighbour radius (no cutoff): ``[3]`` int32."""
    r = jnp.min(jnp.linalg.norm(lattice, axis=-1))
    return jnp.floor(r / plane_spacings(lattice) + 0.5 + 1e-9).astype(jnp.int32)


def outside_image_range(lattice: jax.Array, shifts: jax.Array) -> jax.Array:
    """True where a cell needs more images than ``shifts`` holds on some axis.

    For such a cell the penalty's nearest distances are upper bounds, not exact.
    """
    compiled = jnp.max(jnp.abs(shifts), axis=0).astype(jnp.int32)
    return jnp.any(image_range(lattice) > compiled)


def spacing_penalty(lattice: jax.Array, min_spacing: float) -> jax.Array:
    """sum_m relu(min_spacing - h_m)^2 (Angstrom^2): keeps lattice planes apart.

    A generated cell whose planes come closer than the training cells' do needs more
    periodic images than the penalty was compiled with; this term stops cells from
    flattening instead of growing the image set.
    """
    return jnp.sum(jax.nn.relu(min_spacing - plane_spacings(lattice)) ** 2)


# --- volume like the data's (issue 28) ---------------------------------------------------

def scale_to_volume(crystal: Crystal, block_volumes: Sequence[float]) -> Crystal:
    """One structure scaled isotropically to the volume its composition has in the data.

    The target volume is ``sum_b n_b v_b`` over the blocks (H, A, B), with ``n_b`` the
    block's atoms (occupancy > 0.5, as decoding counts them) and ``v_b`` the volume per
    atom of that block's element (Angstrom^3) fitted on the training cells
    (:func:`crystalgan_jax.materials.candidates.learn_block_volumes`). The lattice (and
    Cartesian positions) are multiplied by ``(target / V)^(1/3)``; fractional positions are
    unchanged. A structure with no atom, or a degenerate cell, is returned unscaled.

    Args:
      crystal: one structure ``lattice [3, 3]``, positions per block ``[N_b, 3]``.
      block_volumes: ``(v_H, v_A, v_B)``, Angstrom^3 per atom.
    """
    counts = jnp.stack([jnp.sum(m > 0.5) for m in crystal.masks]).astype(crystal.lattice.dtype)
    target = jnp.dot(counts, jnp.asarray(block_volumes, crystal.lattice.dtype))
    volume = jnp.abs(jnp.linalg.det(crystal.lattice))
    ok = (target > 0) & (volume > _TINY)
    factor = jnp.where(ok, jnp.cbrt(jnp.where(ok, target / jnp.where(ok, volume, 1.0), 1.0)),
                       1.0)
    positions = (crystal.positions if crystal.fractional
                 else tuple(p * factor for p in crystal.positions))
    return crystal.replace(lattice=crystal.lattice * factor, positions=positions)
