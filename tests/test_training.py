"""Training: a small two-stage run end to end, losses, gradients, resume, compilation."""

import dataclasses
import json
import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase.io import read as ase_read

from crystalgan_jax.core import encoding, losses, models
from crystalgan_jax.materials import io
from crystalgan_jax import train
from crystalgan_jax.pipeline.errors import ResumeMismatchError
from crystalgan_jax.pipeline.spec import RunSpec
from crystalgan_jax.pipeline.job import run
from tests.conftest import small_domain

SMALL = train.TrainConfig(epochs=4, batch_size=4, depth=2, width=32, chunk_epochs=2,
                             generator_steps=2)


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("data")
    return small_domain(tmp, "PdH"), small_domain(tmp, "NiH")


def _spec(small_data, out, **kw):
    ah, bh = small_data
    return RunSpec(data_ah=str(ah), data_bh=str(bh), element_a="Pd", element_b="Ni",
                   output_dir=str(out), train=kw.pop("train", SMALL), checkpoint_every=2,
                   seed=3, **kw)


@pytest.fixture(scope="module")
def full_run(small_data, tmp_path_factory):
    traces = []
    out = tmp_path_factory.mktemp("run")
    result = run(_spec(small_data, out), log=lambda m: None, on_trace=traces.append)
    return result, traces


def test_run_writes_structures_that_pymatgen_and_ase_read(full_run):
    result, _ = full_run
    out = result.output_dir
    allowed = {("stage1", "AHB"): {"Pd", "H"}, ("stage1", "BHA"): {"Ni", "H"},
               ("final", "AHB"): {"Pd", "Ni", "H"}, ("final", "BHA"): {"Pd", "Ni", "H"}}
    for (kind, direction), symbols in allowed.items():
        paths = sorted((out / "structures" / kind / direction).glob("*.vasp"))
        assert paths, (kind, direction)
        for path in paths:
            s = io.read_structure(path)
            assert {e.symbol for e in s.composition} <= symbols
            cif = io.read_structure(path.with_suffix(".cif"))
            assert cif.composition == s.composition
            atoms = ase_read(str(path))
            assert sorted(atoms.get_chemical_symbols()) == sorted(x.specie.symbol for x in s)
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2 * SMALL.epochs
    assert {json.loads(l)["stage"] for l in lines} == {"stage1", "stage3"}
    report = json.loads((out / "report.json").read_text())
    assert set(report["counts"]) >= {"generated", "ternary", "good_paper", "good_strict", "unique"}
    assert (out / "losses.png").stat().st_size > 0
    assert (out / "checkpoints" / str(SMALL.epochs)).is_dir()  # kept for good


def test_the_report_inputs_are_prepared_beside_training_and_change_nothing(
        small_data, tmp_path, monkeypatch):
    from crystalgan_jax.pipeline import outputs, prepare

    threads = []
    report_inputs = outputs.report_inputs

    def recording(*args):
        threads.append(threading.current_thread())
        return report_inputs(*args)

    monkeypatch.setattr(outputs, "report_inputs", recording)
    spec = _spec(small_data, tmp_path / "run",
                 train=dataclasses.replace(SMALL, epochs=1, chunk_epochs=1))
    result = run(spec, log=lambda m: None)
    assert len(threads) == 1 and threads[0] is not threading.main_thread()
    # the same state's outputs again, the report's inputs computed where they are used
    again = tmp_path / "again"
    again.mkdir()
    prepared = prepare.prepare(spec)
    outputs.write_outputs(prepared.spec, result.state, prepared, again, result.metrics,
                          lambda m: None)
    assert len(threads) == 2 and threads[1] is threading.main_thread()
    assert (json.loads((again / "report.json").read_text())
            == json.loads((result.output_dir / "report.json").read_text()))


def test_train_step_compiles_once_per_stage(full_run):
    # 4 epochs in chunks of 2 per stage: two calls per stage, one trace per stage
    _, traces = full_run
    assert traces == ["stage1", "stage3"]


def test_resume_after_interrupt_equals_uninterrupted_run(full_run, small_data, tmp_path,
                                                       monkeypatch):
    result, _ = full_run
    calls = []
    make_runner = train.make_chunk_runner

    def interrupting(*args, **kwargs):
        run_chunk = make_runner(*args, **kwargs)

        def wrapped(*a):
            calls.append(1)
            out = run_chunk(*a)
            if len(calls) == 3:  # stage 3's first chunk: Ctrl-C while JAX computes
                raise KeyboardInterrupt
            return out
        return wrapped

    monkeypatch.setattr(train, "make_chunk_runner", interrupting)
    messages = []
    with pytest.raises(KeyboardInterrupt):
        run(_spec(small_data, tmp_path), log=messages.append)
    monkeypatch.setattr(train, "make_chunk_runner", make_runner)
    end_of_stage1 = SMALL.epochs
    assert f"interrupted: state of epoch {end_of_stage1} saved" in messages[-1]
    assert (tmp_path / "checkpoints" / str(end_of_stage1)).is_dir()
    rows = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["global_epoch"] for r in rows] == list(range(1, end_of_stage1 + 1))

    resumed = run(_spec(small_data, tmp_path, resume=True), log=messages.append)
    assert any(f"resumed from epoch {end_of_stage1}" in m for m in messages)
    for a, b in zip(jax.tree_util.tree_leaves(result.state.params),
                    jax.tree_util.tree_leaves(resumed.state.params)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert int(resumed.state.epoch) == int(result.state.epoch) == 2 * SMALL.epochs
    # metrics of a resumed run cover every epoch exactly once
    rows = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["global_epoch"] for r in rows] == list(range(1, 2 * SMALL.epochs + 1))


def test_networks_compute_what_a_flax_dense_stack_computes():
    """models.mlp against flax.linen (an independent reference): the same parameter tree
    (so checkpoints of the Flax-module version restore) and the same outputs, batched."""
    import flax.linen as nn

    class Stack(nn.Module):
        @nn.compact
        def __call__(self, x):
            for _ in range(3):
                x = nn.relu(nn.Dense(16)(x))
            return nn.Dense(5)(x)

    x = jax.random.normal(jax.random.PRNGKey(1), (2, 7, 11), jnp.float32)
    params = {"MLP_0": Stack().init(jax.random.PRNGKey(0), x)["params"]}
    shapes = models.mlp_shapes(11, 5, depth=3, width=16)
    assert (jax.tree_util.tree_structure(params) == jax.tree_util.tree_structure(shapes))
    assert all(a.shape == b.shape for a, b in zip(jax.tree_util.tree_leaves(params),
                                                   jax.tree_util.tree_leaves(shapes)))
    np.testing.assert_allclose(models.mlp(params, x),
                               Stack().apply({"params": params["MLP_0"]}, x),
                               rtol=1e-6, atol=1e-6)
    # a generator maps a batch as it maps each crystal
    gen = models.Generator(rows=(2, 1, 1), length_scale=3.0, depth=3, width=16)
    gp = train.draw_parameters(jax.random.PRNGKey(2), gen.param_shapes())
    crystals = encoding.Crystal(
        jax.random.normal(jax.random.PRNGKey(3), (4, 3, 3)),
        tuple(jax.random.normal(jax.random.PRNGKey(4 + i), (4, n, 3)) for i, n in enumerate((2, 1, 1))),
        tuple(jnp.ones((4, n)) for n in (2, 1, 1)))
    batched = gen(gp, crystals)[0].lattice
    single = jnp.stack([gen(gp, encoding.index(crystals, i))[0].lattice for i in range(4)])
    np.testing.assert_allclose(batched, single, rtol=1e-5, atol=1e-6)


def test_initial_state_is_the_same_eager_jitted_and_vmapped(small_data):
    # a concrete key cuts the kernels on the host; under jit or vmap from the traced draw
    layout, x, y = _encoded(small_data)
    cfg = dataclasses.replace(SMALL, method="crystalgan_plus", epochs=4, snapshots=3)
    lat = np.concatenate([x.lattice, y.lattice])
    nets = train.Networks.build(layout.rows, train.length_scale(lat), cfg)
    key = jax.random.PRNGKey(11)
    eager = train.init_state(key, nets, cfg)
    jitted = jax.jit(train.init_state, static_argnames=("nets", "cfg"))(key, nets, cfg)
    vmapped = jax.vmap(lambda k: train.init_state(k, nets, cfg))(jnp.stack([key, key]))
    assert jax.tree_util.tree_structure(eager) == jax.tree_util.tree_structure(jitted)
    assert eager.snapshots and eager.opt_state["stage3/G"]
    for a, b, c in zip(jax.tree_util.tree_leaves(eager), jax.tree_util.tree_leaves(jitted),
                       jax.tree_util.tree_leaves(vmapped)):
        assert a.shape == b.shape == c.shape[1:] and a.dtype == b.dtype
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=0)
        np.testing.assert_allclose(a, c[1], rtol=1e-6, atol=0)
    kernel = eager.params["G_AHB1"]["MLP_0"]["Dense_1"]["kernel"]  # [width, width], LeCun
    assert abs(float(jnp.std(kernel)) * np.sqrt(kernel.shape[0]) - 1.0) < 0.3


def test_feature_transfer_mixes_the_blocks(small_data):
    layout, x, y = _encoded(small_data)
    x = jax.tree_util.tree_map(lambda a: a[:4], x)  # 4 A-H against 6 B-H: pairs wrap
    lat = np.concatenate([x.lattice, y.lattice])
    nets = train.Networks.build(layout.rows, train.length_scale(lat), SMALL)
    state = train.init_state(jax.random.PRNGKey(4), nets, SMALL)
    xg, yg = train.feature_transfer(state.params, nets, x, y)
    x1, y1 = (train.harden(c) for c in train.stage1_outputs(state.params, nets, x, y))
    assert xg.lattice.shape[0] == yg.lattice.shape[0] == 6
    for i in range(6):
        ix, iy = i % 4, i
        # x_AHB_g: lattice, H and A of x_AHB1; B of y_BHA1. y_BHA_g: A of x_AHB1, rest y_BHA1
        np.testing.assert_array_equal(xg.lattice[i], x1.lattice[ix])
        np.testing.assert_array_equal(xg.positions[0][i], x1.positions[0][ix])
        np.testing.assert_array_equal(xg.positions[1][i], x1.positions[1][ix])
        np.testing.assert_array_equal(xg.positions[2][i], y1.positions[2][iy])
        np.testing.assert_array_equal(yg.lattice[i], y1.lattice[iy])
        np.testing.assert_array_equal(yg.positions[1][i], x1.positions[1][ix])
        np.testing.assert_array_equal(yg.masks[2][i], y1.masks[2][iy])
    for masks in (xg.masks, yg.masks):
        assert set(np.unique(np.concatenate([np.asarray(m).ravel() for m in masks]))) <= {0.0, 1.0}


def test_existing_run_is_not_overwritten_without_flag(full_run, small_data):
    result, _ = full_run
    with pytest.raises(FileExistsError, match="--resume"):
        run(_spec(small_data, result.output_dir), log=lambda m: None)
    other = dataclasses.replace(SMALL, width=16)
    with pytest.raises(ResumeMismatchError, match=r"config.json: cannot resume.*spec.train"):
        run(_spec(small_data, result.output_dir, resume=True, train=other), log=lambda m: None)


def _encoded(small_data):
    ah = io.read_folder(small_data[0], "Pd")
    bh = io.read_folder(small_data[1], "Ni")
    layout = encoding.Layout.fit("Pd", "Ni", ah.structures + bh.structures)
    enc = lambda d: jax.tree_util.tree_map(
        jnp.asarray, encoding.encode_batch(d.structures, layout, dtype=np.float32))
    return layout, enc(ah), enc(bh)


def test_a_stage_that_cannot_be_traced_fails_before_any_training(small_data, tmp_path):
    from crystalgan_jax.pipeline import loop
    from crystalgan_jax.pipeline.prepare import prepare
    from crystalgan_jax.pipeline.spec import PopulationSpec
    from crystalgan_jax.pipeline.trainers import SingleTrainer

    spec = _spec(small_data, tmp_path)
    trainer = SingleTrainer(PopulationSpec.single(spec), prepare(spec))

    def broken(stage):
        if stage == "stage3":
            raise RuntimeError("stage 3 does not trace")

    futures = loop.compile_stages(trainer, ["stage1", "stage3"], trainer.abstract_state(),
                                  2, broken)
    with pytest.raises(RuntimeError, match="stage 3 does not trace"):
        futures["stage1"].result()  # stage 1's runner is never handed over


def test_reconstruction_loss_falls(small_data):
    layout, x, y = _encoded(small_data)
    cfg = dataclasses.replace(SMALL, epochs=60, chunk_epochs=60, learning_rate=1e-3)
    lat = np.concatenate([x.lattice, y.lattice])
    nets = train.Networks.build(layout.rows, train.length_scale(lat), cfg)
    state = train.init_state(jax.random.PRNGKey(0), nets, cfg)
    data = train.stage_data("stage1", state, nets, x, y)
    runner = train.make_chunk_runner(train.STAGES["stage1"], nets, cfg,
                                        train.penalty_shifts(lat, cfg), [6, 6])
    new_state, metrics = runner(state, data, jnp.ones(60, bool))
    assert bool(train.tree_all_finite((new_state.params, new_state.opt_state, metrics)))
    poisoned = new_state.params["G_AHB1"]["MLP_0"]["Dense_0"]["kernel"].at[0, 0].set(jnp.inf)
    assert not bool(train.tree_all_finite(poisoned))
    names = train.STAGES["stage1"].metric_names
    rec = np.asarray(metrics)[:, [names.index("L_RAH"), names.index("L_RBH")]].sum(axis=1)
    assert rec[-5:].mean() < 0.5 * rec[:5].mean()


def _stage3_at_start(small_data, cfg):
    """Freshly drawn networks and stage 3's inputs: (layout, nets, x_g, y_g, stage,
    generator params, discriminator params, penalty shifts)."""
    layout, x, y = _encoded(small_data)
    lat = np.concatenate([x.lattice, y.lattice])
    nets = train.Networks.build(layout.rows, train.length_scale(lat), cfg)
    state = train.init_state(jax.random.PRNGKey(1), nets, cfg)
    xg, yg = train.feature_transfer(state.params, nets, x, y)
    stage = train.STAGES["stage3"]
    gp = {k: state.params[k] for k in stage.generators}
    dp = {k: state.params[k] for k in stage.discriminators}
    return layout, nets, xg, yg, stage, gp, dp, train.penalty_shifts(lat, cfg)


@pytest.mark.parametrize("method", ["crystalgan", "nocons"])
def test_geometric_gradient_reaches_stage3_generators(small_data, method):
    cfg = dataclasses.replace(SMALL, method=method)
    cfg = train.TrainConfig(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)})
    _, nets, xg, yg, stage, gp, dp, shifts = _stage3_at_start(small_data, cfg)

    def geo_part(gparams):
        _, terms = train.cross_domain_generator_loss(
            gparams, dp, xg, yg, stage=stage, nets=nets, cfg=cfg, shifts=shifts)
        total, gan_f, rec_x, gan_b, rec_y, geo1, geo2 = terms
        without_geo = losses.generator_objective(gan_f, rec_x, gan_b, rec_y, weights=cfg.weights)
        return total - without_geo, (geo1, geo2)

    # jitted, as training runs it (eagerly, every primitive compiled alone: ~20 s)
    grads, (geo1, geo2) = jax.jit(jax.grad(geo_part, has_aux=True))(gp)
    norm = sum(float(jnp.abs(g).sum()) for g in jax.tree_util.tree_leaves(grads))
    assert float(geo1 + geo2) > 0  # untrained generators violate [d1, d2]
    if method == "crystalgan":
        for name in stage.generators:
            assert sum(float(jnp.abs(g).sum())
                       for g in jax.tree_util.tree_leaves(grads[name])) > 0, name
    else:
        assert cfg.weights.l5 == cfg.weights.l6 == 0.0
        assert norm == 0.0


def test_short_stages_compile_quickly_to_the_same_numbers(small_data):
    # a short stage on CPU is compiled quickly (LLVM -O0, train.stage_compiler_options),
    # a long one with XLA's defaults: the same arithmetic, so the same trained state
    steps = dataclasses.replace(SMALL, epochs=train.QUICK_COMPILE_STEPS)  # 1 step/epoch
    quick = train.stage_compiler_options(steps, [6, 6], "cpu")
    assert quick == train.quick_compile_options() and quick.items() <= \
        train.QUICK_COMPILE.items()  # those of the options the installed XLA knows
    assert train.stage_compiler_options(steps, [6, 6], "cpu", members=2) is None
    longer = dataclasses.replace(steps, epochs=train.QUICK_COMPILE_STEPS + 1)
    assert train.stage_compiler_options(longer, [6, 6], "cpu") is None
    assert train.stage_compiler_options(SMALL, [6, 6], "gpu") is None
    layout, x, y = _encoded(small_data)
    cfg = dataclasses.replace(SMALL, epochs=3, chunk_epochs=3)
    lat = np.concatenate([x.lattice, y.lattice])
    nets = train.Networks.build(layout.rows, train.length_scale(lat), cfg)
    state = train.init_state(jax.random.PRNGKey(2), nets, cfg)
    # quick_jit's programs: compiled quickly when called, nested in the caller's when traced
    data = train.stage_data("stage3", state, nets, x, y)
    traced = jax.jit(lambda s: train.stage_data("stage3", s, nets, x, y))(state)
    for a, b in zip(jax.tree_util.tree_leaves(data), jax.tree_util.tree_leaves(traced)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    stage = train.STAGES["stage3"]
    ends = [train.make_chunk_runner(stage, nets, cfg, train.penalty_shifts(lat, cfg),
                                       [6, 6], compiler_options=options)(
        state, data, jnp.ones(3, bool)) for options in (quick, None)]
    # float32 rounding differs (FMA, vector reductions) and reaches the Adam moments of
    # the stage's largest gradients at ~6e-5 of their scale: compared per array, to 1e-3
    # of its largest value
    for a, b in zip(jax.tree_util.tree_leaves(ends[0]), jax.tree_util.tree_leaves(ends[1])):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-3 * np.max(np.abs(b)) + 1e-7)
    assert not np.allclose(ends[0][0].params["G_AHB2"]["MLP_0"]["Dense_0"]["kernel"],
                           state.params["G_AHB2"]["MLP_0"]["Dense_0"]["kernel"])  # it trained


def test_quick_compilation_drops_options_xla_does_not_know(monkeypatch):
    # a newer XLA may drop an option; passing it would fail every short run's compilation
    monkeypatch.setattr(train, "QUICK_COMPILE",
                        {**train.QUICK_COMPILE, "xla_no_such_option": True})
    train.quick_compile_options.cache_clear()
    try:
        known = train.quick_compile_options()
        assert "xla_no_such_option" not in known
        assert known["xla_backend_optimization_level"] == 0
        assert train.stage_compiler_options(SMALL, [6, 6], "cpu") == known
    finally:
        train.quick_compile_options.cache_clear()


def test_a_run_vmaps_over_seeds(small_data):
    # keys and state are threaded, nothing is drawn on the Python side: a batch of seeds
    # trains in one call, and each member equals the run of that seed alone
    layout, x, y = _encoded(small_data)
    cfg = dataclasses.replace(SMALL, epochs=2, chunk_epochs=2)
    lat = np.concatenate([x.lattice, y.lattice])
    nets = train.Networks.build(layout.rows, train.length_scale(lat), cfg)
    stage = train.STAGES["stage1"]
    runner = train.make_chunk_runner(stage, nets, cfg, train.penalty_shifts(lat, cfg),
                                        [6, 6])
    keys = jax.random.split(jax.random.PRNGKey(5), 3)
    states = jax.vmap(lambda k: train.init_state(k, nets, cfg))(keys)
    data = train.stage_data("stage1", train.init_state(keys[0], nets, cfg), nets, x, y)
    batched = jax.vmap(runner, in_axes=(0, None, None))(states, data, jnp.ones(2, bool))[0]
    single = runner(train.init_state(keys[1], nets, cfg), data, jnp.ones(2, bool))[0]
    for a, b in zip(jax.tree_util.tree_leaves(single.params),
                    jax.tree_util.tree_leaves(batched.params)):
        np.testing.assert_allclose(a, b[1], rtol=1e-5, atol=1e-6)
    leaves = jax.tree_util.tree_leaves(batched.params)
    assert not np.allclose(leaves[0][0], leaves[0][1])  # different seeds, different runs


def test_clash_term_is_logged_and_reaches_stage3_generators(small_data):
    from crystalgan_jax.pipeline.prepare import covalent_radii

    layout, x, y = _encoded(small_data)
    weights = dataclasses.replace(SMALL.weights, l7=1.0)
    cfg = dataclasses.replace(SMALL, weights=weights, clash_radii=covalent_radii("Pd", "Ni"),
                              clash_factor=1.5)
    assert dataclasses.replace(cfg, method="nocons").weights.l7 == 0.0
    stage = train.STAGES["stage3"]
    assert train.metric_names(stage, cfg)[-1] == "L_clash"
    assert "L_clash" not in train.metric_names(stage, SMALL)
    lat = np.concatenate([x.lattice, y.lattice])
    nets = train.Networks.build(layout.rows, train.length_scale(lat), cfg)
    state = train.init_state(jax.random.PRNGKey(2), nets, cfg)
    xg, yg = train.feature_transfer(state.params, nets, x, y)
    gp = {k: state.params[k] for k in stage.generators}
    dp = {k: state.params[k] for k in stage.discriminators}

    def clash_part(gparams):
        _, terms = train.cross_domain_generator_loss(
            gparams, dp, xg, yg, stage=stage, nets=nets, cfg=cfg,
            shifts=train.penalty_shifts(lat, cfg))
        assert terms.shape == (len(train.metric_names(stage, cfg)) - 1,)  # all but L_D
        return terms[-1]

    value, grads = jax.jit(jax.value_and_grad(clash_part))(gp)  # eagerly: ~20 s of compiles
    assert float(value) > 0
    for name in stage.generators:
        assert sum(float(jnp.abs(g).sum()) for g in jax.tree_util.tree_leaves(grads[name])) > 0
    with pytest.raises(ValueError, match="clash_radii"):
        train.make_train_step(stage, nets, dataclasses.replace(cfg, clash_radii=(0, 0, 0)),
                                 train.penalty_shifts(lat, cfg))


def test_run_exports_its_structures_for_ase_db_and_records_provenance(full_run):
    """`ase db run.db good_strict=True` selects the report's strictly good structures."""
    import subprocess
    import sys

    result, _ = full_run
    out = result.output_dir
    entries = json.loads((out / "report.json").read_text())["structures"]

    def selected(selection):
        proc = subprocess.run([sys.executable, "-m", "ase", "db", str(out / "run.db"),
                               selection, "-c", "file", "-L", "0"],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        return sorted(l.strip() for l in proc.stdout.splitlines() if "structures/" in l)

    for verdict in ("good_strict", "ternary"):
        for value in (True, False):
            assert selected(f"{verdict}={value}") == sorted(
                e["file"] for e in entries if e[verdict] == value), (verdict, value)
    frames = ase_read(str(out / "structures.extxyz"), index=":")
    assert [f.info["file"] for f in frames] == [e["file"] for e in entries]
    assert {f.info["seed"] for f in frames} == {3}
    config = json.loads((out / "config.json").read_text())
    assert set(config["versions"]) >= {"jax", "flax", "optax", "orbax-checkpoint", "pymatgen",
                                       "ase"}
    assert config["versions"]["jax"] == jax.__version__
    assert len(config["inputs_sha256"]) == 12  # six files per domain
    from crystalgan_jax.pipeline import provenance

    some = sorted(config["inputs_sha256"])[0]
    assert config["inputs_sha256"][some] == provenance.file_sha256(some)


def test_composition_sampling_judges_the_occupied_structures(small_data):
    # With composition sampling the stage-3 geometric terms see the generated structures
    # occupied as generation occupies them: with one target that fills every row, all
    # masks are 1, against the generator's own probabilities without it.
    base = train.TrainConfig(**{f.name: getattr(SMALL, f.name) for f in dataclasses.fields(SMALL)})
    layout, nets, xg, yg, stage, gp, dp, shifts = _stage3_at_start(small_data, base)
    full = tuple(int(r) for r in layout.rows)
    gen = nets.stage3_generator
    generated = train.concat_crystals(train.apply_generator(gen, gp["G_AHB2"], xg)[0],
                                      train.apply_generator(gen, gp["G_BHA2"], yg)[0])
    ones = generated.replace(masks=tuple(jnp.ones_like(m) for m in generated.masks))
    for cfg, crystals in ((base, generated),
                          (dataclasses.replace(base, composition_sampling=True,
                                               target_compositions=(full,)), ones)):
        _, terms = jax.jit(lambda g, c=cfg: train.cross_domain_generator_loss(
            g, dp, xg, yg, stage=stage, nets=nets, cfg=c, shifts=shifts,
            key=jax.random.PRNGKey(2)))(gp)
        want = losses.geometric(crystals, shifts, cfg.d1, cfg.d2, cfg.classes, cfg.geometry_form)
        np.testing.assert_allclose(np.asarray(terms[-2:]), np.asarray(want), rtol=1e-4, atol=1e-6)
    soft = losses.geometric(generated, shifts, base.d1, base.d2, base.classes, base.geometry_form)
    hard = losses.geometric(ones, shifts, base.d1, base.d2, base.classes, base.geometry_form)
    assert not np.allclose(np.asarray(soft), np.asarray(hard), rtol=1e-3)
