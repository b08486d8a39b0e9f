"""Command-line flags derived from the run's configuration dataclasses.

Every field of :class:`crystalgan_jax.pipeline.spec.RunSpec`, of its
:class:`crystalgan_jax.train.TrainConfig` and of that one's
:class:`crystalgan_jax.core.losses.Weights` becomes exactly one absl flag. The flag's default
is the field's default (there is no second copy to drift), its help text is the
field's entry in the class docstring's ``Attributes:`` section, and its kind follows the
field's type (bool, int, float, str, tuple -> comma-separated list). A field without a
default (the data, the elements, the output folder) becomes a required flag. Flagfiles
(``--flagfile=...``) and command-line flags override the defaults.

The library itself takes plain arguments; only ``experiments/`` parses flags, with
:func:`define_flags` at import and :func:`spec_from_flags` in ``main``.
"""

from __future__ import annotations

import dataclasses
import logging as logging_std
import os
import re
import sys
import types
import typing
from pathlib import Path
from typing import Any, Callable, Sequence

from absl import app, flags
from absl import logging as absl_logging

from crystalgan_jax.core.encoding import BLOCKS
from crystalgan_jax.pipeline.spec import WRITE_FILES, RunSpec
from crystalgan_jax.train import GEOMETRY_FORMS, METHODS, SITE_PROJECTIONS

# Flag names that differ from their field's name (kept for existing flagfiles and
# commands): the field path "Class.field" -> flag name.
FLAG_NAMES = {"Weights.occupancy": "occupancy_weight", "TrainConfig.classes": "constrained"}
# Fields whose value is one of a fixed set: enum flags.
CHOICES = {"TrainConfig.method": METHODS, "TrainConfig.geometry_form": GEOMETRY_FORMS,
           "TrainConfig.site_projection": SITE_PROJECTIONS, "RunSpec.write_files": WRITE_FILES}


class UsageError(ValueError):
    """A flag value that cannot be turned into the field's value."""


@dataclasses.dataclass(frozen=True)
class FlagField:
    """One flag and the dataclass field it sets.

    Attributes:
      flag: the flag's name.
      owner: the dataclass that holds the field.
      field: the field.
      path: attribute names from the RunSpec down to the field, e.g. ("train", "d1").
      help: the field's docstring entry.
    """

    flag: str
    owner: type
    field: dataclasses.Field
    path: tuple[str, ...]
    help: str

    @property
    def key(self) -> str:
        return f"{self.owner.__name__}.{self.field.name}"

    @property
    def has_default(self) -> bool:
        return (self.field.default is not dataclasses.MISSING
                or self.field.default_factory is not dataclasses.MISSING)

    @property
    def default(self) -> Any:
        if self.field.default_factory is not dataclasses.MISSING:
            return self.field.default_factory()
        return None if self.field.default is dataclasses.MISSING else self.field.default


def docstring_attributes(cls: type) -> dict[str, str]:
    """Field name -> text of its entry in a Google-style ``Attributes:`` section.

    An entry may name several fields (``learning_rate, beta1, beta2: Adam.``); indented
    lines below an entry continue it.
    """
    lines = (cls.__doc__ or "").splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.strip() == "Attributes:")
    except StopIteration:
        return {}
    out: dict[str, str] = {}
    indent, names = None, []
    for line in lines[start + 1:]:
        if not line.strip():
            if indent is not None:
                break
            continue
        level = len(line) - len(line.lstrip())
        if indent is None:
            indent = level
        if level < indent:
            break
        match = re.match(r"\s*([\w, ]+):\s*(.*)", line) if level == indent else None
        if match:
            names = [n.strip() for n in match.group(1).split(",")]
            for name in names:
                out[name] = match.group(2).strip()
        else:
            for name in names:
                out[name] = f"{out[name]} {line.strip()}".strip()
    return out


def _nested(hint: Any) -> type | None:
    return hint if isinstance(hint, type) and dataclasses.is_dataclass(hint) else None


def flag_fields(cls: type = RunSpec, path: tuple[str, ...] = ()) -> list[FlagField]:
    """Every leaf field of ``cls`` (nested config dataclasses flattened), in field order.

    Raises:
      TypeError: a field without a docstring entry (so without help text).
    """
    hints = typing.get_type_hints(cls)
    docs = docstring_attributes(cls)
    out: list[FlagField] = []
    for field in dataclasses.fields(cls):
        inner = _nested(hints[field.name])
        if inner is not None:
            out.extend(flag_fields(inner, path + (field.name,)))
            continue
        key = f"{cls.__name__}.{field.name}"
        if field.name not in docs:
            raise TypeError(f"{key} has no entry in {cls.__name__}'s Attributes docstring; "
                            "it is the flag's help text")
        out.append(FlagField(FLAG_NAMES.get(key, field.name), cls, field,
                             path + (field.name,), docs[field.name]))
    return out


def _classes_to_flag(classes: Sequence[Sequence[int]]) -> list[str]:
    return ["".join(BLOCKS[b] for b in members) for members in classes]


def _classes_from_flag(items: Sequence[str]) -> tuple[tuple[int, ...], ...]:
    """["AB", "H"] -> ((1, 2), (0,)) in block indices."""
    classes = []
    for item in items:
        blocks = []
        for letter in item.strip().upper():
            if letter not in BLOCKS:
                raise UsageError(f"--constrained: {letter!r} is not one of {BLOCKS}")
            blocks.append(BLOCKS.index(letter))
        classes.append(tuple(sorted(set(blocks))))
    return tuple(classes)  # empty: refused by TrainConfig's checks, never a silent default


def _compositions_to_flag(compositions: Sequence[Sequence[int]]) -> list[str]:
    return [":".join(str(n) for n in c) for c in compositions]


def _compositions_from_flag(items: Sequence[str]) -> tuple[tuple[int, ...], ...]:
    """["4:1:3"] -> ((4, 1, 3),): atom counts of H, A and B."""
    out = []
    for item in items:
        parts = item.strip().split(":")
        try:
            counts = tuple(int(p) for p in parts)
        except ValueError:
            counts = ()
        if len(counts) != 3 or min(counts) < 0:
            raise UsageError(f"--target_compositions: {item!r} is not H:A:B atom counts "
                             "(three integers >= 0, e.g. 4:1:3)")
        out.append(counts)
    return tuple(out)


def _without_none(hint: Any) -> Any:
    """``int | None`` -> ``int``; other hints unchanged."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return hint


def _converters(item: FlagField, hint: Any) -> tuple[Callable, Callable[[Any], Any], Callable]:
    """(absl DEFINE function, value -> flag default, flag value -> field value)."""
    if item.key == "TrainConfig.classes":
        return flags.DEFINE_list, _classes_to_flag, _classes_from_flag
    if item.key == "TrainConfig.target_compositions":
        return flags.DEFINE_list, _compositions_to_flag, _compositions_from_flag
    base = _without_none(hint)
    identity = lambda v: v  # noqa: E731
    if base is bool:
        return flags.DEFINE_bool, identity, identity
    if base is int:
        return flags.DEFINE_integer, identity, identity
    if base is float:
        return flags.DEFINE_float, identity, identity
    if base is str:
        if item.key in CHOICES:
            return (lambda name, default, help, **kw: flags.DEFINE_enum(
                name, default, CHOICES[item.key], help, **kw)), identity, identity
        return flags.DEFINE_string, identity, identity
    if typing.get_origin(base) is tuple:
        element = typing.get_args(base)[0]

        def parse(values: Sequence[str]) -> tuple:
            try:
                return tuple(element(v) for v in values)
            except ValueError:
                raise UsageError(f"--{item.flag}: expected {element.__name__} values, "
                                 f"got {','.join(values)}") from None
        return flags.DEFINE_list, (lambda v: [str(x) for x in v]), parse
    raise TypeError(f"{item.key}: no flag kind for type {hint!r}")


def _hints(item: FlagField) -> Any:
    return typing.get_type_hints(item.owner)[item.field.name]


def define_flags(flag_values: flags.FlagValues = flags.FLAGS,
                 required: bool = True) -> list[FlagField]:
    """Defines one flag per field (see the module docstring) in ``flag_values``.

    ``required=False`` leaves the fields without a default optional, for a script that
    can take them from elsewhere (screen.py reads a run's system from its config.json);
    :func:`missing_required` then names the ones not given.
    """
    items = flag_fields()
    for item in items:
        define, to_flag, _ = _converters(item, _hints(item))
        default = to_flag(item.default) if item.has_default and item.default is not None else None
        define(item.flag, default, item.help, flag_values=flag_values)
        if required and not item.has_default:
            flags.mark_flag_as_required(item.flag, flag_values=flag_values)
    return items


def missing_required(flag_values: flags.FlagValues = flags.FLAGS) -> list[str]:
    """The flags of fields without a default that have no value (``--name`` each)."""
    return [f"--{item.flag}" for item in flag_fields()
            if not item.has_default and flag_values[item.flag].value is None]


def _build(cls: type, values: dict[tuple[str, ...], Any], path: tuple[str, ...]) -> Any:
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for field in dataclasses.fields(cls):
        inner = _nested(hints[field.name])
        here = path + (field.name,)
        kwargs[field.name] = _build(inner, values, here) if inner else values[here]
    return cls(**kwargs)


def spec_from_flags(flag_values: flags.FlagValues = flags.FLAGS,
                    data_root: str | Path | None = None) -> RunSpec:
    """The RunSpec the parsed flags describe.

    Args:
      flag_values: parsed flags, defined by :func:`define_flags`.
      data_root: relative data paths not found from the working directory are looked up
        here too (the repository root, so flagfiles work from any folder).

    Raises:
      UsageError: a list flag that does not parse.
      ValueError: a hyperparameter out of range (from the dataclasses' checks).
    """
    values = {}
    for item in flag_fields():
        _, _, from_flag = _converters(item, _hints(item))
        raw = flag_values[item.flag].value
        values[item.path] = raw if raw is None else from_flag(raw)
    spec = _build(RunSpec, values, ())
    if data_root is not None:
        spec = dataclasses.replace(spec, data_ah=data_path(spec.data_ah, data_root),
                                   data_bh=data_path(spec.data_bh, data_root))
    return spec


def data_path(path: str, root: str | Path) -> str:
    """``path`` itself if it exists or is absolute, else ``root / path`` where that exists."""
    if Path(path).is_absolute() or Path(path).exists():
        return path
    candidate = Path(root) / path
    return str(candidate) if candidate.exists() else path


def resolve_flagfiles(argv: Sequence[str], folder: str | Path) -> list[str]:
    """Rewrites ``--flagfile=NAME`` to ``folder/NAME`` where NAME is not found as given."""
    out = []
    for arg in argv:
        if arg.startswith("--flagfile="):
            name = arg.split("=", 1)[1]
            if not Path(name).exists() and (Path(folder) / name).exists():
                arg = f"--flagfile={Path(folder) / name}"
        out.append(arg)
    return out


class _LibraryLevels(logging_std.Filter):
    """Holds the libraries' log lines one level back from this project's own.

    Libraries log through the same absl handler (Orbax one INFO line per checkpoint
    save, JAX hundreds of DEBUG lines per compilation). This project's lines pass as
    ``--verbosity`` says; a library's pass from WARNING up, from INFO up at
    ``--verbosity=1``, and all of them at ``--verbosity=2`` or more.
    """

    def __init__(self, own_folders: Sequence[Path]):
        super().__init__()
        self.own = tuple(str(Path(f).resolve()) for f in own_folders)

    def filter(self, record: logging_std.LogRecord) -> bool:
        if str(Path(record.pathname).resolve()).startswith(self.own):
            return True
        verbosity = absl_logging.get_verbosity()
        lowest = {0: logging_std.WARNING, 1: logging_std.INFO}.get(verbosity, logging_std.NOTSET)
        return record.levelno >= (logging_std.WARNING if verbosity < 0 else lowest)


class TerminalFormatter(absl_logging.PythonFormatter):
    """Short prefix on the terminal, absl's full prefix in the ``--log_dir`` file.

    absl's handler writes a record to its stream (the log file once
    ``start_logging_to_file`` ran) and, with ``--alsologtostderr``, again to stderr by
    pointing that same stream at ``sys.stderr`` for the second write; this formatter
    looks at where the handler writes now. On the terminal a line reads
    ``13:57:35 I [stage1] epoch 2/2 ...`` (time and the level's first letter: D, I, W, E,
    F); in the file it keeps absl's ``I1202 13:57:35.123456 4242 job.py:88] ...``.
    """

    def __init__(self, handler: logging_std.StreamHandler):
        super().__init__()
        self.handler = handler

    def format(self, record: logging_std.LogRecord) -> str:
        if self.handler.stream not in (sys.stderr, sys.__stderr__):
            return super().format(record)
        level = {logging_std.DEBUG: "D", logging_std.INFO: "I", logging_std.WARNING: "W",
                 logging_std.ERROR: "E", logging_std.CRITICAL: "F"}.get(
                     record.levelno, record.levelname[:1])
        when = self.formatTime(record, "%H:%M:%S")
        return f"{when} {level} " + logging_std.Formatter.format(self, record)


def start_script(argv: list[str], flag_values: flags.FlagValues,
                 script_folder: str | Path) -> None:
    """What each training script's ``main`` does first, once absl has parsed the flags:
    refuses leftover arguments (``app.UsageError``), sets up logging
    (:func:`configure_logging`) and the compilation cache (:func:`enable_compilation_cache`).
    """
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    configure_logging(flag_values, script_folder)
    enable_compilation_cache()


def finish(code: int) -> typing.NoReturn:
    """Ends a script's process once its main has returned ``code`` (everything written).

    Flushes stdout, stderr and the log handlers (absl's log file too), then leaves
    without the interpreter's teardown: tearing down XLA's client and the modules of
    JAX, pymatgen, scipy and matplotlib is a noticeable part of a short run. The atexit handlers skipped (JAX's backend clean-up and
    distributed shutdown, logging shutdown: the last two done here) have nothing left
    to save. Only for a script's ``__main__``: it ends the process.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    logging_std.shutdown()
    jax = sys.modules.get("jax")
    if jax is not None and jax.process_count() > 1:
        # leave the other processes' shutdown barrier as an ordinary exit would (JAX's
        # atexit handler does this otherwise)
        jax.distributed.shutdown()
    os._exit(code)


def configure_logging(flag_values: flags.FlagValues = flags.FLAGS,
                      script_folder: str | Path | None = None) -> Path | None:
    """Sets up absl logging for a script after its flags are parsed.

    Progress goes through ``absl.logging`` at INFO (shown by default; ``--verbosity=-1``
    hides it, ``--verbosity=1`` adds per-sample details and the libraries' INFO lines).
    With ``--log_dir`` the same lines also go to a log file there (absl's naming,
    ``<program>.INFO`` links the latest), and still to the terminal unless
    ``--noalsologtostderr`` is given. Terminal lines carry a short prefix (time and
    level letter, :class:`TerminalFormatter`); the file keeps absl's full prefix.

    Returns:
      The log file, or None when logging to the terminal only.
    """
    handler = absl_logging.get_absl_handler()
    folders = [Path(__file__).resolve().parent] + ([Path(script_folder)] if script_folder else [])
    handler.addFilter(_LibraryLevels(folders))
    handler.python_handler.setFormatter(TerminalFormatter(handler.python_handler))
    if not flag_values["log_dir"].value:
        return None
    Path(flag_values["log_dir"].value).mkdir(parents=True, exist_ok=True)
    if not flag_values["alsologtostderr"].present:
        flag_values.alsologtostderr = True
    handler.start_logging_to_file(log_dir=flag_values["log_dir"].value)
    return Path(handler.python_handler.stream.name)


def enable_compilation_cache() -> None:
    """Keeps compiled XLA programs between runs (compiling the two stages is most of a
    short run's time on a small CPU machine). ``JAX_COMPILATION_CACHE_DIR`` overrides
    the folder (default ``~/.cache/crystalgan_jax/xla``); an empty value turns it off."""
    import jax

    folder = os.environ.get("JAX_COMPILATION_CACHE_DIR",
                            str(Path.home() / ".cache" / "crystalgan_jax" / "xla"))
    if folder:
        jax.config.update("jax_compilation_cache_dir", folder)
        # every program, however small: a run compiles some two dozen small ones
        # (initialisation, feature transfer, generation, checks) that the default
        # threshold leaves out of the cache
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


# --- populations (crystalgan_jax.train.population): many runs in one compiled program ----------

def define_population_flags(flag_values: flags.FlagValues = flags.FLAGS,
                            members: bool = True) -> None:
    """The multi-process flags and, with ``members``, --num_seeds, --seeds and
    --sweep_l1..7 (table2.py chooses its members itself)."""
    if members:
        flags.DEFINE_integer("num_seeds", None, "Train a population of this many seeds, "
                             "--seed, --seed+1, ..., in one program (members/<name>/ per "
                             "member, pooled candidates/ and report.md).",
                             flag_values=flag_values)
        flags.DEFINE_list("seeds", [], "Train a population of these seeds (e.g. 0,3,7) in "
                          "one program.", flag_values=flag_values)
        for i in range(1, 8):
            flags.DEFINE_list(f"sweep_l{i}", [], f"Population: one member per value of l{i} "
                              f"and seed (e.g. 0.1,1,10); overrides --l{i}.",
                              flag_values=flag_values)
    flags.DEFINE_string("coordinator_address", None, "Several processes (hosts): address "
                        "host:port of process 0, for jax.distributed.initialize.",
                        flag_values=flag_values)
    flags.DEFINE_integer("num_processes", None, "Several processes: how many in all.",
                         flag_values=flag_values)
    flags.DEFINE_integer("process_id", None, "Several processes: this one's index, 0 first.",
                         flag_values=flag_values)
    flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() with what the "
                      "cluster's environment says (SLURM, TPU pods, ...): a population over "
                      "every process.", flag_values=flag_values)
    flags.DEFINE_integer("cpu_devices", 0, "A population on the CPU: split it over this "
                         "many CPU devices, one thread each (0: one per core, when this is "
                         "the only process and XLA_FLAGS does not set a device count).",
                         flag_values=flag_values)


def initialize_distributed(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """jax.distributed.initialize from the flags, or from the cluster's environment, and
    the number of CPU devices (:func:`use_cpu_cores`).

    Call it before JAX touches a device.
    """
    import jax

    fv = flag_values
    single = fv.coordinator_address is None and not fv.distributed
    use_cpu_cores(fv.cpu_devices if fv.cpu_devices > 0 else (os.cpu_count() or 1) if single
                  else 1)
    if fv.coordinator_address is not None:
        if fv.num_processes is None or fv.process_id is None:
            raise UsageError("--coordinator_address needs --num_processes and --process_id")
        jax.distributed.initialize(fv.coordinator_address, fv.num_processes, fv.process_id)
    elif fv.distributed:
        jax.distributed.initialize()


def use_cpu_cores(devices: int) -> None:
    """Makes JAX's CPU backend offer ``devices`` devices (before JAX touches a device).

    XLA's CPU backend runs one device's program on about one core: the small matmuls of a
    population's members do not spread over the others (measured on the 2-core machine:
    8 members in one device ran at the per-member rate of one). A population's members
    are split over all devices, so with one CPU device per core every core works. An
    explicit ``--xla_force_host_platform_device_count`` in XLA_FLAGS wins.
    """
    import jax

    if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
        jax.config.update("jax_num_cpu_devices", max(1, int(devices)))


def define_screen_flags(flag_values: flags.FlagValues = flags.FLAGS,
                        with_only: bool = True) -> None:
    """The screening flags shared by experiments/screen.py, train.py (without --only: its
    candidates are the run's) and table2.py --screen."""
    from crystalgan_jax.screening import potentials, relax as screening  # no torch here

    if with_only:
        flags.DEFINE_enum("only", "ternary", ["unique", "strict", "paper", "ternary", "all"],
                          "Which candidates (verdicts before relaxation): one per "
                          "StructureMatcher group of the good (strict) ones, good (strict), "
                          "good (paper), ternary, or all.", flag_values=flag_values)
    flags.DEFINE_list("potentials", ["chgnet"], "The potential, or two (primary first, e.g. "
                      "chgnet,sevennet): the primary relaxes every candidate, the second "
                      "judges each against its own hull (--second_opinion) and a consensus "
                      f"verdict is reported. Of {', '.join(potentials.POTENTIALS)} (emt: "
                      "ASE's EMT, a fast stand-in for tests).", flag_values=flag_values)
    flags.DEFINE_alias("potential", "potentials", flag_values=flag_values)
    flags.DEFINE_enum("second_opinion", "relax", ["relax", "single_point"], "How the second "
                      "potential judges a candidate: its own relaxation from the primary's "
                      "relaxed structure (the verdicts need it: "
                      "crystalgan_jax.screening.second_opinion), or a single point on it.",
                      flag_values=flag_values)
    flags.DEFINE_float("fmax", screening.DEFAULT_FMAX, "Relaxation converged when the "
                       "largest force (and stress x cell) is below this (eV/A).",
                       flag_values=flag_values)
    flags.DEFINE_integer("max_steps", screening.DEFAULT_MAX_STEPS, "Optimizer steps at most.",
                         flag_values=flag_values)
    flags.DEFINE_enum("optimizer", screening.DEFAULT_OPTIMIZER, list(screening.OPTIMIZERS),
                      "ASE optimizer of the candidates' relaxations (cell and positions).",
                      flag_values=flag_values)
    flags.DEFINE_enum("hull_optimizer", screening.DEFAULT_HULL_OPTIMIZER,
                      list(screening.OPTIMIZERS), "ASE optimizer of the hull's solid phases "
                      "(metals, training binaries, alloys, substitution structures); they "
                      "start near a minimum, where BFGS with a soft initial Hessian takes 0.4 "
                      "of FIRE's time (benchmarks/optimizers.py). H2 in its box keeps "
                      "--optimizer.",
                      flag_values=flag_values)
    flags.DEFINE_integer("workers", min(2, os.cpu_count() or 1), "Relaxations at once, one "
                         "process each (default: up to 2, this machine's cores).",
                         flag_values=flag_values)
    flags.DEFINE_integer("threads", 1, "PyTorch threads (torch.set_num_threads) and BLAS "
                         "threads of each screening process.", flag_values=flag_values)
    flags.DEFINE_float("stability_threshold", screening.STABILITY_THRESHOLD,
                       "Stable: converged and E_hull <= this (eV/atom).",
                       flag_values=flag_values)
    flags.DEFINE_float("symmetrize", 0.5, "Angstrom; > 0: each relaxed candidate that gains a "
                       "space group when symmetrised at this tolerance is relaxed again from "
                       "the symmetric cell, and the lower of the two kept (0: off).",
                       flag_values=flag_values)
    flags.DEFINE_integer("heredity", 0, "Offspring (crystalgan_jax.pipeline.discovery.breed): "
                         "in each formula, this many children of two screened candidates that "
                         "share a framework, one in each half of a doubled cell, relaxed and "
                         "judged with the candidates (0: none).", lower_bound=0,
                         flag_values=flag_values)
    flags.DEFINE_integer("permutations", 0, "Offspring: every distinct one-pair metal swap of "
                         "this many lowest-E_hull candidates of each formula, relaxed and "
                         "judged with the candidates (0: none).", lower_bound=0,
                         flag_values=flag_values)
    flags.DEFINE_list("h_fraction", ["0", "1"], "lo,hi: screen only the candidates whose "
                      "hydrogen fraction n_H / n_atoms lies in [lo, hi] (e.g. 0.4,0.7 for "
                      "hydrogen-rich ones); 'data': in the training structures' range. The "
                      "report gives the range asked for and the H/M of what was screened.",
                      flag_values=flag_values)
    flags.DEFINE_bool("hull_cache", True, "Read and write the system's relaxed hull in the "
                      "cache ($CRYSTALGAN_CACHE, else ~/.cache/crystalgan_jax).",
                      flag_values=flag_values)


def h_fraction_from_flags(flag_values: flags.FlagValues = flags.FLAGS
                          ) -> tuple[float, float] | str:
    """--h_fraction as (lo, hi) with 0 <= lo <= hi <= 1, or ``"data"`` (the training
    structures' range, :func:`crystalgan_jax.screening.runs.resolve_h_fraction`).

    Raises:
      UsageError: not ``data`` nor two numbers in that order and range.
    """
    from crystalgan_jax.screening.runs import H_FRACTION_DATA

    items = list(flag_values.h_fraction)
    if items == [H_FRACTION_DATA]:
        return H_FRACTION_DATA
    try:
        lo, hi = (float(v) for v in items)
    except ValueError:
        raise UsageError(f"--h_fraction takes two numbers lo,hi or {H_FRACTION_DATA}, got "
                         f"{','.join(items)}") from None
    if not 0.0 <= lo <= hi <= 1.0:
        raise UsageError(f"--h_fraction needs 0 <= lo <= hi <= 1, got {lo:g},{hi:g}")
    return lo, hi


def relaxers_from_flags(flag_values: flags.FlagValues = flags.FLAGS, log=None) -> list:
    """The :class:`crystalgan_jax.screening.workers.Relaxer` of each of --potentials
    (primary first), with the screening flags' settings.

    Raises:
      UsageError: a bad --potentials.
      crystalgan_jax.screening.potentials.MissingExtraError: a potential is not installed.
    """
    from crystalgan_jax.screening import potentials
    from crystalgan_jax.screening.workers import Relaxer

    fv = flag_values
    try:
        names = potentials.parse_names(",".join(fv.potentials))
    except ValueError as err:
        raise UsageError(f"--potentials: {err}") from None
    if len(names) > 2:
        raise UsageError(f"--potentials takes one or two potentials, got {len(names)}")
    return [Relaxer(name, fmax=fv.fmax, max_steps=fv.max_steps, optimizer=fv.optimizer,
                    hull_optimizer=fv.hull_optimizer, workers=fv.workers,
                    threads=fv.threads, log=log) for name in names]
