"""crystalgan_plus pieces: learned windows, cell terms, sampling, snapping and novelty."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from crystalgan_jax.materials import candidates, substitution
from crystalgan_jax.core import cells, encoding, geometry
from crystalgan_jax import train
from tests.conftest import REPO, small_domain


def _rocksalt_pdh(a: float = 4.09) -> Structure:
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(a), ["Pd", "H"],
                                     [[0, 0, 0], [0.5, 0.5, 0.5]]).get_primitive_structure()


def _crystal(structure: Structure, element_b: str = "Ni") -> encoding.Crystal:
    layout = encoding.Layout.fit("Pd", element_b, [structure])
    c = encoding.encode(structure, layout)
    return jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), c)


def _p1() -> Structure:
    return Structure(Lattice([[4.0, 0.2, 0.0], [0.3, 3.8, 0.1], [0.0, 0.4, 5.0]]),
                     ["H", "H", "Pd", "Ni"],
                     [[0.1, 0.2, 0.3], [0.6, 0.45, 0.9], [0.02, 0.01, 0.03], [0.47, 0.55, 0.52]])


def test_cross_nearest_matches_pymatgen():
    s = _p1()
    layout = encoding.Layout.fit("Pd", "Ni", [s])
    c = encoding.encode(s, layout)
    shifts = jnp.asarray(cells.lattice_shifts(cells.image_range(s.lattice.matrix, 6.0)),
                         jnp.float64)
    with jax.enable_x64(True):
        c = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), c)
        got, valid = geometry.cross_nearest(c, shifts, (encoding.H_BLOCK,),
                                            (encoding.A_BLOCK, encoding.B_BLOCK))
    h_sites = [i for i, site in enumerate(s) if site.specie.symbol == "H"]
    for row, i in enumerate(h_sites):
        ref = min(n.nn_distance for n in s.get_neighbors(s[i], 6.0)
                  if n.specie.symbol in ("Pd", "Ni"))
        assert abs(float(got[row]) - ref) < 1e-6
    assert bool(valid[0]) and bool(valid[1])


def test_window_penalty_zero_inside_and_gradient_matches_finite_differences():
    s = _rocksalt_pdh()  # Pd-H 2.045 A, Pd-Pd and H-H 2.892 A
    shifts = jnp.asarray(cells.lattice_shifts((2, 2, 2)), jnp.float64)
    with jax.enable_x64(True):
        c = _crystal(s)
        inside = (((1,), (0,), 1.9, 2.2), ((1, 2), (1, 2), 2.5, 3.0))
        assert float(geometry.window_penalty(c, shifts, inside)) == 0.0
        tight = (((1,), (0,), 2.2, 2.4),)  # Pd-H 2.045 is 0.155 below lo
        value = float(geometry.window_penalty(c, shifts, tight))
        assert value == pytest.approx((2.2 - 2.0450) ** 2, abs=2e-4)
        c = _crystal(_p1())  # no ties between nearest neighbours: differentiable there
        tight = (((0,), (1, 2), 2.4, 2.6), ((1, 2), (1, 2), 1.0, 2.0))

        def f(lattice):
            return geometry.window_penalty(c.replace(lattice=lattice), shifts, tight)

        grad = jax.grad(f)(c.lattice)
        eps = 1e-6
        for i, j in ((0, 0), (1, 2), (2, 1)):
            dl = jnp.zeros((3, 3)).at[i, j].set(eps)
            fd = (f(c.lattice + dl) - f(c.lattice - dl)) / (2 * eps)
            assert abs(float(grad[i, j]) - float(fd)) < 1e-5


def test_plane_spacing_terms_agree_with_numpy_and_image_range():
    thin = np.array([[4.0, 0.0, 0.0], [3.9, 0.4, 0.0], [0.0, 0.0, 5.0]])
    cubic = 4.0 * np.eye(3)
    with jax.enable_x64(True):
        for lattice in (thin, cubic):
            np.testing.assert_allclose(np.asarray(geometry.plane_spacings(jnp.asarray(lattice))),
                                       cells.plane_spacings(lattice), rtol=1e-10)
            np.testing.assert_array_equal(np.asarray(geometry.image_range(jnp.asarray(lattice))),
                                          cells.image_range(lattice))
        shifts = jnp.asarray(cells.lattice_shifts((1, 1, 1)))
        assert bool(geometry.outside_image_range(jnp.asarray(thin), shifts))
        assert not bool(geometry.outside_image_range(jnp.asarray(cubic), shifts))
        h = cells.plane_spacings(thin)
        assert float(geometry.spacing_penalty(jnp.asarray(thin), 1.0)) == pytest.approx(
            float(np.sum(np.maximum(1.0 - h, 0.0) ** 2)))
        assert h.min() < 1.0
        assert float(geometry.spacing_penalty(jnp.asarray(cubic), 1.0)) == 0.0


def test_learn_windows_are_percentiles_of_training_distances(reference_domains):
    pdh, nih = reference_domains
    windows = candidates.learn_windows(pdh.structures, nih.structures, "Pd", "Ni",
                                      (1.0, 99.0), 1.8, 3.0)
    by_key = {(w[0], w[1]): (w[2], w[3]) for w in windows}
    # Pd -> nearest H, independently from pymatgen neighbour lists
    d = []
    for s in pdh.structures:
        for i, site in enumerate(s):
            if site.specie.symbol == "Pd":
                d.append(min(n.nn_distance for n in s.get_neighbors(site, 5.0)
                             if n.specie.symbol == "H"))
    lo, hi = np.percentile(d, (1, 99))
    assert by_key[((1,), (0,))] == pytest.approx((lo, hi), abs=1e-3)
    metal_lo, metal_hi = by_key[((1, 2), (1, 2))]
    assert 1.8 <= metal_lo < metal_hi <= 3.0  # intersected with the paper's [d1, d2]


def test_learned_distance_quantiles_are_the_training_distributions(reference_domains):
    pdh, nih = reference_domains
    profiles = candidates.learn_distance_quantiles(pdh.structures, nih.structures, "Pd", "Ni",
                                                   8, 1.8, 3.0)
    by_key = {(p[0], p[1]): p[2] for p in profiles}
    assert set(by_key) == {((1,), (0,)), ((2,), (0,)), ((0,), (1, 2)), ((1, 2), (1, 2)),
                           ((0,), (0,))}
    # Ni -> nearest H, independently from pymatgen neighbour lists
    d = [min(n.nn_distance for n in s.get_neighbors(site, 5.0) if n.specie.symbol == "H")
         for s in nih.structures for site in s if site.specie.symbol == "Ni"]
    expected = np.percentile(d, (np.arange(8) + 0.5) / 8 * 100)
    np.testing.assert_allclose(by_key[((2,), (0,))], expected, atol=1e-3)
    assert all(np.all(np.diff(q) >= 0) for q in by_key.values())


def test_plus_with_matching_terms_learns_and_logs_them(tmp_path):
    from crystalgan_jax.pipeline.job import run
    from crystalgan_jax.pipeline.spec import RunSpec

    ah, bh = small_domain(tmp_path, "PdH", 5), small_domain(tmp_path, "NiH", 5)
    cfg = train.TrainConfig(method="crystalgan_plus", epochs=2, batch_size=5, depth=1,
                            width=16, chunk_epochs=1, generator_steps=1, distance_weight=1.0,
                            composition_weight=1.0, distance_levels=4, rescale_volume=True,
                            composition_sampling=True)
    result = run(RunSpec(data_ah=str(ah), data_bh=str(bh), element_a="Pd", element_b="Ni",
                         output_dir=str(tmp_path / "run"), train=cfg, checkpoint_every=1),
                 log=lambda m: None)
    learned = result.spec.train
    assert learned.distance_quantiles and all(len(q) == 4 for _, _, q in learned.distance_quantiles)
    assert len(learned.h_fraction_quantiles) == 4 and 0 < learned.h_fraction_quantiles[0] < 1
    config = json.loads((tmp_path / "run" / "config.json").read_text())["spec"]["train"]
    assert [list(map(list, p[:2])) + [list(p[2])] for p in learned.distance_quantiles] == \
        config["distance_quantiles"]
    rows = [json.loads(line) for line in
            (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    stage3 = [r for r in rows if r["stage"] == "stage3"]
    assert stage3 and all(np.isfinite(r["L_dist"]) and np.isfinite(r["L_comp"]) for r in stage3)
    # every generated ternary has the volume its composition has in the training data
    v = dict(zip(("H", "Pd", "Ni"), learned.block_volumes))
    assert all(x > 0 for x in learned.block_volumes)
    finals = sorted((tmp_path / "run" / "structures" / "final").rglob("*.vasp"))
    assert finals
    for path in finals:
        s = Structure.from_file(path)
        target = sum(v[e.symbol] * n for e, n in s.composition.items())
        assert s.volume == pytest.approx(target, rel=0.02), path
    # composition sampling: every final structure has one of the compositions learned
    # from the training cells' metal sites split between Pd and Ni
    from crystalgan_jax.materials import io

    structures = [io.read_structure_files(str(d))[0] for d in (ah, bh)]
    assert learned.target_compositions == candidates.learn_compositions(*structures, "Pd", "Ni")
    counts = {(int(s.composition["H"]), int(s.composition["Pd"]), int(s.composition["Ni"]))
              for s in map(Structure.from_file, finals)}
    assert counts and counts <= set(learned.target_compositions)
    # off by default: the paper's method learns none of it
    assert train.TrainConfig().distance_weight == 0.0
    assert train.TrainConfig().composition_weight == 0.0


def test_block_volumes_and_scaling_to_the_datas_volume():
    pd = _rocksalt_pdh(4.0)          # 1 Pd + 1 H in 16 A^3
    ni = Structure(Lattice.cubic(3.0), ["Ni", "H", "H"], [[0, 0, 0], [0.5, 0.5, 0], [0, 0.5, 0.5]])
    # v_H = 2, v_Pd = 14, v_Ni = 23 solve 16 = v_H + v_Pd, 36 = 4 v_H + 2 v_Pd (a second
    # Pd-H cell) and 27 = 2 v_H + v_Ni exactly
    pd2 = Structure(Lattice.cubic(36.0 ** (1 / 3)), ["Pd", "Pd", "H", "H", "H", "H"],
                    [[0, 0, 0], [0.5, 0.5, 0.5], [0.25, 0, 0], [0, 0.25, 0], [0, 0, 0.25],
                     [0.75, 0.75, 0.75]])
    v_h, v_pd, v_ni = candidates.learn_block_volumes([pd, pd2], [ni], "Pd", "Ni")
    assert (v_h, v_pd, v_ni) == pytest.approx((2.0, 14.0, 23.0), abs=1e-3)
    s = _p1()  # 2 H, 1 Pd, 1 Ni
    layout = encoding.Layout.fit("Pd", "Ni", [s])
    with jax.enable_x64(True):
        c = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), encoding.encode(s, layout))
        scaled = geometry.scale_to_volume(c, (2.0, 14.0, 23.0))
        assert abs(float(jnp.linalg.det(scaled.lattice))) == pytest.approx(2 * 2 + 14 + 23)
        # isotropic: every distance times the same factor
        f = (41.0 / s.volume) ** (1 / 3)
        back = encoding.decode(jax.tree_util.tree_map(np.asarray, scaled), layout)
        np.testing.assert_allclose(back.distance_matrix, f * s.distance_matrix, rtol=1e-6)
        empty = c.replace(masks=tuple(jnp.zeros_like(m) for m in c.masks))
        np.testing.assert_allclose(geometry.scale_to_volume(empty, (2.0, 14.0, 23.0)).lattice,
                                   c.lattice)


def test_snap_to_symmetry_restores_space_group():
    s = _rocksalt_pdh()
    rng = np.random.default_rng(0)
    noisy = s.copy()
    for i in range(len(noisy)):
        noisy.translate_sites([i], rng.normal(scale=0.01, size=3), frac_coords=False)
    snapped, number = candidates.snap_to_symmetry(noisy, 0.1)
    assert number == 225
    assert snapped.composition.reduced_composition == s.composition.reduced_composition
    assert abs(snapped.volume - s.volume) / s.volume < 0.02
    p1 = Structure(Lattice([[4.0, 0.3, 0.1], [0.2, 3.7, 0.4], [0.5, 0.1, 5.1]]), ["Pd", "H", "H"],
                   [[0.0, 0.0, 0.0], [0.31, 0.17, 0.42], [0.77, 0.58, 0.13]])
    same, number = candidates.snap_to_symmetry(p1, 0.01)
    assert number == 1 and same is p1


def test_novelty_against_substitution_and_training():
    pd = Structure.from_spacegroup("Fm-3m", Lattice.cubic(4.0), ["Pd"], [[0, 0, 0]])
    pd.append("H", [0.5, 0.5, 0.5])  # conventional cell: 4 Pd, 1 H
    refs = candidates.reference_structures([pd], [], "Pd", "Ni")
    assert len(refs) == 3 + 1  # 1, 2, 3 of 4 Pd -> Ni, and the training structure
    sub = substitution.substitute(pd, "Pd", "Ni", 2)
    moved = sub.copy()
    moved.translate_sites(list(range(len(moved))), [0.05, 0.0, 0.0])  # the same crystal
    other = sub.copy()
    other.replace(len(other) - 1, "H", [0.25, 0.25, 0.25])  # H in another site
    flags = candidates.novel_flags([moved, other, pd], refs)
    assert flags == [False, True, False]


def test_config_defaults_keep_the_paper_method():
    paper = train.TrainConfig()
    for name, value in train.PLUS_OFF.items():
        assert getattr(paper, name) == value
    assert paper.weights.l7 == 0.0
    plus = train.TrainConfig(method="crystalgan_plus")
    for name, value in train.PLUS_DEFAULTS.items():
        assert getattr(plus, name) == value
    assert plus.weights.l7 == 1.0
    off = train.TrainConfig(method="crystalgan_plus", plus_clash=False, input_noise=0.0)
    assert off.weights.l7 == 0.0 and off.input_noise == 0.0 and off.window_weight == 1.0
    with pytest.raises(ValueError, match="samples_per_input"):
        train.TrainConfig(method="crystalgan_plus", samples_per_input=0)


def test_perturb_and_sampling_shapes():
    s = _rocksalt_pdh()
    c = jax.tree_util.tree_map(lambda a: a[None], _crystal(s))
    noisy = train.perturb(c, jax.random.PRNGKey(0), 0.3)
    assert noisy.masks[0] is c.masks[0]
    delta = np.asarray(noisy.positions[0] - c.positions[0])
    assert 0 < np.abs(delta).max() < 3.0
    cfg = train.TrainConfig(method="crystalgan_plus", samples_per_input=3)
    x_all, y_all = train.sampled_inputs(c, c, c, c, jax.random.PRNGKey(1), cfg)
    assert x_all.lattice.shape == (3, 3, 3) and y_all.positions[0].shape[0] == 3
    assert not np.allclose(np.asarray(x_all.lattice[0]), np.asarray(x_all.lattice[1]))


def test_snapshots_hold_the_stage3_generators_of_their_epoch(tmp_path):
    from crystalgan_jax.train import checkpoints
    from crystalgan_jax.pipeline import job
    from crystalgan_jax.pipeline.prepare import prepare
    from crystalgan_jax.pipeline.spec import RunSpec

    ah, bh = small_domain(tmp_path, "PdH", 5), small_domain(tmp_path, "NiH", 5)
    cfg = train.TrainConfig(method="crystalgan_plus", epochs=4, batch_size=4, depth=1,
                               width=16, chunk_epochs=2, generator_steps=1,
                               samples_per_input=3, snapshots=2, snap_symprec=0.0)
    spec = RunSpec(data_ah=str(ah), data_bh=str(bh), element_a="Pd", element_b="Ni",
                          output_dir=str(tmp_path / "run"), train=cfg, checkpoint_every=2,
                          seed=0, evaluate=False)
    result = job.run(spec, log=lambda m: None)
    assert list(train.snapshot_epochs(cfg)) == [2]
    # global epoch 6 = stage-3 epoch 2: the checkpoint of that epoch holds the snapshot
    ckpt = checkpoints.Checkpoints(tmp_path / "run" / "checkpoints")
    try:
        at_6 = ckpt.read_as_dicts(6)["params"]
    finally:
        ckpt.close()
    for name in ("G_AHB2", "G_BHA2"):
        kept = result.state.snapshots[name]
        for a, b, final in zip(jax.tree_util.tree_leaves(kept),
                               jax.tree_util.tree_leaves(at_6[name]),
                               jax.tree_util.tree_leaves(result.state.params[name])):
            assert a.shape == (1,) + b.shape
            np.testing.assert_allclose(np.asarray(a[0]), b, rtol=1e-6, atol=1e-7)
            assert not np.allclose(np.asarray(a[0]), np.asarray(final))  # trained on
    # sample block 0 runs the final generators, block 1 the snapshot, block 2 the final
    prepared = prepare(spec, lambda m: None)
    spec, x, y, nets = prepared.spec, prepared.x, prepared.y, prepared.nets
    cfg, key = spec.train, jax.random.PRNGKey(5)
    out = train.generate(result.state, nets, cfg, x, y, key)["final"]["AHB"]

    @jax.jit  # one program (op by op, these calls compiled for ~10 s)
    def expected_lattices(state, x, y):
        p = state.params
        x1, y1 = train.stage1_outputs(p, nets, x, y)
        x_g, y_g = train.feature_transfer(p, nets, x, y)
        inputs, _ = train.sampled_inputs(x1, y1, x_g, y_g, key, cfg)
        n = x_g.lattice.shape[0]
        snapshot = jax.tree_util.tree_map(lambda a: a[0], state.snapshots["G_AHB2"])
        return [train.apply_generator(
                    nets.stage3_generator, params,
                    jax.tree_util.tree_map(lambda a: a[block * n:(block + 1) * n], inputs)
                )[0].lattice
                for block, params in enumerate((p["G_AHB2"], snapshot, p["G_AHB2"]))]

    expected = expected_lattices(result.state, x, y)
    n = out.lattice.shape[0] // 3
    for block, lattices in enumerate(expected):
        np.testing.assert_allclose(np.asarray(out.lattice[block * n:(block + 1) * n]),
                                   np.asarray(lattices), rtol=1e-5, atol=1e-5)


def test_ablation_tiny(tmp_path):
    ah, bh = small_domain(tmp_path, "PdH", 5), small_domain(tmp_path, "NiH", 5)
    out = tmp_path / "ablation"
    cmd = [sys.executable, str(REPO / "experiments" / "ablation.py"), "--flagfile=pdni_paper.flags",
           f"--data_ah={ah}", f"--data_bh={bh}", f"--output_dir={out}", "--seeds=0",
           "--epochs=2", "--chunk_epochs=2", "--depth=1", "--width=16", "--batch_size=5",
           "--generator_steps=1", "--samples_per_input=2",
           "--variants=crystalgan,plus,-windows,-sampling,-snapshots,-snap"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = json.loads((out / "ablation.json").read_text())["rows"]
    assert list(table) == ["crystalgan", "plus", "-windows", "-sampling", "-snapshots",
                           "-snap", "substitution"]
    n = 5  # max(n_x, n_y) inputs per direction
    assert table["crystalgan"]["runs"][0]["counts"]["generated"] <= 2 * n
    assert table["plus"]["runs"][0]["counts"]["generated"] > 2 * n  # two samples per input
    assert table["-sampling"]["runs"][0]["counts"]["generated"] <= 2 * n
    assert table["-snapshots"]["runs"][0]["counts"]["generated"] > 2 * n
    for row in table.values():
        c = row["runs"][0]["counts"]
        assert c["good_strict"] >= c["unique"] >= c["novel"] >= 0
    plus_dir = table["plus"]["runs"][0]["output_dir"]
    config = json.loads((Path(plus_dir) / "config.json").read_text())["spec"]["train"]
    assert config["method"] == "crystalgan_plus" and len(config["pair_windows"]) >= 3
    last = json.loads((Path(plus_dir) / "metrics.jsonl").read_text().splitlines()[-1])
    assert {"L_win", "L_cell", "outside_images", "L_clash"} <= set(last)
    paper = json.loads((Path(table["crystalgan"]["runs"][0]["output_dir"]) / "config.json")
                       .read_text())["spec"]["train"]
    assert paper["method"] == "crystalgan" and paper["window_weight"] == 0.0
    assert "novel" in json.loads((Path(plus_dir) / "report.json").read_text())["counts"]


def test_occupy_takes_the_likeliest_rows_of_each_block():
    probs = (jnp.array([0.9, 0.1, 0.6, 0.4]), jnp.array([0.2, 0.7, 0.1]),
             jnp.array([0.3, 0.8, 0.5]))
    c = encoding.Crystal(jnp.eye(3), tuple(jnp.zeros((len(m), 3)) for m in probs), probs)
    out = train.occupy(c, jnp.array([2, 1, 3]))
    assert [np.asarray(m).tolist() for m in out.masks] == [[1, 0, 1, 0], [0, 1, 0], [1, 1, 1]]
    # the generator's own occupancies (rows above 0.5) would give one B atom, not three
    assert [int((np.asarray(m) > 0.5).sum()) for m in probs] == [2, 1, 1]
    assert out.positions[0] is c.positions[0]  # positions untouched


def test_sample_compositions_gives_each_structure_a_target_and_covers_them():
    n, rows = 400, (6, 4, 4)
    key = jax.random.PRNGKey(0)
    probs = tuple(jax.random.uniform(jax.random.fold_in(key, b), (n, r))
                  for b, r in enumerate(rows))
    c = encoding.Crystal(jnp.tile(jnp.eye(3), (n, 1, 1)),
                         tuple(jnp.zeros((n, r, 3)) for r in rows), probs)
    targets = jnp.array([[1, 1, 1], [4, 1, 3], [6, 2, 2]], jnp.int32)
    out = train.sample_compositions(c, targets, jax.random.PRNGKey(1))
    counts = np.stack([np.asarray(m).sum(axis=1) for m in out.masks], axis=1).astype(int)
    seen = {tuple(row) for row in counts}
    assert seen == {(1, 1, 1), (4, 1, 3), (6, 2, 2)}
    share = [np.mean((counts == t).all(axis=1)) for t in np.asarray(targets)]
    assert min(share) > 0.25  # uniform: a third each, within sampling noise
    # each occupied row is one of the likeliest of its block
    for b in range(3):
        p, m = np.asarray(probs[b]), np.asarray(out.masks[b])
        for i in range(20):
            if 0 < m[i].sum() < rows[b]:
                assert p[i][m[i] == 1].min() >= p[i][m[i] == 0].max()


def test_learn_compositions_splits_each_training_cells_metals():
    pd = _rocksalt_pdh(4.0)  # 1 Pd, 1 H: no split keeps both metals
    pd2 = Structure(Lattice.cubic(4.0), ["Pd"] * 3 + ["H"] * 2,
                    [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0.5, 0.5, 0.5], [0, 0, 0.5]])
    ni = Structure(Lattice.cubic(3.0), ["Ni", "Ni", "H"], [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0, 0]])
    got = candidates.learn_compositions([pd, pd2], [ni], "Pd", "Ni")
    assert got == ((1, 1, 1), (2, 1, 2), (2, 2, 1))
    cfg = train.TrainConfig(method="crystalgan_plus", composition_sampling=True,
                            target_compositions=[[2, 1, 2]])
    assert cfg.target_compositions == ((2, 1, 2),)
    with pytest.raises(ValueError, match="target_compositions"):
        train.TrainConfig(target_compositions=((2, 0, 0),))
    assert train.TrainConfig(method="crystalgan_plus").composition_sampling is False
