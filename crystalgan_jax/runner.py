"""One training run end to end: data -> stages (with checkpoints) -> structure files.

:func:`run` is what ``experiments/train.py`` calls with its parsed flags. It writes into
``output_dir``:

* ``structures/stage1/{AHB,BHA}/NNN.vasp`` and ``.cif`` (step-1 outputs) and
  ``structures/final/{AHB,BHA}/NNN.vasp`` and ``.cif`` (the generated ternaries; the GAN
  baseline writes ``final/GAN``), real element symbols;
* ``metrics.jsonl``: one line per epoch and stage with every logged loss;
* ``checkpoints/`` (Orbax; see :mod:`crystalgan_jax.checkpoints`);
* ``config.json``, and the report of :mod:`crystalgan_jax.report` (``report.json``,
  ``report.md``, plots).

Nothing is lost on a crash or Ctrl-C: checkpoints are synchronous, and an interrupt saves
the state of the last finished chunk of epochs before it propagates.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from crystalgan_jax import encoding, geometry, io, training
from crystalgan_jax.checkpoints import Checkpoints


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """What a run trains on and where it writes.

    Attributes:
      data_ah, data_bh: folder of POSCAR/CIF files or authors' ``.mat`` file per domain.
      element_a, element_b: the metals A and B.
      output_dir: where everything goes.
      train: hyperparameters.
      seed: PRNG seed; the only source of randomness.
      checkpoint_every: epochs between checkpoints (M): one is saved at the first chunk
        boundary M or more epochs after the last, and at the end of each stage.
      resume: continue from the latest checkpoint in ``output_dir``.
      overwrite: delete an existing ``output_dir`` first.
      n_h, n_metal: padding rows of the H and of each metal block (None: from the data).
      evaluate: write the evaluation report after training.
    """

    data_ah: str
    data_bh: str
    element_a: str
    element_b: str
    output_dir: str
    train: training.TrainConfig = training.TrainConfig()
    seed: int = 0
    checkpoint_every: int = 100
    resume: bool = False
    overwrite: bool = False
    n_h: int | None = None
    n_metal: int | None = None
    evaluate: bool = True

    def __post_init__(self):
        if self.checkpoint_every < 1:
            raise ValueError(f"checkpoint_every must be at least 1, got {self.checkpoint_every}")


@dataclasses.dataclass
class RunResult:
    """What :func:`run` leaves in memory (all of it is also on disk)."""

    output_dir: Path
    layout: encoding.Layout
    state: training.TrainState
    files: dict[str, dict[str, list[Path]]]
    metrics: list[dict]
    report: dict | None
    spec: RunSpec | None = None  # as trained (learned settings filled in)


def covalent_radii(element_a: str, element_b: str) -> tuple[float, float, float]:
    """Covalent radii (Angstrom) of H, A and B, as the strict criterion takes them."""
    from crystalgan_jax.evaluation import covalent_radius

    return tuple(covalent_radius(s) for s in ("H", element_a, element_b))


def load_domains(spec: RunSpec) -> tuple[io.Domain, io.Domain]:
    """Reads the AH and BH domains (folders or ``.mat`` files)."""
    ah = io.read_domain(spec.data_ah, spec.element_a, mat_block=encoding.A_BLOCK + 1)
    bh = io.read_domain(spec.data_bh, spec.element_b, mat_block=encoding.B_BLOCK + 1)
    return ah, bh


def _prepare_output(spec: RunSpec) -> Path:
    out = Path(spec.output_dir)
    has_run = (out / "checkpoints").exists() or (out / "metrics.jsonl").exists()
    if has_run and spec.overwrite:
        shutil.rmtree(out)
    elif has_run and not spec.resume:
        raise FileExistsError(
            f"{out} already holds a run; pass resume=True (--resume) to continue it or "
            "overwrite=True (--overwrite) to start again")
    out.mkdir(parents=True, exist_ok=True)
    return out


class ResumeMismatchError(ValueError):
    """``--resume`` with settings that differ from those the checkpoint was made with."""


# What must agree between a run and its resumption; the rest (resume, overwrite,
# evaluate, checkpoint_every, output_dir) may change.
_RESUME_KEYS = ("train", "seed", "element_a", "element_b", "n_h", "n_metal")


def _check_resumable(path: Path, current: dict) -> None:
    """Raises ResumeMismatchError naming ``path`` (config.json) and the fields that differ."""
    if not path.exists():
        return
    saved = json.loads(path.read_text())
    now = json.loads(json.dumps(current))  # tuples -> lists, as saved
    differ = [f"spec.{k}" for k in _RESUME_KEYS if saved["spec"].get(k) != now["spec"].get(k)]
    differ += [k for k in ("layout", "sources_ah", "sources_bh") if saved.get(k) != now.get(k)]
    if differ:
        raise ResumeMismatchError(
            f"{path}: cannot resume, the run was made with other settings "
            f"({', '.join(differ)} differ); use the same flags, or --overwrite")


def _read_metrics(path: Path, up_to_epoch: int, log: Callable[[str], None]) -> list[dict]:
    """Metrics lines of epochs already covered by the restored checkpoint.

    A line cut short by a hard kill is dropped with a message; its epoch is re-run.
    """
    if not path.exists():
        return []
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if line.strip():
                log(f"{path}, line {number}: incomplete metrics line dropped")
    return [r for r in rows if r["global_epoch"] <= up_to_epoch]


def _format_progress(stage: str, epoch: int, epochs: int, row: dict, rate: float) -> str:
    losses = "  ".join(f"{k} {v:.4g}" for k, v in row.items()
                       if k.startswith("L_") or k == "outside_images")
    eta = (epochs - epoch) / rate if rate > 0 else float("nan")
    return f"[{stage}] epoch {epoch}/{epochs}  {losses}  {rate:.1f} epochs/s  eta {eta:.0f}s"


def _ends_stage1(epoch: int, cfg: training.TrainConfig) -> bool:
    return cfg.stages[0] == "stage1" and epoch == cfg.epochs


def _save_interrupted(ckpt: Checkpoints, state: training.TrainState,
                      cfg: training.TrainConfig, log: Callable[[str], None]) -> None:
    step = ckpt.save(state, end_of_stage1=_ends_stage1(int(state.epoch), cfg))
    log(f"interrupted: state of epoch {step} saved in {ckpt.directory}; continue with --resume")


def train_stages(spec: RunSpec, out: Path, x: encoding.Crystal, y: encoding.Crystal,
                 nets: training.Networks, state: training.TrainState, shifts: jax.Array,
                 metrics: list[dict], ckpt: Checkpoints,
                 log: Callable[[str], None], on_trace=None) -> training.TrainState:
    """Runs every stage of ``spec.train`` from ``state.epoch`` on, checkpointing as it goes.

    ``shifts``: the geometric penalty's lattice shifts (:func:`training.penalty_shifts`).
    """
    cfg = spec.train
    metrics_file = (out / "metrics.jsonl").open("a")
    try:
        for s_index, stage_name in enumerate(cfg.stages):
            start = s_index * cfg.epochs
            if int(state.epoch) >= start + cfg.epochs:
                continue
            stage = training.STAGES[stage_name]
            data = training.stage_data(stage_name, state, nets, x, y)
            sizes = [d.lattice.shape[0] for d in data]
            chunk = max(1, min(cfg.chunk_epochs, spec.checkpoint_every, cfg.epochs))
            runner = training.make_chunk_runner(stage, nets, cfg, shifts, sizes, on_trace)
            last_saved = int(state.epoch)
            while int(state.epoch) < start + cfg.epochs:
                done = int(state.epoch) - start
                n = min(chunk, cfg.epochs - done)
                tic = time.perf_counter()
                # ``state`` moves on only once this chunk's metrics are on disk, so an
                # interrupt anywhere (JAX returns before it computes, so usually while we
                # wait here) saves a state that the metrics file agrees with
                new_state, chunk_metrics = runner(state, data, jnp.arange(chunk) < n)
                chunk_metrics = np.asarray(chunk_metrics)
                jax.block_until_ready(new_state)
                rate = n / (time.perf_counter() - tic)
                for i in range(n):
                    row = {"stage": stage_name, "epoch": done + i + 1,
                           "global_epoch": start + done + i + 1}
                    row.update(zip(training.metric_names(stage, cfg),
                                   map(float, chunk_metrics[i])))
                    metrics.append(row)
                    metrics_file.write(json.dumps(row) + "\n")
                metrics_file.flush()
                state = new_state
                log(_format_progress(stage_name, done + n, cfg.epochs, metrics[-1], rate))
                epoch = int(state.epoch)
                stage_end = epoch == start + cfg.epochs
                if stage_end or epoch - last_saved >= spec.checkpoint_every:
                    ckpt.save(state, end_of_stage1=_ends_stage1(epoch, cfg))
                    last_saved = epoch
    except KeyboardInterrupt:
        _save_interrupted(ckpt, state, cfg, log)
        raise
    finally:
        metrics_file.close()
    return state


def write_structures(generated: dict[str, dict[str, encoding.Crystal]], layout: encoding.Layout,
                     out: Path, log: Callable[[str], None]) -> dict[str, dict[str, list[Path]]]:
    """Decodes and writes every generated crystal as POSCAR (.vasp) and CIF.

    A sample that does not decode (no atoms, or a degenerate cell) is reported and skipped;
    file numbers keep the sample index, so gaps show which. Files of an earlier pass (a
    resumed run) are removed first, so none of them can be mistaken for this run's.
    """
    shutil.rmtree(out / "structures", ignore_errors=True)
    files: dict[str, dict[str, list[Path]]] = {}
    for kind, directions in generated.items():
        files[kind] = {}
        for direction, crystals in directions.items():
            folder = out / "structures" / kind / direction
            folder.mkdir(parents=True, exist_ok=True)
            paths = []
            crystals = jax.tree_util.tree_map(np.asarray, crystals)
            for i in range(crystals.lattice.shape[0]):
                one = encoding.index(crystals, i)
                reason = _undecodable(one)
                if reason:
                    log(f"skipped {kind}/{direction}/{i:03d}: {reason}")
                    continue
                structure = encoding.decode(one, layout)
                path = folder / f"{i:03d}.vasp"
                io.write_poscar(structure, path, comment=f"{kind} {direction} {i:03d}")
                io.write_cif(structure, path.with_suffix(".cif"))
                paths.append(path)
            files[kind][direction] = paths
    return files


# Below this spacing of lattice planes (Angstrom) a generated cell is no crystal, and
# pymatgen's CIF reader refuses it; such samples are logged and not written.
MIN_PLANE_SPACING = 0.1


def _undecodable(crystal: encoding.Crystal) -> str | None:
    if not any(np.any(np.asarray(m) > 0.5) for m in crystal.masks):
        return "no atom has occupancy > 0.5"
    lattice = np.asarray(crystal.lattice, np.float64)
    if abs(np.linalg.det(lattice)) < io.MIN_CELL_VOLUME:
        return "degenerate cell (zero volume)"
    spacing = float(geometry.plane_spacings(lattice).min())
    if spacing < MIN_PLANE_SPACING:
        return f"degenerate cell (lattice planes {spacing:.3g} A apart)"
    return None


def prepare(spec: RunSpec):
    """Reads and encodes the domains and builds the networks.

    Returns:
      (spec with learned settings filled in, AH domain, BH domain, layout, x, y, networks);
      x and y are the encoded domains (float32 JAX arrays).
    """
    ah, bh = load_domains(spec)
    spec = _learned_settings(spec, ah, bh)
    layout = encoding.Layout.fit(spec.element_a, spec.element_b, ah.structures + bh.structures,
                                 n_h=spec.n_h, n_a=spec.n_metal, n_b=spec.n_metal)

    def encode(domain: io.Domain) -> encoding.Crystal:
        batch = encoding.encode_batch(domain.structures, layout, sources=domain.sources,
                                      dtype=np.float32)
        return jax.tree_util.tree_map(jnp.asarray, batch)

    x, y = encode(ah), encode(bh)
    lattices = np.concatenate([np.asarray(x.lattice), np.asarray(y.lattice)])
    nets = training.Networks.build(layout.rows, training.length_scale(lattices), spec.train)
    return spec, ah, bh, layout, x, y, nets


def run(spec: RunSpec, log: Callable[[str], None] | None = None, on_trace=None,
        extra_files: dict[str, str] | None = None) -> RunResult:
    """Trains ``spec.train.method`` on the two domains and writes every output.

    Args:
      spec: what to train on and where to write.
      log: receives progress lines (default: stderr).
      on_trace: called with the stage name whenever a stage's epochs are traced.
      extra_files: file name -> text, written into the output directory before training
        (train.py records its flags this way, so a crashed run still has them).
    """
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    if spec.train.weights.l7 > 0 and not any(spec.train.clash_radii):
        spec = dataclasses.replace(spec, train=dataclasses.replace(
            spec.train, clash_radii=covalent_radii(spec.element_a, spec.element_b)))
    spec, ah, bh, layout, x, y, nets = prepare(spec)
    cfg = spec.train
    out = _prepare_output(spec)
    lattices = np.concatenate([np.asarray(x.lattice), np.asarray(y.lattice)])
    state = training.init_state(jax.random.PRNGKey(spec.seed), nets, cfg)
    ckpt = Checkpoints(out / "checkpoints")
    metrics: list[dict] = []
    config = _config_json(spec, layout, ah, bh)
    if spec.resume and ckpt.latest_step() is not None:
        _check_resumable(out / "config.json", config)
        state = ckpt.restore(state)
        metrics = _read_metrics(out / "metrics.jsonl", int(state.epoch), log)
        log(f"resumed from epoch {int(state.epoch)} in {ckpt.directory}")
    elif spec.resume:
        log(f"nothing to resume in {ckpt.directory}: starting from epoch 0")
    (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in metrics))
    (out / "config.json").write_text(json.dumps(config, indent=2))
    for name, text in (extra_files or {}).items():
        (out / name).write_text(text)
    log(f"{len(ah)} {spec.element_a}-H and {len(bh)} {spec.element_b}-H structures; "
        f"rows H/A/B = {layout.rows}; method {cfg.method}, {cfg.epochs} epochs per stage")
    try:
        state = train_stages(spec, out, x, y, nets, state,
                             training.penalty_shifts(lattices, cfg), metrics, ckpt, log,
                             on_trace)
    finally:
        ckpt.close()
    files, report = write_outputs(spec, state, nets, x, y, layout, ah, bh, out, metrics, log)
    return RunResult(out, layout, state, files, metrics, report, spec)


def write_outputs(spec: RunSpec, state: training.TrainState, nets: training.Networks,
                  x: encoding.Crystal, y: encoding.Crystal, layout: encoding.Layout,
                  ah: io.Domain, bh: io.Domain, out: Path, metrics: list[dict],
                  log: Callable[[str], None]) -> tuple[dict, dict | None]:
    """Generates from a trained ``state`` with ``spec.train``'s sampling settings, writes the
    structures (snapped where ``snap_symprec`` > 0) and, if ``spec.evaluate``, the report
    with the novelty count. Returns (files, report).

    Separate from training so that sampling-only variants (experiments/ablation.py) reuse
    one trained state.
    """
    cfg = spec.train
    generated = training.generate(state, nets, cfg, x, y, jax.random.fold_in(state.key, 1))
    files = write_structures(generated, layout, out, log)
    if cfg.snap_symprec > 0:
        _snap_files(files.get("final", {}), cfg.snap_symprec, log)
    report = None
    if spec.evaluate:
        from crystalgan_jax import candidates
        from crystalgan_jax import report as report_lib

        classes = encoding.class_symbols(cfg.classes, spec.element_a, spec.element_b)
        references = candidates.reference_structures(ah.structures, bh.structures,
                                                     spec.element_a, spec.element_b)
        report = report_lib.write_run_report(out, files, ah.structures + bh.structures,
                                             spec.element_a, spec.element_b, metrics,
                                             d1=cfg.d1, d2=cfg.d2, classes=classes,
                                             references=references)
    return files, report


def _learned_settings(spec: RunSpec, ah: io.Domain, bh: io.Domain) -> RunSpec:
    """crystalgan_plus: distance windows and the smallest plane spacing from the training data.

    Only where the configuration asks for them and leaves them unset, so a resumed run
    (whose config.json holds them) compares equal.
    """
    cfg = spec.train
    changes = {}
    if cfg.window_weight > 0 and not cfg.pair_windows:
        from crystalgan_jax import candidates

        changes["pair_windows"] = candidates.learn_windows(
            ah.structures, bh.structures, spec.element_a, spec.element_b,
            cfg.window_percentiles, cfg.d1, cfg.d2)
    if cfg.spacing_weight > 0 and cfg.min_plane_spacing == 0:
        lattices = np.array([s.lattice.matrix for s in ah.structures + bh.structures])
        changes["min_plane_spacing"] = round(float(geometry.plane_spacings(lattices).min()), 4)
    if not changes:
        return spec
    return dataclasses.replace(spec, train=dataclasses.replace(cfg, **changes))


def _snap_files(files: dict[str, list[Path]], symprec: float,
                log: Callable[[str], None]) -> None:
    """Rewrites each structure file that has a space group above P1 at ``symprec`` as its
    idealised primitive standard cell (:func:`crystalgan_jax.candidates.snap_to_symmetry`)."""
    from crystalgan_jax import candidates

    snapped = total = 0
    for paths in files.values():
        for path in paths:
            total += 1
            structure = io.read_structure(path)
            new, number = candidates.snap_to_symmetry(structure, symprec)
            if number > 1:
                snapped += 1
                io.write_poscar(new, path, comment=f"{path.stem} snapped to space group {number}")
                io.write_cif(new, path.with_suffix(".cif"))
    log(f"symmetry: {snapped} of {total} final structures snapped (symprec {symprec} A)")


def _config_json(spec: RunSpec, layout: encoding.Layout, ah: io.Domain, bh: io.Domain) -> dict:
    return {"spec": dataclasses.asdict(spec), "layout": dataclasses.asdict(layout),
            "sources_ah": list(ah.sources), "sources_bh": list(bh.sources),
            "jax": jax.__version__, "devices": [str(d) for d in jax.devices()]}
