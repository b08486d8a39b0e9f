"""The hyperparameters of a run: :class:`TrainConfig`, the methods and their defaults."""

from __future__ import annotations

import dataclasses

import jax

from crystalgan_jax.core import geometry, losses


METHODS = ("crystalgan", "nocons", "discogan", "gan", "crystalgan_plus")
SITE_PROJECTIONS = ("off", "nearest", "nearest_and_raw", "shuffled")

# What "crystalgan_plus" switches on where a field is left at None (issue 13). Each can be
# switched off alone (0 / 1 / False), which is how experiments/ablation.py measures it.
PLUS_DEFAULTS = {"plus_clash": True, "window_weight": 1.0, "spacing_weight": 1.0,
                 "input_noise": 0.3, "samples_per_input": 10, "random_pairings": True,
                 "snap_symprec": 0.1, "snapshots": 5, "distance_weight": 0.0,
                 "composition_weight": 0.0, "rescale_volume": False,
                 "composition_sampling": False}
# The same fields for every other method: off, so the paper's method is unchanged.
PLUS_OFF = {"plus_clash": False, "window_weight": 0.0, "spacing_weight": 0.0,
            "input_noise": 0.0, "samples_per_input": 1, "random_pairings": False,
            "snap_symprec": 0.0, "snapshots": 1, "distance_weight": 0.0,
            "composition_weight": 0.0, "rescale_volume": False,
            "composition_sampling": False}
GEOMETRY_FORMS = ("hinge", "paper")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters (paper defaults; spec "Hyperparameters").

    Attributes:
      method: "crystalgan" (stages 1 and 3 with geometric terms), "nocons" (the same
        with l5 = l6 = l7 = 0), "discogan" (stage 1 only; its outputs are final), "gan"
        (Gaussian noise -> crystal, trained on both domains together), "crystalgan_plus"
        (CrystalGAN with this project's improvements, each switchable by its flag).
      epochs: epochs per stage.
      batch_size: minibatch size (paper: 35).
      learning_rate: Adam's step size.
      beta1, beta2: Adam's decay rates of the first and second moment estimates.
      generator_steps: generator updates per discriminator update (authors: 5).
      depth, width: hidden layers and units of every MLP (paper: 5 x 100).
      weights: l1..l7 and the occupancy weight.
      d1, d2: allowed nearest-neighbour range, Angstrom.
      classes: constrained classes as tuples of block indices (H=0, A=1, B=2); on the
        command line (--constrained) each class is a set of block letters among H, A, B
        whose atoms are constrained to their nearest atom of the same set (AB =
        metal-metal).
      geometry_form: "hinge" (relu(d1 - s)^2 + relu(s - d2)^2) or "paper" (the literal
        min (d1 - s)^2 and -min (d2 - s)^2).
      latent_dim: noise size of the GAN baseline.
      chunk_epochs: epochs per compiled call; progress and checkpoints happen between.
      max_images: cap on lattice images per axis for the geometric penalty.
      residual: generators predict a correction to their input coordinates (not in the
        paper).
      clash_radii: covalent radii (Angstrom) of H, A and B for the clash term (l7); all
        zero means the runner takes ASE's covalent radii of the three elements.
      clash_factor: pairs closer than this x the radius sum are penalised by L_clash. 0.8
        leaves a margin over the strict criterion's 0.75, since a hinge settles on its
        boundary.
      plus_clash: crystalgan_plus turns on the clash term with l7 = 1 where l7 is 0.
      window_weight: weight of L_win, per-class nearest-distance windows learned from the
        training binaries (``pair_windows``; stage 3 only).
      pair_windows: ``((source blocks), (target blocks), lo, hi)`` per window, Angstrom;
        empty: the runner learns them (:func:`crystalgan_jax.materials.candidates.learn_windows`).
      window_percentiles: percentiles of the training distances that bound each window.
      distance_weight: weight of L_dist (stage 3 only), the squared 2-Wasserstein
        distance between the generated nearest-neighbour distances of each pair type,
        pooled over the batch, and the training binaries' (``distance_quantiles``).
      distance_quantiles: ``((source blocks), (target blocks), (quantiles...))`` per pair
        type, Angstrom, at levels (k + 1/2) / K; empty: the runner learns them
        (:func:`crystalgan_jax.materials.candidates.learn_distance_quantiles`).
      distance_levels: K, the quantiles learned per pair type (and of the hydrogen
        fraction).
      composition_weight: weight of L_comp (stage 3 only), the squared 2-Wasserstein
        distance between the generated structures' hydrogen fractions n_H / n_atoms (from
        the occupancy probabilities) and the training structures' (``h_fraction_quantiles``).
      h_fraction_quantiles: the training structures' hydrogen fractions at levels
        (k + 1/2) / K; empty: the runner learns them.
      composition_sampling: each stage-3 sample gets a composition drawn uniformly from
        ``target_compositions`` and, in each block, exactly that many atoms: the rows the
        generator finds likeliest occupied (:func:`~.objectives.occupy`; the
        stage-3 geometric terms judge them occupied the same way in training), instead of the
        generator's own occupancies (which collapse onto a few atom counts per state).
      target_compositions: ``(n_H, n_A, n_B)`` atom counts composition sampling draws
        from; on the command line ``H:A:B`` each (e.g. ``4:1:3``); empty: the runner
        takes the training cells' compositions with their metal sites split between A
        and B in every way (:func:`crystalgan_jax.materials.candidates.learn_compositions`).
      rescale_volume: each generated structure is scaled isotropically to the volume its
        composition has in the training data (:func:`crystalgan_jax.core.geometry.scale_to_volume`
        with ``block_volumes``), before snapping and the criteria.
      block_volumes: volume per atom of H, A and B (Angstrom^3); empty: the runner fits
        them on the training cells.
      site_projection: symmetry-aware generation: "off"; "nearest" puts each final
        stage-3 sample on the sites of the training binary it came from (that cell's
        lattice, H sites and metal sites, DFT-relaxed and symmetric), each metal site
        taking the metal of the nearest generated metal atom, and scales the cell to the
        data's volume (``block_volumes``) (:func:`~.generation.project_to_template`);
        "nearest_and_raw" keeps the generator's own samples too (twice the samples);
        "shuffled" is its control: the same A:B counts on randomly chosen sites.
      spacing_weight: weight of L_cell = sum relu(min_plane_spacing - h_m)^2 on the
        generated cells, which keeps them inside the penalty's compiled image range.
      min_plane_spacing: Angstrom; 0: the runner takes the training cells' smallest.
      input_noise: std (Angstrom) of Gaussian noise added to the stage-3 inputs' lattice
        and positions, in training and when sampling.
      samples_per_input: stage-3 samples drawn per input pair when generating.
      random_pairings: samples after the first pair x_AHB1 and y_BHA1 at random (step 2
        with other partners) instead of repeating the fixed pairing.
      snap_symprec: Angstrom; > 0 snaps each generated structure with a space group above
        P1 at this tolerance to its idealised primitive standard cell (0 = off).
      snapshots: K stage-3 generator states that generation draws from: the parameters
        after epochs E/K, 2E/K, ..., E of stage 3 (:func:`~.state.snapshot_epochs`; the
        last is the final state). Sample k of each input comes from state K-1-(k mod K), so
        sample 0 is the final generators' and ``samples_per_input`` stays the total.
        Long training collapses the stage-3 samples onto a few structures; the earlier
        states keep their spread.
      refine: train stage 3 only, from a trained run's state (a fine-tuning round; set by
        ``--refine_from``, :mod:`crystalgan_jax.pipeline.rounds`).

    The crystalgan_plus ingredients (plus_clash ... snapshots; issue 13) left at
    ``None`` take the method's default: :data:`PLUS_DEFAULTS` for crystalgan_plus,
    :data:`PLUS_OFF` (all off) for every other method.
    """

    method: str = "crystalgan"
    epochs: int = 1000
    batch_size: int = 35
    learning_rate: float = 1e-4
    beta1: float = 0.5
    beta2: float = 0.999
    generator_steps: int = 5
    depth: int = 5
    width: int = 100
    weights: losses.Weights = losses.Weights()
    d1: float = 1.8
    d2: float = 3.0
    classes: tuple[tuple[int, ...], ...] = geometry.DEFAULT_CLASSES
    geometry_form: str = "hinge"
    latent_dim: int = 32
    chunk_epochs: int = 50
    max_images: int = 3
    residual: bool = False
    clash_radii: tuple[float, float, float] = (0.0, 0.0, 0.0)
    clash_factor: float = 0.8
    plus_clash: bool | None = None
    window_weight: float | None = None
    pair_windows: tuple[tuple[tuple[int, ...], tuple[int, ...], float, float], ...] = ()
    window_percentiles: tuple[float, float] = (1.0, 99.0)
    distance_weight: float | None = None
    distance_quantiles: tuple[tuple[tuple[int, ...], tuple[int, ...], tuple[float, ...]], ...] = ()
    distance_levels: int = 32
    composition_weight: float | None = None
    h_fraction_quantiles: tuple[float, ...] = ()
    composition_sampling: bool | None = None
    target_compositions: tuple[tuple[int, int, int], ...] = ()
    rescale_volume: bool | None = None
    block_volumes: tuple[float, ...] = ()
    site_projection: str = "off"
    spacing_weight: float | None = None
    min_plane_spacing: float = 0.0
    input_noise: float | None = None
    samples_per_input: int | None = None
    random_pairings: bool | None = None
    snap_symprec: float | None = None
    snapshots: int | None = None
    refine: bool = False

    def __post_init__(self):
        defaults = PLUS_DEFAULTS if self.method == "crystalgan_plus" else PLUS_OFF
        if self.snapshots is None:  # the default never asks for more states than epochs
            object.__setattr__(self, "snapshots", min(defaults["snapshots"], max(self.epochs, 1)))
        for name, value in defaults.items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)
        if (self.plus_clash and not isinstance(self.weights.l7, jax.Array)
                and self.weights.l7 == 0):
            object.__setattr__(self, "weights", dataclasses.replace(self.weights, l7=1.0))
        pw = tuple((tuple(map(int, s)), tuple(map(int, t)), float(lo), float(hi))
                   for s, t, lo, hi in self.pair_windows)  # JSON lists -> hashable tuples
        object.__setattr__(self, "pair_windows", pw)
        dq = tuple((tuple(map(int, s)), tuple(map(int, t)), tuple(map(float, q)))
                   for s, t, q in self.distance_quantiles)
        object.__setattr__(self, "distance_quantiles", dq)
        object.__setattr__(self, "h_fraction_quantiles",
                           tuple(map(float, self.h_fraction_quantiles)))
        object.__setattr__(self, "block_volumes", tuple(map(float, self.block_volumes)))
        object.__setattr__(self, "target_compositions",
                           tuple(tuple(map(int, c)) for c in self.target_compositions))
        for c in self.target_compositions:
            if len(c) != 3 or min(c) < 0 or c[1] + c[2] == 0:
                raise ValueError(f"target_compositions takes (n_H, n_A, n_B) atom counts "
                                 f"with at least one metal, got {c}")
        if self.block_volumes and len(self.block_volumes) != 3:
            raise ValueError(f"block_volumes takes three values (H, A, B), got "
                             f"{self.block_volumes}")
        if self.site_projection not in SITE_PROJECTIONS:
            raise ValueError(f"site_projection must be one of {SITE_PROJECTIONS}, got "
                             f"{self.site_projection!r}")
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.site_projection != "off" and "stage3" not in self.stages:
            raise ValueError(f"site_projection works on stage 3's samples, which method "
                             f"{self.method!r} has not")
        if self.refine and "stage3" not in self.stages:
            raise ValueError(f"refine trains stage 3, which method {self.method!r} has not")
        for name in ("epochs", "batch_size", "generator_steps", "width", "chunk_epochs",
                     "latent_dim", "max_images", "distance_levels"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 0 < self.d1 < self.d2 < float("inf"):
            raise ValueError(f"need 0 < d1 < d2 (finite), got d1={self.d1}, d2={self.d2}")
        _check_config_ranges(self)
        if self.samples_per_input < 1:
            raise ValueError(f"samples_per_input must be at least 1, got {self.samples_per_input}")
        if not 1 <= self.snapshots <= self.epochs:
            raise ValueError(f"snapshots must be in [1, epochs = {self.epochs}], "
                             f"got {self.snapshots}")
        for name in ("window_weight", "spacing_weight", "input_noise", "snap_symprec",
                     "min_plane_spacing", "distance_weight", "composition_weight"):
            if not 0 <= getattr(self, name) < float("inf"):
                raise ValueError(f"{name} must be finite and >= 0, got {getattr(self, name)}")
        if self.geometry_form not in GEOMETRY_FORMS:
            raise ValueError(f"geometry_form must be one of {GEOMETRY_FORMS}, "
                             f"got {self.geometry_form!r}")
        if self.method == "nocons":
            object.__setattr__(self, "weights",
                               dataclasses.replace(self.weights, l5=0.0, l6=0.0, l7=0.0))

    @property
    def stages(self) -> tuple[str, ...]:
        """Names of the method's stages, in order (their networks make up the state)."""
        return {"crystalgan": ("stage1", "stage3"), "nocons": ("stage1", "stage3"),
                "crystalgan_plus": ("stage1", "stage3"),
                "discogan": ("stage1",), "gan": ("gan",)}[self.method]

    @property
    def trained_stages(self) -> tuple[str, ...]:
        """The stages a run trains, in order, ``epochs`` each: the method's stages, or
        stage 3 alone where ``refine``."""
        return ("stage3",) if self.refine else self.stages


def _check_config_ranges(cfg: "TrainConfig") -> None:
    """Raises ValueError naming the first hyperparameter out of its range.

    NaN fails every comparison, so each check is written as "inside the range".
    """
    if not 0 < cfg.learning_rate < float("inf"):
        raise ValueError(f"learning_rate must be finite and > 0, got {cfg.learning_rate}")
    for name in ("beta1", "beta2"):
        if not 0 <= getattr(cfg, name) < 1:
            raise ValueError(f"{name} must be in [0, 1), got {getattr(cfg, name)}")
    if cfg.depth < 0:
        raise ValueError(f"depth must be at least 0, got {cfg.depth}")
    for field in dataclasses.fields(cfg.weights):
        value = getattr(cfg.weights, field.name)
        if isinstance(value, jax.Array):  # a population's per-member weights, traced: each
            continue                      # member's Weights were checked when it was made
        if not 0 <= value < float("inf"):
            flag = "occupancy_weight" if field.name == "occupancy" else field.name
            raise ValueError(f"{flag} must be finite and >= 0, got {value}")
    if not 0 < cfg.clash_factor < float("inf"):
        raise ValueError(f"clash_factor must be finite and > 0, got {cfg.clash_factor}")
    if not all(0 <= r < float("inf") for r in cfg.clash_radii):
        raise ValueError(f"clash_radii must be finite and >= 0, got {cfg.clash_radii}")
    if not cfg.classes or any(not c for c in cfg.classes):
        raise ValueError("constrained classes (--constrained) must name at least one class, "
                         f"each of at least one block, got {cfg.classes}")
    if any(b not in (0, 1, 2) for c in cfg.classes for b in c):
        raise ValueError(f"constrained classes take blocks 0 (H), 1 (A), 2 (B), got {cfg.classes}")
