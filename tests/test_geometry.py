import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from pymatgen.core import Element, Lattice, Structure

from crystalgan_jax.core import cells, encoding, geometry
from crystalgan_jax.materials import io


def _pymatgen_nearest(structure: Structure, members: set[str]) -> list[float]:
    """Nearest distance from each member atom to another member atom (images included)."""
    out = []
    r = 2.0 * max(structure.lattice.abc) + 1.0  # the own image bounds the answer
    for i, site in enumerate(structure):
        if site.specie.symbol not in members:
            continue
        neighbours = structure.get_neighbors(site, r)
        out.append(min(n.nn_distance for n in neighbours if n.specie.symbol in members))
    return out


def _jax_nearest(structure: Structure, members: set[str]) -> np.ndarray:
    rows = [i for i, s in enumerate(structure) if s.specie.symbol in members]
    lattice = structure.lattice.matrix
    shifts = cells.lattice_shifts(cells.image_range(lattice))
    with jax.enable_x64(True):
        d = geometry.nearest_distances(
            jnp.asarray(lattice), jnp.asarray(structure.cart_coords[rows]),
            jnp.ones(len(rows)), jnp.asarray(shifts, jnp.float64))
    return np.asarray(d)


def test_figure5_neighbour_table_matches_paper(figure5_dir):
    s = io.read_structure(figure5_dir / "POSCAR")
    ref = json.loads((figure5_dir / "neighbours.json").read_text())
    table = cells.neighbour_table(s.lattice.matrix, s.cart_coords,
                                     [x.specie.symbol for x in s], ref["cutoff_angstrom"])
    assert len(table) == len(ref["atoms"])
    for row, atom in zip(table, ref["atoms"]):
        assert [sp for sp, _ in row] == [sp for sp, _ in atom["neighbours"]]
        np.testing.assert_allclose([d for _, d in row], [d for _, d in atom["neighbours"]],
                                   atol=1e-3)


@pytest.mark.parametrize("members", [{"H"}, {"Pd", "Ni"}])
def test_nearest_distances_match_pymatgen_on_reference(reference_domains, members):
    # As training calls it: jitted, rows padded to one size (mask 0) and one shift set
    # covering every cell, so one compilation serves all 70 structures (called eagerly
    # per structure shape, this test took ~30 s of op-by-op compilations)
    cases = [(s, members & {x.specie.symbol for x in s})
             for domain in reference_domains for s in domain.structures]
    cases = [(s, present) for s, present in cases if present]
    assert len(cases) == 70
    rows = [[i for i, x in enumerate(s) if x.specie.symbol in present] for s, present in cases]
    n = max(map(len, rows)) + 1  # at least one padding row in every call
    shifts = cells.lattice_shifts(np.max(
        [cells.image_range(s.lattice.matrix) for s, _ in cases], axis=0))
    nearest = jax.jit(geometry.nearest_distances)
    for (s, present), r in zip(cases, rows):
        positions, mask = np.zeros((n, 3)), np.zeros(n)
        positions[:len(r)], mask[:len(r)] = s.cart_coords[r], 1.0
        with jax.enable_x64(True):
            d = np.asarray(nearest(jnp.asarray(s.lattice.matrix), jnp.asarray(positions),
                                   jnp.asarray(mask), jnp.asarray(shifts, jnp.float64)))
        np.testing.assert_allclose(d[:len(r)], _pymatgen_nearest(s, present), atol=1e-4)
        assert np.all(np.isinf(d[len(r):]))  # padding rows


@pytest.mark.parametrize("lattice", [
    # thin: c-plane spacing 0.5 A while every lattice vector is about 3 A long
    [[3.0, 0.0, 0.0], [0.0, 3.2, 0.0], [2.9, 0.3, 0.5]],
    # strongly skewed: c leans far over a (a fixed +-1 image shell is wrong here)
    [[2.9, 0.0, 0.0], [0.4, 3.1, 0.0], [7.3, 1.1, 1.2]],
])
def test_nearest_distances_thin_and_skewed_cells(lattice):
    rng = np.random.default_rng(0)
    s = Structure(Lattice(lattice), ["Pd", "Ni", "H", "H", "Pd"], rng.random((5, 3)))
    assert max(cells.image_range(lattice)) >= 2  # the point of the case
    for members in ({"H"}, {"Pd", "Ni"}):
        np.testing.assert_allclose(_jax_nearest(s, members), _pymatgen_nearest(s, members),
                                   atol=1e-4)


def test_single_atom_sees_its_own_images():
    # spec: a cell with one H of edge 4 A has H-H' = 4 A
    d = geometry.nearest_distances(jnp.eye(3) * 4.0, jnp.zeros((1, 3)), jnp.ones(1),
                                   jnp.asarray(cells.lattice_shifts((1, 1, 1))))
    np.testing.assert_allclose(d, [4.0], rtol=1e-6)


def _crystal(lattice, h, metal_a, metal_b=(), n=(4, 3, 3)):
    layout = encoding.Layout("Pd", "Ni", *n)
    species = ["H"] * len(h) + ["Pd"] * len(metal_a) + ["Ni"] * len(metal_b)
    coords = list(h) + list(metal_a) + list(metal_b)
    s = Structure(Lattice(lattice), species, coords, coords_are_cartesian=True)
    return encoding.encode(s, layout, dtype=np.float64), layout


def _penalty(crystal, form="hinge"):
    shifts = jnp.asarray(cells.lattice_shifts((2, 2, 2)), jnp.float64)
    if form == "clash":  # covalent radii of H, Pd, Ni; factor large enough to bite
        return geometry.clash_penalty(crystal, shifts, (0.31, 1.39, 1.24), 1.2)
    return sum(geometry.geometric_penalty(crystal, shifts, 1.8, 3.0, form=form))


def test_penalty_zero_inside_positive_outside():
    with jax.enable_x64(True):
        inside, _ = _crystal(np.eye(3) * 4.0, [[0, 0, 0], [2.0, 0, 0]],
                             [[0, 2.0, 0]], [[0, 0, 2.0]])  # metal-metal 2*sqrt2, H-H 2.0
        assert float(_penalty(inside)) == 0.0
        too_close, _ = _crystal(np.eye(3) * 5.0, [[0, 0, 0], [1.0, 0, 0]],
                                [[0, 2.5, 0]], [[0, 0, 2.5]])
        assert float(_penalty(too_close)) > 0.0
        too_far, _ = _crystal(np.eye(3) * 9.0, [[0, 0, 0], [4.5, 0, 0]],
                              [[0, 4.5, 0]], [[0, 0, 4.5]])
        assert float(_penalty(too_far)) > 0.0


def test_penalty_gradient_matches_finite_differences():
    rng = np.random.default_rng(3)
    with jax.enable_x64(True):
        crystal, _ = _crystal(np.diag([4.0, 3.5, 5.0]) + 0.3 * rng.random((3, 3)),
                              rng.random((3, 3)) * 3, rng.random((2, 3)) * 3,
                              rng.random((2, 3)) * 3)
        for form in ("hinge", "paper", "clash"):
            @jax.jit  # one program per form for the ~50 evaluations below
            def f(lattice, h, a, b):
                c = crystal.replace(lattice=lattice, positions=(h, a, b))
                return _penalty(c, form)

            args = (jnp.asarray(crystal.lattice),) + tuple(map(jnp.asarray, crystal.positions))
            grads = jax.jit(jax.grad(f, argnums=(0, 1, 2, 3)))(*args)
            assert any(float(jnp.abs(g).sum()) > 0 for g in grads)
            eps = 1e-6
            for k, (x, g) in enumerate(zip(args, grads)):
                flat = np.asarray(x).ravel()
                for idx in range(flat.size):
                    up, down = flat.copy(), flat.copy()
                    up[idx] += eps
                    down[idx] -= eps
                    a_up = list(args); a_up[k] = jnp.asarray(up.reshape(x.shape))
                    a_dn = list(args); a_dn[k] = jnp.asarray(down.reshape(x.shape))
                    fd = (float(f(*a_up)) - float(f(*a_dn))) / (2 * eps)
                    assert abs(fd - float(np.asarray(g).ravel()[idx])) < 1e-5 * max(1, abs(fd)), (
                        form, k, idx)


def test_padding_rows_change_nothing():
    with jax.enable_x64(True):
        lattice = np.diag([4.0, 3.6, 5.2])
        h, a, b = [[0, 0, 0], [1.1, 0.3, 0.2]], [[2, 2, 2]], [[0.5, 1.8, 3.9]]
        small, _ = _crystal(lattice, h, a, b, n=(2, 1, 1))
        big, _ = _crystal(lattice, h, a, b, n=(6, 4, 5))
        # garbage in padding rows must be ignored as long as the mask says "no atom"
        big = big.replace(positions=tuple(
            np.where(m[:, None] > 0.5, p, 0.37) for p, m in zip(big.positions, big.masks)))
        for form in ("hinge", "paper", "clash"):
            np.testing.assert_allclose(float(_penalty(small, form)), float(_penalty(big, form)),
                                       rtol=1e-12)
        g = jax.grad(lambda h: _penalty(big.replace(positions=(h,) + big.positions[1:])))(
            jnp.asarray(big.positions[0]))
        assert np.all(np.isfinite(g)) and np.all(np.asarray(g)[2:] == 0)


def test_penalty_vmaps_and_jits_over_a_batch(reference_domains):
    pdh, nih = reference_domains
    structures = pdh.structures[:6] + nih.structures[:6]
    layout = encoding.Layout.fit("Pd", "Ni", structures)
    batch = encoding.encode_batch(structures, layout, dtype=np.float32)
    shifts = jnp.asarray(cells.lattice_shifts(cells.image_range(batch.lattice)))
    fn = jax.jit(jax.vmap(lambda c: geometry.geometric_penalty(c, shifts, 1.8, 3.0)))
    geo1, geo2 = fn(jax.tree_util.tree_map(jnp.asarray, batch))
    assert geo1.shape == (12,)
    for i in (0, 7):
        one = geometry.geometric_penalty(
            jax.tree_util.tree_map(jnp.asarray, encoding.index(batch, i)), shifts, 1.8, 3.0)
        np.testing.assert_allclose([geo1[i], geo2[i]], one, rtol=1e-5)


def _pymatgen_clash(structure: Structure, factor: float) -> float:
    """Independent reference: pymatgen neighbour list, sum of relu(limit - d)^2 / 2."""
    from ase.data import covalent_radii

    radii = [covalent_radii[site.specie.Z] for site in structure]
    total = 0.0
    for i, neighbours in enumerate(structure.get_all_neighbors(2 * factor * max(radii) + 0.1)):
        for n in neighbours:
            limit = factor * (radii[i] + radii[n.index])
            total += max(limit - n.nn_distance, 0.0) ** 2
    return total / 2


def test_clash_penalty_matches_pymatgen_reference():
    from ase.data import covalent_radii

    rng = np.random.default_rng(7)
    with jax.enable_x64(True):
        for trial in range(4):
            lattice = np.diag([3.2, 3.6, 3.9]) + 0.4 * rng.random((3, 3))
            crystal, layout = _crystal(lattice, rng.random((3, 3)) * 3, rng.random((2, 3)) * 3,
                                       rng.random((2, 3)) * 3)
            radii = [covalent_radii[Element(s).Z] for s in layout.symbols]
            shifts = jnp.asarray(cells.lattice_shifts(cells.image_range(lattice, 3.0)),
                                 jnp.float64)
            value = float(geometry.clash_penalty(crystal, shifts, radii, 0.8))
            reference = _pymatgen_clash(encoding.decode(crystal, layout), 0.8)
            np.testing.assert_allclose(value, reference, rtol=1e-9, atol=1e-12)
            if trial == 0:
                assert value > 0  # random atoms in a small cell do clash


def test_clash_gradient_equals_autodiff_of_the_plain_sum():
    # The custom VJP against autodiff of the textbook expression over pair_distances,
    # including two coincident atoms (where both give the clamp's zero subgradient) and
    # a padding row holding garbage.
    rng = np.random.default_rng(11)
    radii_table = jnp.asarray([0.31, 1.39, 1.24, 0.31])
    shifts = jnp.asarray(cells.lattice_shifts((1, 2, 1)), jnp.float64)

    def plain(lattice, positions, mask, radii):
        d = geometry.pair_distances(lattice, positions, positions, shifts)
        present = mask > 0.5
        counted = ((present[:, None] & present[None, :])[:, :, None]
                   & ~geometry.self_pairs(len(mask), len(shifts)))
        limit = 0.8 * (radii[:, None] + radii[None, :])[:, :, None]
        return 0.5 * jnp.sum(jnp.where(counted, jax.nn.relu(limit - d) ** 2, 0.0))

    with jax.enable_x64(True):
        for trial in range(3):
            lattice = jnp.asarray(np.diag([3.0, 2.2, 3.4]) + 0.5 * rng.random((3, 3)))
            positions = rng.random((4, 3)) * 3
            positions[1] = positions[0] + (trial - 1) * lattice[0]  # coincident images
            positions = jnp.asarray(positions)
            mask = jnp.asarray([1.0, 1.0, 1.0, 0.0])
            ours = jax.value_and_grad(geometry.clash_energy, argnums=(0, 1))(
                lattice, positions, mask, radii_table, shifts)
            reference = jax.value_and_grad(plain, argnums=(0, 1))(
                lattice, positions, mask, radii_table)
            assert float(reference[0]) > 0
            np.testing.assert_allclose(float(ours[0]), float(reference[0]), rtol=1e-12)
            for g, ref in zip(ours[1], reference[1]):
                np.testing.assert_allclose(np.asarray(g), np.asarray(ref), rtol=1e-9, atol=1e-12)


def test_clash_penalty_zero_for_reference_structures_positive_when_h_moved(reference_domains):
    from ase.data import covalent_radii

    pdh, _ = reference_domains
    structures = [s for s in pdh.structures if _pymatgen_clash(s, 0.75) == 0]
    assert len(structures) > 25  # the reference data are (mostly) free of clashes
    layout = encoding.Layout.fit("Pd", "Ni", structures)
    batch = jax.tree_util.tree_map(jnp.asarray, encoding.encode_batch(structures, layout,
                                                                     dtype=np.float32))
    radii = [covalent_radii[Element(s).Z] for s in layout.symbols]
    shifts = jnp.asarray(cells.lattice_shifts(cells.image_range(batch.lattice)))
    per = jax.vmap(lambda c: geometry.clash_penalty(c, shifts, radii, 0.75))
    # float32: a pair pymatgen puts a hair outside 0.75 x the radius sum may come out a
    # hair inside here, so "zero" is a violation below 1e-4 A (squared: 1e-8 A^2)
    assert float(jnp.max(per(batch))) < 1e-8
    # put the first H of every structure 0.5 A from its first Pd: every structure clashes
    h = batch.positions[0].at[:, 0].set(batch.positions[1][:, 0] + jnp.array([0.5, 0.0, 0.0]))
    moved = per(batch.replace(positions=(h,) + batch.positions[1:]))
    assert float(jnp.min(moved)) > 0
    grad = jax.grad(lambda h: jnp.sum(per(batch.replace(positions=(h,) + batch.positions[1:]))))(h)
    assert np.all(np.isfinite(grad))
    assert float(jnp.min(grad[:, 0, 0])) < 0  # descent moves each H further along +x


def test_table_from_distances_matches_a_plain_python_table_with_many_repeats():
    # Many images at few distinct distances: the bounded table must look past the
    # repeats (the partition step widens its window) and still give the nearest shells.
    rng = np.random.default_rng(7)
    n, s = 5, 400
    d = rng.choice([1.23456, 1.5, 2.0, 2.71828, 2.9999], size=(n, n, s))
    d[:, :, -3:] = rng.uniform(0.5, 3.5, size=(n, n, 3))
    d[np.arange(n), np.arange(n), 0] = np.inf
    symbols = ["Pd", "H", "Ni", "H", "Pd"]

    def plain(i):
        pairs = {(round(float(v), 4), symbols[j]) for j in range(n) for v in d[i, j] if v <= 3.0}
        return [(sym, dist) for dist, sym in sorted(pairs)]

    full = cells.table_from_distances(d, symbols, 3.0)
    bounded = cells.table_from_distances(d, symbols, 3.0, max_neighbours=12)
    for i in range(n):
        expected = plain(i)
        assert [sym for sym, _ in full[i]] == [sym for sym, _ in expected]
        np.testing.assert_allclose([v for _, v in full[i]], [v for _, v in expected], atol=1e-9)
        assert bounded[i] == full[i][:12]
