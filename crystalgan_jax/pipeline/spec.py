"""What a run trains on and where it writes: :class:`RunSpec`, and the members of a
population (:class:`Member`, :class:`PopulationSpec`).

A single run is a population of one member whose folder is the run's own
(:meth:`PopulationSpec.single`); every run goes through :func:`crystalgan_jax.pipeline.job.run`.
"""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path
from typing import Sequence

from crystalgan_jax.core import losses
from crystalgan_jax.materials import io
from crystalgan_jax.train.config import TrainConfig

# Rows a block is padded to at most unless n_h / n_metal raise it: every structure is
# padded to the largest one, so one big supercell makes every step pay for it (a 4x4x4
# PdH supercell took 17 GB and 435 s). The largest reference structure has 18 H, 6 metal.
MAX_BLOCK_ROWS = 32
# Seeds are PRNGKey seeds: jax folds larger ones onto this range (2**32 gives seed 0's run).
MAX_SEED = 2**32 - 1
# RunSpec.write_files: one POSCAR + CIF per sample, none, or by the kind of run.
WRITE_FILES = ("auto", "all", "candidates")

@dataclasses.dataclass(frozen=True)
class RunSpec:
    """What a run trains on and where it writes.

    Attributes:
      data_ah, data_bh: per domain, a folder of POSCAR/CIF files, an authors' ``.mat``
        file, or one file of structures that ASE reads (extxyz, .traj, an ASE database).
      element_a, element_b: the metals A and B.
      output_dir: where everything goes.
      train: hyperparameters.
      seed: PRNG seed; the only source of randomness.
      checkpoint_every: epochs between checkpoints (M): one is saved at every multiple of
        M (global epochs; chunks are cut to end there) and at the end of each stage.
      resume: continue from the newest intact checkpoint in ``output_dir``.
      overwrite: delete the run in ``output_dir`` first (a folder that is not a run of
        ours is never deleted); excludes ``resume``.
      n_h, n_metal: padding rows of the H and of each metal block (None: from the data,
        refusing a structure with more than :data:`MAX_BLOCK_ROWS` atoms in a block).
      evaluate: write the evaluation report after training.
      write_files: which structure files a run or member writes besides its one
        extended-XYZ file and ASE database of every sample (structures.extxyz, run.db):
        "all" (a POSCAR and a CIF per sample, and a report entry per sample), "candidates"
        (none: the report and the pooled candidates/ hold the strictly good ones), or
        "auto" ("all" for a single run, "candidates" for a population's members).
      member_figures: a population's members also draw distances.png and losses.png (a
        single run always draws them; the pooled report always draws its own).
      output_workers: processes that write a population's members after training, each
        member in one (None: one per CPU core, at most one per member; 1: all in this
        process). A single run writes in its own process.
      refine_from: a finished run's folder (a single run, or a population with the same
        members) whose trained state this run starts from: it then trains stage 3 only,
        for ``train.epochs`` epochs (``train.refine``), with the same data and settings.
      guide: a folder of ternary structures (e.g. a screening's relaxed low-E_hull
        candidates) that join both stage-3 training domains as real examples
        (:func:`crystalgan_jax.train.stage_data`); each must fit the data's layout.
    """

    data_ah: str
    data_bh: str
    element_a: str
    element_b: str
    output_dir: str
    train: TrainConfig = TrainConfig()
    seed: int = 0
    checkpoint_every: int = 100
    resume: bool = False
    overwrite: bool = False
    n_h: int | None = None
    n_metal: int | None = None
    evaluate: bool = True
    write_files: str = "auto"
    member_figures: bool = False
    output_workers: int | None = None
    refine_from: str | None = None
    guide: str | None = None

    def __post_init__(self):
        if self.output_workers is not None and self.output_workers < 1:
            raise ValueError(f"output_workers must be at least 1, got {self.output_workers}")
        if self.write_files not in WRITE_FILES:
            raise ValueError(f"write_files must be one of {WRITE_FILES}, got "
                             f"{self.write_files!r}")
        if self.checkpoint_every < 1:
            raise ValueError(f"checkpoint_every must be at least 1, got {self.checkpoint_every}")
        if self.resume and self.overwrite:
            raise ValueError("resume and overwrite (--resume, --overwrite) exclude each other: "
                             "--overwrite deletes the run that --resume would continue")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) \
                or not 0 <= self.seed <= MAX_SEED:
            raise ValueError(f"seed must be an integer in [0, {MAX_SEED}], got {self.seed}")
        for name in ("n_h", "n_metal"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        check_elements(self.element_a, self.element_b)
        if not str(self.output_dir).strip():
            raise ValueError("output_dir must not be empty")
        if self.refine_from and not self.train.refine:
            object.__setattr__(self, "train", dataclasses.replace(self.train, refine=True))
        if self.train.refine and not self.refine_from:
            raise ValueError("refine needs refine_from (--refine_from=RUN): the run whose "
                             "trained state it starts from")
        if self.refine_from and Path(self.refine_from).resolve() == Path(
                self.output_dir).resolve():
            raise ValueError("refine_from must be another run's folder than output_dir")


def check_elements(element_a: str, element_b: str) -> None:
    """Raises ValueError unless A and B are two different chemical elements other than H."""
    from pymatgen.core import Element

    for flag, symbol in (("element_a", element_a), ("element_b", element_b)):
        if not Element.is_valid_symbol(symbol):
            raise ValueError(f"{flag}: {symbol!r} is not a chemical element symbol")
        if symbol == io.HYDROGEN:
            raise ValueError(f"{flag}: the metals A and B cannot be H (H is the third element)")
    if element_a == element_b:
        raise ValueError(f"element_a and element_b are both {element_a}: a ternary A-B-H "
                         "needs two different metals")



WEIGHT_NAMES = tuple(f.name for f in dataclasses.fields(losses.Weights))  # l1..l7, occupancy
SWEEPABLE = tuple(f"l{i}" for i in range(1, 8))

@dataclasses.dataclass(frozen=True)
class Member:
    """One run of the population: its seed, loss weights, and the weights that vary.

    Attributes:
      seed: PRNG seed, as ``RunSpec.seed`` of a single run.
      weights: l1..l7 and occupancy of this member.
      swept: names of the weights that differ between members (they name the folder).
    """

    seed: int
    weights: losses.Weights
    swept: tuple[str, ...] = ()

    def __post_init__(self):
        if not 0 <= self.seed <= MAX_SEED:
            raise ValueError(f"seed must be an integer in [0, {MAX_SEED}], "
                             f"got {self.seed}")

    @property
    def name(self) -> str:
        """Folder name: ``seed_3``, or ``seed_3_l5_0.1`` with the swept weights."""
        return "_".join([f"seed_{self.seed}"]
                        + [f"{k}_{getattr(self.weights, k):g}" for k in self.swept])

    def settings(self) -> dict[str, float | int]:
        return {"seed": self.seed, **{k: getattr(self.weights, k) for k in self.swept}}


def make_members(seeds: Sequence[int], weights: losses.Weights,
                 sweeps: dict[str, Sequence[float]] | None = None) -> tuple[Member, ...]:
    """One member per seed and combination of swept values (seed outermost).

    Args:
      seeds: PRNG seeds, distinct.
      weights: the weights every member starts from.
      sweeps: weight name (l1..l7) -> values; each combination is one member per seed.
    """
    sweeps = {k: list(v) for k, v in (sweeps or {}).items() if v}
    if not seeds:
        raise ValueError("a population needs at least one seed")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct, got {list(seeds)}")
    for name, values in sweeps.items():
        if name not in SWEEPABLE:
            raise ValueError(f"cannot sweep {name!r}; sweepable weights are {SWEEPABLE}")
        if len(set(values)) != len(values):
            raise ValueError(f"--sweep_{name}: values must be distinct, got {values}")
        if any(v < 0 for v in values):
            raise ValueError(f"--sweep_{name}: weights must be >= 0, got {values}")
    names = tuple(sweeps)
    members = []
    for seed in seeds:
        for combo in itertools.product(*sweeps.values()):
            w = dataclasses.replace(weights, **dict(zip(names, map(float, combo))))
            members.append(Member(int(seed), w, names))
    return tuple(members)


@dataclasses.dataclass(frozen=True)
class PopulationSpec:
    """A population: the run spec all members share, and the members.

    ``base.output_dir`` is the population's folder; ``base.seed`` and ``base.train.weights``
    are replaced by each member's. ``base.resume``/``overwrite``/``evaluate``/
    ``checkpoint_every`` apply to the whole population.
    """

    base: RunSpec
    members: tuple[Member, ...]
    single_run: bool = False  # the member's folder is base.output_dir (see single())

    def __post_init__(self):
        if not self.members:
            raise ValueError("a population needs at least one member")
        names = [m.name for m in self.members]
        if len(set(names)) != len(names):
            raise ValueError(f"members must differ in seed or swept weights, got {names}")

    @classmethod
    def single(cls, spec: RunSpec) -> "PopulationSpec":
        """The population of one member that is the single run ``spec``: the member's
        folder is ``spec.output_dir`` itself."""
        return cls(spec, (Member(spec.seed, spec.train.weights),), single_run=True)

    def member_dir(self, member: Member) -> Path:
        """The member's folder: the run's own for a single run, else members/<name>."""
        out = Path(self.base.output_dir)
        return out if self.single_run else out / "members" / member.name

    def member_spec(self, member: Member) -> RunSpec:
        """The single run this member equals (its own folder, seed and weights)."""
        train = dataclasses.replace(self.base.train, weights=member.weights)
        return dataclasses.replace(self.base, train=train, seed=member.seed,
                                   output_dir=str(self.member_dir(member)))


