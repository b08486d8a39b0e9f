"""The array-level API: losses and the penalty as pure functions of plain arrays."""

import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from crystalgan_jax.core import cells, encoding, geometry, losses

REPO = Path(__file__).resolve().parents[1]


def test_losses_and_geometry_import_without_pymatgen_ase_or_flax():
    code = ("import sys, crystalgan_jax.core.losses, crystalgan_jax.core.geometry; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'pymatgen', 'ase', 'flax'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_bce_losses_equal_the_log_sigmoid_formulas():
    z = jnp.array([-30.0, -2.0, -0.1, 0.0, 0.7, 3.0, 40.0])
    m = jnp.array([0.0, 1.0, 1.0, 0.0, 1.0, 0.0, 1.0])
    log_p, log_not_p = jax.nn.log_sigmoid(z), jax.nn.log_sigmoid(-z)
    np.testing.assert_allclose(losses.generator_adversarial(z), -jnp.mean(log_p), rtol=1e-6)
    np.testing.assert_allclose(losses.discriminator(z, z[::-1]),
                               -jnp.mean(log_p) - jnp.mean(jax.nn.log_sigmoid(-z[::-1])),
                               rtol=1e-6)
    np.testing.assert_allclose(losses.occupancy_bce(z, m),
                               -jnp.mean(m * log_p + (1 - m) * log_not_p), rtol=1e-6)
    assert np.all(np.isfinite(losses.adversarial_bce(z, 1.0)))


def _batch(rng, b=4, rows=(5, 3, 2)):
    lattice = np.eye(3) * 4.0 + 0.3 * rng.random((b, 3, 3))
    positions = tuple(rng.random((b, n, 3)) * 4.0 for n in rows)
    masks = tuple((rng.random((b, n)) > 0.3).astype(np.float64) for n in rows)
    return encoding.Crystal(lattice, positions, masks)


def test_crystal_wrappers_equal_the_per_structure_functions_reduced_by_hand():
    rng = np.random.default_rng(0)
    with jax.enable_x64(True):
        a, b = _batch(rng), _batch(rng)
        logits = tuple(rng.normal(size=m.shape) for m in b.masks)
        # hand-written reference: the former block-wise formulas
        sq = sum(np.sum(m[..., None] * (p - q) ** 2, axis=(-2, -1))
                 for p, q, m in zip(a.positions, b.positions, b.masks))
        count = sum(3 * np.sum(m, axis=-1) for m in b.masks)
        expected = np.mean(np.mean((a.lattice - b.lattice) ** 2, axis=(-2, -1))
                           + sq / np.maximum(count, 1)) / 2.5**2
        np.testing.assert_allclose(losses.masked_reconstruction(a, b, 2.5), expected, rtol=1e-12)
        bce = [-(m * np.log(1 / (1 + np.exp(-z))) + (1 - m) * np.log(1 / (1 + np.exp(z))))
               for z, m in zip(logits, b.masks)]
        np.testing.assert_allclose(losses.occupancy(logits, b.masks),
                                   sum(x.sum() for x in bce) / sum(x.size for x in bce),
                                   rtol=1e-10)


@pytest.mark.parametrize("form", ["hinge", "paper"])
def test_array_penalty_with_class_ids_equals_crystal_penalty(reference_domains, form):
    pdh, nih = reference_domains
    structures = pdh.structures[:5] + nih.structures[:5]
    layout = encoding.Layout.fit("Pd", "Ni", structures)
    batch = jax.tree_util.tree_map(jnp.asarray, encoding.encode_batch(structures, layout,
                                                                     dtype=np.float32))
    shifts = jnp.asarray(cells.lattice_shifts(cells.image_range(batch.lattice)))
    # one array of rows H, A, B; metals (A and B) are class 0, H class 1
    positions = jnp.concatenate(batch.positions, axis=1)
    mask = jnp.concatenate(batch.masks, axis=1)
    ids = jnp.array([1] * layout.n_h + [0] * (layout.n_a + layout.n_b))

    def array_level(lattice, positions):
        geo = jax.vmap(lambda l, p, m: geometry.array_penalty(l, p, m, ids, shifts, 1.8, 3.0, form))
        return sum(jnp.mean(g) for g in geo(lattice, positions, mask))

    def crystal_level(lattice, positions):
        blocks = tuple(jnp.split(positions, np.cumsum(layout.rows)[:-1], axis=1))
        return sum(losses.geometric(batch.replace(lattice=lattice, positions=blocks), shifts,
                                    1.8, 3.0, form=form))

    # jitted, as training runs them (eagerly, every primitive compiled alone: ~20 s)
    v1, g1 = jax.jit(jax.value_and_grad(array_level, argnums=(0, 1)))(batch.lattice, positions)
    v2, g2 = jax.jit(jax.value_and_grad(crystal_level, argnums=(0, 1)))(batch.lattice,
                                                                        positions)
    assert float(v1) > 0  # the reference structures do not all satisfy [1.8, 3.0]
    np.testing.assert_allclose(v1, v2, rtol=1e-5)
    for x, y in zip(g1, g2):
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5)


def test_negative_class_id_is_unconstrained():
    lattice = jnp.eye(3) * 6.0
    positions = jnp.array([[0.0, 0, 0], [1.0, 0, 0], [3.0, 3, 3]])
    shifts = jnp.asarray(cells.lattice_shifts((1, 1, 1)))
    s = geometry.class_nearest(lattice, positions, jnp.ones(3), jnp.array([0, 0, -1]), shifts)
    np.testing.assert_allclose(s[:2], [1.0, 1.0], rtol=1e-6)
    assert np.isinf(s[2])
    geo1, _ = geometry.array_penalty(lattice, positions, jnp.ones(3), jnp.array([0, 0, -1]), shifts,
                               1.8, 3.0)
    np.testing.assert_allclose(geo1, 2 * 0.8**2, rtol=1e-5)


def test_example_trains_a_denoiser_with_the_penalty():
    out = subprocess.run([sys.executable, str(REPO / "examples" / "denoise_with_penalty.py"),
                          "--steps", "150"], capture_output=True, text=True, check=True,
                         cwd=REPO)
    values = dict(line.split(": ") for line in out.stdout.strip().splitlines())
    values = {k: float(v) for k, v in values.items()}
    assert values["noisy_penalty"] > 0
    assert values["denoised_penalty"] < 0.5 * values["noisy_penalty"]
    assert values["denoised_mse"] < values["noisy_mse"]


# --- distance and composition matching (issue 28) ---------------------------------------

def test_quantile_matching_is_the_one_dimensional_wasserstein_distance():
    rng = np.random.default_rng(0)
    a = rng.normal(2.5, 0.2, 4000)
    b = rng.normal(2.7, 0.2, 40000)
    levels = (np.arange(64) + 0.5) / 64
    q = np.quantile(b, levels)
    with jax.enable_x64(True):
        # W_2^2 between two normals of equal width: the squared difference of the means
        got = float(losses.quantile_matching(jnp.asarray(a), jnp.ones(a.shape, bool),
                                             jnp.asarray(q)))
        assert got == pytest.approx(0.04, abs=4e-3)
        # invalid entries are padding: any value there changes nothing
        padded = jnp.concatenate([jnp.asarray(a), jnp.full((7,), -50.0)])
        valid = jnp.concatenate([jnp.ones(a.shape, bool), jnp.zeros((7,), bool)])
        assert float(losses.quantile_matching(padded, valid, jnp.asarray(q))) == pytest.approx(got)
        # samples sitting on the reference quantiles are at distance 0
        assert float(losses.quantile_matching(jnp.asarray(q[::-1]), jnp.ones(64, bool),
                                              jnp.asarray(q))) == pytest.approx(0.0, abs=1e-12)
        x = jnp.asarray(rng.normal(2.6, 0.3, 9))
        v = jnp.asarray([True] * 8 + [False])
        grad = jax.grad(losses.quantile_matching)(x, v, jnp.asarray(q))
        assert float(grad[-1]) == 0.0
        eps = 1e-6
        for i in range(8):
            dx = jnp.zeros(9).at[i].set(eps)
            fd = (losses.quantile_matching(x + dx, v, jnp.asarray(q))
                  - losses.quantile_matching(x - dx, v, jnp.asarray(q))) / (2 * eps)
            assert float(grad[i]) == pytest.approx(float(fd), abs=1e-6)


def test_distance_matching_agrees_with_pymatgen_distances():
    from crystalgan_jax.core import cells

    structures = [_random_ternary(seed) for seed in range(3)]
    layout = encoding.Layout.fit("Pd", "Ni", structures)
    batch = encoding.encode_batch(structures, layout, dtype=np.float64)
    quantiles = (2.0, 2.2, 2.5, 2.9)
    levels = (np.arange(4) + 0.5) / 4
    with jax.enable_x64(True):
        batch = jax.tree_util.tree_map(lambda a: jnp.asarray(a), batch)
        shifts = jnp.asarray(cells.lattice_shifts((3, 3, 3)), jnp.float64)
        got = float(losses.distance_matching(batch, shifts, (((0,), (1, 2), quantiles),)))
    d = np.sort([min(n.nn_distance for n in s.get_neighbors(site, 8.0)
                     if n.specie.symbol in ("Pd", "Ni"))
                 for s in structures for site in s if site.specie.symbol == "H"])
    target = np.interp((np.arange(d.size) + 0.5) / d.size, levels, quantiles)
    assert got == pytest.approx(float(np.mean((d - target) ** 2)), rel=1e-6)


def test_hydrogen_fraction_and_composition_matching():
    structures = [_random_ternary(seed) for seed in range(3)]
    layout = encoding.Layout.fit("Pd", "Ni", structures)
    batch = encoding.encode_batch(structures, layout, dtype=np.float32)
    fractions = np.array([s.composition["H"] / s.composition.num_atoms for s in structures])
    got = np.asarray(jax.vmap(losses.hydrogen_fraction)(batch))
    np.testing.assert_allclose(got, fractions, rtol=1e-6)
    q = np.sort(fractions)
    # three structures against their own three quantiles: 0; shifted by 0.1: 0.01
    assert float(losses.composition_matching(batch, jnp.asarray(q))) == pytest.approx(0.0, abs=1e-10)
    assert float(losses.composition_matching(batch, jnp.asarray(q + 0.1))) == pytest.approx(
        0.01, rel=1e-4)


def _random_ternary(seed: int) -> Structure:
    """A small P1 Pd-Ni-H cell with no atoms closer than 1.2 A (distinct nearest distances)."""
    rng = np.random.default_rng(seed)
    while True:
        lattice = Lattice(np.diag(rng.uniform(3.6, 4.4, 3)) + rng.uniform(-0.3, 0.3, (3, 3)))
        species = ["H"] * int(rng.integers(1, 4)) + ["Pd"] * int(rng.integers(1, 3)) + ["Ni"]
        s = Structure(lattice, species, rng.uniform(0, 1, (len(species), 3)))
        if len(s) == 1 or s.distance_matrix[np.triu_indices(len(s), 1)].min() > 1.2:
            return s
