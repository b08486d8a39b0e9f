"""Site projection (symmetry-aware generation): samples put on their input binary's sites."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from crystalgan_jax import train
from crystalgan_jax.core import encoding
from crystalgan_jax.core.encoding import A_BLOCK, B_BLOCK
from tests.conftest import small_domain

LAYOUT = encoding.Layout("Pd", "Ni", 4, 4, 4)


def _encode(structure: Structure, fractional: bool = True) -> encoding.Crystal:
    c = encoding.encode(structure, LAYOUT, fractional=fractional)
    return jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float32), c)


def _template() -> Structure:
    """A Pd4H2 cell: four Pd sites of an fcc conventional cell, two octahedral H."""
    return Structure(Lattice.cubic(4.0), ["Pd"] * 4 + ["H"] * 2,
                     [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5],
                      [0.5, 0, 0], [0, 0.5, 0]])


def _generated(fracs_a, fracs_b, lattice=None) -> Structure:
    lattice = lattice or Lattice([[4.3, 0.1, 0.0], [0.2, 3.7, 0.0], [0.0, 0.3, 4.4]])
    return Structure(lattice, ["H"] + ["Pd"] * len(fracs_a) + ["Ni"] * len(fracs_b),
                     [[0.3, 0.3, 0.3]] + list(fracs_a) + list(fracs_b))


def _nearest_is_ni(template: Structure, generated: Structure) -> list[bool]:
    """Independent reference: pymatgen's minimum-image distances in the template's
    lattice from each template Pd site to every generated metal."""
    metals = [s for s in generated if s.specie.symbol != "H"]
    out = []
    for site in template:
        if site.specie.symbol != "Pd":
            continue
        d = [template.lattice.get_distance_and_image(site.frac_coords, m.frac_coords)[0]
             for m in metals]
        out.append(metals[int(np.argmin(d))].specie.symbol == "Ni")
    return out


def _sites(structure: Structure, symbol: str) -> np.ndarray:
    return np.array([s.frac_coords % 1.0 for s in structure if s.specie.symbol == symbol])


@pytest.mark.parametrize("fractional", [True, False])
def test_projection_puts_the_nearest_metal_on_each_template_site(fractional):
    template = _template()
    # Ni near the second and (through the periodic boundary) the fourth Pd site
    generated = _generated([[0.03, 0.98, 0.01], [0.47, 0.02, 0.52]],
                           [[0.52, 0.49, 0.97], [0.98, 0.51, 0.53]])
    assert _nearest_is_ni(template, generated) == [False, True, False, True]
    out = train.project_to_template(_encode(generated, fractional),
                                    _encode(template, fractional), A_BLOCK)
    assert out.fractional == fractional
    np.testing.assert_allclose(np.asarray(out.lattice), template.lattice.matrix, atol=1e-12)
    decoded = encoding.decode(jax.tree_util.tree_map(np.asarray, out), LAYOUT)
    assert decoded.composition.reduced_formula == "NiHPd"  # 2 of each
    np.testing.assert_allclose(_sites(decoded, "Ni"), [[0.5, 0.5, 0], [0, 0.5, 0.5]],
                               atol=1e-9)
    np.testing.assert_allclose(_sites(decoded, "Pd"), [[0, 0, 0], [0.5, 0, 0.5]], atol=1e-9)
    np.testing.assert_allclose(_sites(decoded, "H"), _sites(template, "H"), atol=1e-9)


def test_projection_agrees_with_pymatgen_on_random_cells():
    rng = np.random.default_rng(3)
    template = _template()
    for _ in range(20):
        n_a, n_b = rng.integers(0, 4, 2)
        generated = _generated(rng.random((n_a, 3)), rng.random((max(n_b, 1), 3)))
        out = train.project_to_template(_encode(generated), _encode(template), A_BLOCK)
        expected = np.array(_nearest_is_ni(template, generated))
        np.testing.assert_array_equal(np.asarray(out.masks[B_BLOCK][:4]) > 0.5, expected)
        np.testing.assert_array_equal(np.asarray(out.masks[A_BLOCK][:4]) > 0.5, ~expected)


def test_projection_from_the_b_side_and_without_generated_metal():
    template = Structure(Lattice.cubic(3.6), ["Ni", "Ni", "H"],
                         [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0, 0]])
    generated = _generated([[0.49, 0.52, 0.5]], [[0.01, 0.0, 0.99]])
    out = train.project_to_template(_encode(generated), _encode(template), B_BLOCK)
    decoded = encoding.decode(jax.tree_util.tree_map(np.asarray, out), LAYOUT)
    np.testing.assert_allclose(_sites(decoded, "Pd"), [[0.5, 0.5, 0.5]], atol=1e-9)
    np.testing.assert_allclose(_sites(decoded, "Ni"), [[0, 0, 0]], atol=1e-9)
    empty = _encode(Structure(Lattice.cubic(4.0), ["H"], [[0.1, 0.1, 0.1]]))
    kept = train.project_to_template(empty, _encode(template), B_BLOCK)
    decoded = encoding.decode(jax.tree_util.tree_map(np.asarray, kept), LAYOUT)
    assert decoded.composition.reduced_formula == "Ni2H"


def test_shuffled_control_keeps_the_count_and_draws_sites_uniformly():
    template, generated = _template(), _generated([[0.0, 0.0, 0.0]], [[0.5, 0.5, 0.0]])
    g, t = _encode(generated), _encode(template)
    keys = jax.random.split(jax.random.PRNGKey(0), 400)
    out = jax.vmap(lambda k: train.project_to_template(g, t, A_BLOCK, k))(keys)
    b = np.asarray(out.masks[B_BLOCK]) > 0.5
    a = np.asarray(out.masks[A_BLOCK]) > 0.5
    assert (b.sum(1) == 1).all() and (a.sum(1) == 3).all()  # the nearest rule's counts
    assert not (a & b).any()
    share = b.mean(0)  # each of the 4 sites about a quarter of the time
    np.testing.assert_allclose(share, 0.25, atol=0.08)


def test_projection_refuses_unequal_metal_blocks():
    layout = encoding.Layout("Pd", "Ni", 4, 4, 2)
    c = encoding.encode(_template(), layout, fractional=True)
    with pytest.raises(ValueError, match="equal A and B row counts"):
        train.project_to_template(c, c, A_BLOCK)


def test_input_pairs_are_the_pairs_sampled_inputs_uses():
    n_x, n_y, k = 5, 3, 4
    def batch(n, offset):  # crystal i recognisable by its lattice
        lattice = (offset + np.arange(n))[:, None, None] * np.eye(3)[None]
        blocks = tuple(np.zeros((n, 2, 3)) for _ in range(3))
        masks = tuple(np.ones((n, 2)) for _ in range(3))
        return encoding.Crystal(jnp.asarray(lattice), blocks, masks)
    x1, y1 = batch(n_x, 10.0), batch(n_y, 100.0)
    cfg = train.TrainConfig(method="crystalgan_plus", samples_per_input=k, input_noise=0.0)
    x_g, y_g = (jax.tree_util.tree_map(lambda a: a[np.arange(5) % n], c)
                for c, n in ((x1, n_x), (y1, n_y)))
    key = jax.random.PRNGKey(7)
    x_all, y_all = train.sampled_inputs(x1, y1, x_g, y_g, key, cfg)
    ix, iy = train.input_pairs(n_x, n_y, key, cfg)
    np.testing.assert_array_equal(np.asarray(x_all.lattice[:, 0, 0]), 10.0 + np.asarray(ix))
    np.testing.assert_array_equal(np.asarray(y_all.lattice[:, 0, 0]), 100.0 + np.asarray(iy))
    assert len(set(np.asarray(ix[5:]).tolist())) > 1  # later blocks drawn, not fixed


def test_generated_samples_sit_on_their_inputs_sites(tmp_path):
    """A tiny trained run with site projection: each final sample, its metals read as
    its input's metal, is that input binary (an independent StructureMatcher check),
    scaled to the data's volume for its composition."""
    from pymatgen.analysis.structure_matcher import StructureMatcher

    from crystalgan_jax.pipeline import job
    from crystalgan_jax.pipeline.prepare import prepare
    from crystalgan_jax.pipeline.spec import RunSpec

    ah, bh = small_domain(tmp_path, "PdH", 5), small_domain(tmp_path, "NiH", 5)
    cfg = train.TrainConfig(method="crystalgan_plus", epochs=2, batch_size=4, depth=1,
                            width=16, chunk_epochs=2, generator_steps=1, samples_per_input=2,
                            snapshots=1, snap_symprec=0.0, site_projection="nearest")
    spec = RunSpec(data_ah=str(ah), data_bh=str(bh), element_a="Pd", element_b="Ni",
                   output_dir=str(tmp_path / "run"), train=cfg, seed=0, evaluate=False)
    result = job.run(spec, log=lambda m: None)
    prepared = prepare(spec, lambda m: None)
    cfg, key = prepared.spec.train, jax.random.PRNGKey(2)
    assert len(cfg.block_volumes) == 3
    final = train.generate(result.state, prepared.nets, cfg, prepared.x, prepared.y, key)["final"]
    ix, iy = train.input_pairs(5, 5, key, cfg)
    matcher = StructureMatcher(scale=True, attempt_supercell=False)
    layout = prepared.layout
    for direction, index, inputs, metal in (("AHB", ix, prepared.ah, "Pd"),
                                            ("BHA", iy, prepared.bh, "Ni")):
        crystals = jax.tree_util.tree_map(np.asarray, final[direction])
        for i in range(crystals.lattice.shape[0]):
            one = encoding.index(crystals, i)
            sample = encoding.decode(one, layout)
            template = inputs.structures[int(index[i])]
            assert sample.num_sites == template.num_sites
            as_binary = Structure(sample.lattice,
                                  [s.specie.symbol if s.specie.symbol == "H" else metal
                                   for s in sample], sample.frac_coords)
            assert matcher.fit(as_binary, template), (direction, i)
            counts = np.array([(m > 0.5).sum() for m in one.masks])
            target = counts @ np.asarray(cfg.block_volumes)
            assert sample.volume == pytest.approx(target, rel=1e-6)
        assert crystals.lattice.shape[0] == 10
    # nearest_and_raw: the generator's own samples, then these projections
    both = train.generate(result.state, prepared.nets,
                          dataclasses.replace(cfg, site_projection="nearest_and_raw"),
                          prepared.x, prepared.y, key)["final"]
    raw = train.generate(result.state, prepared.nets,
                         dataclasses.replace(cfg, site_projection="off"),
                         prepared.x, prepared.y, key)["final"]
    for direction in ("AHB", "BHA"):
        for part, expected in ((slice(0, 10), raw), (slice(10, 20), final)):
            for got, want in zip(jax.tree_util.tree_leaves(both[direction]),
                                 jax.tree_util.tree_leaves(expected[direction])):
                np.testing.assert_allclose(np.asarray(got)[part], np.asarray(want),
                                           rtol=1e-5, atol=1e-5)


def test_config_refuses_site_projection_without_stage3_or_an_unknown_mode():
    with pytest.raises(ValueError, match="stage 3's samples"):
        train.TrainConfig(method="gan", site_projection="nearest")
    with pytest.raises(ValueError, match="site_projection must be one of"):
        train.TrainConfig(method="crystalgan_plus", site_projection="snap")
    assert train.TrainConfig(method="crystalgan", site_projection="shuffled").site_projection
