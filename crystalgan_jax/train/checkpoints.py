"""Orbax checkpoints of a :class:`~crystalgan_jax.train.TrainState`, verified on restore.

One Orbax ``CheckpointManager`` under the run's ``checkpoints/``, one folder per step
(steps are global epoch counts). Orbax's policies decide what is written and kept:

* save decision: every ``every`` epochs (``FixedIntervalPolicy``) and at the end of
  each stage (``SpecificStepsPolicy``); an interrupt or a divergence saves with
  ``force``;
* preservation: the newest ``max_to_keep`` steps (``LatestN``) and, for good, the end
  of stage 1 (``CustomSteps``), so that stage 3 can be re-run or varied from it.

Each step holds the state *packed* (:func:`pack`: one array per dtype, the leaves
concatenated) and a small JSON item with the packing layout and the SHA-256 of the
arrays. Packed, because Orbax's cost is per array and a CrystalGAN state has hundreds of
them. Steps written unpacked (before the packing) are still restored.
:meth:`Checkpoints.restore` recomputes it and checks that every value is finite; a step
that fails (or that Orbax cannot read) is reported in one line, moved aside to
``<step>.damaged`` and the next older step is tried, so damaged state is never restored
silently.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import gc
import hashlib
import logging
import math
import signal
import sys
import threading
from pathlib import Path
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy, save_decision_policy


class CheckpointError(RuntimeError):
    """No intact checkpoint to restore; names the folder and what was wrong."""


def _host_leaves(state):
    """The leaves of ``state`` this process can read whole.

    A population sharded over several processes holds arrays no one process sees all
    of; those are left to the per-chunk divergence check (each process would hash a
    different part, and the checksum is written once).
    """
    return [leaf for leaf in jax.tree_util.tree_leaves(state)
            if not (isinstance(leaf, jax.Array) and not leaf.is_fully_addressable)]


def state_digest(state) -> str:
    """SHA-256 over every array of ``state`` (tree order, dtype, shape and bytes)."""
    digest = hashlib.sha256()
    for leaf in _host_leaves(state):
        array = np.ascontiguousarray(np.asarray(leaf))
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def _key_name(entry) -> str:
    for attribute in ("key", "name", "idx"):  # DictKey, GetAttrKey, SequenceKey
        if hasattr(entry, attribute):
            return str(getattr(entry, attribute))
    return str(entry)


def _lead(leaf: jax.Array) -> tuple[int, ...]:
    """``leaf.shape[:1]`` where axis 0 is split over devices (a population's member
    axis), else ``()``: packing keeps that axis, so the packed array stays split the same
    way and no process needs another's rows."""
    sharding = getattr(leaf, "sharding", None)
    if leaf.ndim and sharding is not None and not sharding.is_fully_replicated:
        return tuple(leaf.shape[:1])
    return ()


def pack(state) -> tuple[dict[str, jax.Array], list[dict]]:
    """The leaves of ``state`` concatenated into one array per (dtype, split axis).

    Returns:
      ``arrays``: group name -> ``[total]`` (or ``[P, total]`` for leaves whose axis 0
      of size P is split over devices); ``layout``: per leaf, in tree order, its path
      (list of key names), group, offset and shape (JSON-serialisable), which
      :func:`unpack` and :func:`unpack_as_dicts` read back.
    """
    members: dict[str, list[int]] = {}  # group -> indices of its leaves
    sizes: dict[str, int] = {}
    layout, leaves, leads = [], [], []
    for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
        leaf = jnp.asarray(leaf)
        lead = _lead(leaf)
        group = leaf.dtype.name + (f"_split{lead[0]}" if lead else "")
        size = int(np.prod(leaf.shape[len(lead):], dtype=np.int64))
        layout.append({"path": [_key_name(k) for k in path], "group": group,
                       "offset": sizes.get(group, 0), "shape": list(leaf.shape),
                       "dtype": leaf.dtype.name})
        sizes[group] = sizes.get(group, 0) + size
        members.setdefault(group, []).append(len(leaves))
        leaves.append(leaf)
        leads.append(len(lead))
    plan = tuple((g, tuple(i), tuple(leads[k] for k in i)) for g, i in members.items())
    return _concatenate_groups(tuple(leaves), plan), layout


@functools.partial(jax.jit, static_argnums=1)
def _concatenate_groups(leaves: tuple[jax.Array, ...], plan: tuple) -> dict[str, jax.Array]:
    """:func:`pack`'s arrays as one program: eagerly, each leaf's reshape and each
    concatenation would be an XLA program of its own."""
    out = {}
    for group, indices, leads in plan:
        parts = [leaves[i].reshape(leaves[i].shape[:n] + (math.prod(leaves[i].shape[n:]),))
                 for i, n in zip(indices, leads)]
        out[group] = jnp.concatenate(parts, axis=-1)
    return out


def _leaf(arrays: dict, entry: dict):
    packed = arrays[entry["group"]]
    lead = 1 if "_split" in entry["group"] else 0
    size = int(np.prod(entry["shape"][lead:], dtype=np.int64))
    return packed[..., entry["offset"]: entry["offset"] + size].reshape(entry["shape"])


def unpack(arrays: dict, layout: list[dict], template):
    """:func:`pack` undone into the structure (and shardings) of ``template``.

    Raises:
      ValueError: the layout is not that of ``template`` (another configuration).
    """
    flat, treedef = jax.tree_util.tree_flatten_with_path(template)
    if len(flat) != len(layout):
        raise ValueError(f"it holds {len(layout)} arrays, this run's state {len(flat)}")
    leaves = []
    for (path, like), entry in zip(flat, layout):
        like = jnp.asarray(like)
        if ([_key_name(k) for k in path] != entry["path"] or list(like.shape) != entry["shape"]
                or like.dtype.name != entry["dtype"]):
            raise ValueError(f"it holds {'/'.join(entry['path'])} {entry['shape']} "
                             f"{entry['dtype']}, this run's state "
                             f"{jax.tree_util.keystr(path)} {list(like.shape)} {like.dtype}")
        leaves.append(jax.device_put(_leaf(arrays, entry), like.sharding))
    return jax.tree_util.tree_unflatten(treedef, leaves)


def _packed_shapes(layout: list[dict]) -> dict[str, tuple[tuple[int, ...], str]]:
    """Group -> (shape, dtype) of the arrays :func:`pack` made, from its layout alone."""
    shapes: dict[str, tuple[tuple[int, ...], str]] = {}
    for entry in layout:
        lead = tuple(entry["shape"][:1]) if "_split" in entry["group"] else ()
        end = entry["offset"] + int(np.prod(entry["shape"][len(lead):], dtype=np.int64))
        old = shapes.get(entry["group"], (lead + (0,), entry["dtype"]))[0][-1]
        shapes[entry["group"]] = (lead + (max(old, end),), entry["dtype"])
    return shapes


def unpack_as_dicts(arrays: dict, layout: list[dict]) -> dict:
    """:func:`pack` undone without a template: nested dicts keyed by the path names."""
    tree: dict = {}
    for entry in layout:
        node = tree
        for name in entry["path"][:-1]:
            node = node.setdefault(name, {})
        node[entry["path"][-1]] = np.asarray(_leaf(arrays, entry))
    return tree


def _digest_of(stored, meta: dict) -> str:
    """:func:`state_digest` of what :meth:`Checkpoints.save` hashed (``meta["hashed"]``)."""
    if "hashed" in meta:
        return state_digest({g: stored[g] for g in meta["hashed"] if g in stored})
    return state_digest(stored)


def all_finite(state) -> bool:
    """True when no floating-point array of ``state`` holds NaN or inf."""
    return all(np.isfinite(np.asarray(leaf)).all()
               for leaf in _host_leaves(state)
               if np.issubdtype(np.asarray(leaf).dtype, np.floating))


class _QuietOrbax:
    """Silences Orbax's and asyncio's own error logging while a damaged step is read.

    A failed restore is reported by :meth:`Checkpoints.restore` in one line; without this
    Orbax logs thousands of traceback lines for a single truncated file.
    """

    _NAMES = ("absl", "orbax", "asyncio", "jax", "tensorstore")

    def __enter__(self):
        self._levels = [(logging.getLogger(n), logging.getLogger(n).level) for n in self._NAMES]
        for logger, _ in self._levels:
            logger.setLevel(logging.CRITICAL)

    def __exit__(self, *exc):
        for logger, level in self._levels:
            logger.setLevel(level)


def _drop_closed_loop_noise(previous):
    """An ``sys.unraisablehook`` that drops 'Event loop is closed' and forwards the rest.

    After a failed restore, TensorStore finishes the read's callbacks on an event loop
    that Orbax has already closed; each is printed as an unraisable traceback (dozens for
    one damaged step) though nothing is wrong beyond the damage already reported.
    """
    def hook(unraisable):
        if not (isinstance(unraisable.exc_value, RuntimeError)
                and str(unraisable.exc_value) == "Event loop is closed"):
            previous(unraisable)
    return hook


@contextlib.contextmanager
def signals_held():
    """SIGINT and SIGTERM that arrive inside the block are delivered when it ends.

    A save cut short by a signal leaves Orbax's temporary folder behind, and the save that
    the interrupt then makes of the same step fails on it; so a save always finishes, and
    the signal's handler (the run's "save and stop") runs right after. The runners also
    write a chunk's metrics and move their state on inside it, so that the state an
    interrupt saves is the one the metrics files end with.
    """
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread receives signals
        return
    caught: list[int] = []
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s in previous:
        signal.signal(s, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        for s, handler in previous.items():
            if handler is not None:  # None: set outside Python, cannot be put back
                signal.signal(s, handler)
        if caught:
            signal.raise_signal(caught[0])


class Checkpoints:
    """Saves and restores train states under ``directory``.

    A save that the policies call for (:meth:`save` without ``force``) is written by a
    background thread while training goes on, one at a time; every other call (the next
    save, :meth:`steps`, :meth:`restore`, :meth:`close`) first waits for it to be on
    disk and raises its error if it failed. Forced saves (Ctrl-C, divergence) and every
    save of a multi-process run are written before :meth:`save` returns.

    Args:
      directory: the run's ``checkpoints/`` folder.
      every: epochs between saves (saves happen at multiples of it).
      stage_ends: global epochs at which a stage ends (always saved).
      keep: global epochs kept for good besides the newest ``max_to_keep``.
      log: receives the one-line messages about damaged steps.
    """

    def __init__(self, directory: str | Path, every: int = 100,
                 stage_ends: Sequence[int] = (), keep: Sequence[int] = (),
                 max_to_keep: int = 2, log: Callable[[str], None] | None = None):
        self.directory = Path(directory).resolve()
        self._log = log or (lambda msg: None)
        # Orbax's own saves are synchronous (a checkpoint is complete when its save call
        # returns); the background writer below calls them one at a time, and Ctrl-C
        # waits for it before the interrupted state is saved.
        # cleanup_tmp_directories: a save cut short by a signal leaves a temporary folder,
        # which would otherwise be in the way of the next save of that step.
        options = ocp.CheckpointManagerOptions(
            create=True, enable_async_checkpointing=False, cleanup_tmp_directories=True,
            save_decision_policy=save_decision_policy.AnySavePolicy([
                save_decision_policy.FixedIntervalPolicy(every),
                save_decision_policy.SpecificStepsPolicy(tuple(stage_ends))]),
            preservation_policy=preservation_policy.AnyPreservationPolicy([
                preservation_policy.LatestN(max_to_keep),
                preservation_policy.CustomSteps(tuple(keep))]))
        self._manager = ocp.CheckpointManager(self.directory, options=options)
        self._unraisablehook = None  # the hook to put back in close(), once replaced
        self._writer: concurrent.futures.ThreadPoolExecutor | None = None
        self._pending: concurrent.futures.Future | None = None

    def save(self, state, force: bool = False) -> bool:
        """Saves ``state`` at step ``state.epoch`` where the policies say so (or ``force``).

        Returns whether a checkpoint of this step is on disk or being written (see the
        class docstring: only a policy save of a single-process run is written in the
        background; it is on disk once the next call returns).
        """
        self.wait()
        step = int(state.epoch)
        if step in self._manager.all_steps():
            return True
        if not force and not self._manager.should_save(step):
            return False  # no packing work for the chunks the policies skip
        arrays, layout = pack(state)
        # arrays split over processes are not hashed (no process holds them whole); the
        # names of those that are let a reader on one machine check the same bytes
        hashed = sorted(g for g, a in arrays.items() if len(_host_leaves(a)) == 1)
        meta = {"sha256": state_digest({g: arrays[g] for g in hashed}), "hashed": hashed,
                "epoch": step, "layout": layout}
        args = ocp.args.Composite(state=ocp.args.StandardSave(arrays),
                                  meta=ocp.args.JsonSave(meta))

        def write() -> bool:
            with signals_held():
                return bool(self._manager.save(step, args=args, force=force))

        if force or jax.process_count() > 1:
            # the exceptional paths (and several processes, whose Orbax saves meet at
            # barriers) write before returning
            return write()
        # Orbax's Python per save adds up over a run: in the background it overlaps the
        # next chunk, which runs in XLA without the GIL
        if self._writer is None:
            self._writer = concurrent.futures.ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="checkpoint")
        self._pending = self._writer.submit(write)
        return True

    def wait(self) -> None:
        """Returns once the background save (if any) is on disk; raises its error (once).

        Interrupted itself (Ctrl-C, SIGTERM while it waits), it leaves the save pending,
        so that the interrupted state's save waits for it too: two saves of one step at
        once collide in Orbax's temporary folder.
        """
        if self._pending is None:
            return
        try:
            self._pending.result()
        finally:
            if self._pending.done():
                self._pending = None

    def steps(self) -> list[int]:
        """Saved steps, oldest first."""
        self.wait()
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        """The newest saved step, or None."""
        steps = self.steps()
        return steps[-1] if steps else None

    def _read(self, step: int, template):
        """The verified state of ``step``; raises ValueError saying what is wrong."""
        try:
            with _QuietOrbax():
                meta = self._manager.restore(step, args=ocp.args.Composite(
                    meta=ocp.args.JsonRestore()))["meta"]
                if isinstance(meta, dict) and "layout" in meta:
                    like = pack(template)[0]
                else:  # written unpacked, by an earlier version
                    like = template
                abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, like)
                stored = self._manager.restore(step, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract)))["state"]
        except Exception as err:  # Orbax raises many types for damaged files
            first = str(err).strip().splitlines()[0][:160] if str(err).strip() else ""
            raise ValueError(f"unreadable ({type(err).__name__}: {first})") from None
        if not isinstance(meta, dict) or "sha256" not in meta:
            raise ValueError("no checksum saved with it")
        if _digest_of(stored, meta) != meta["sha256"]:
            raise ValueError("checksum mismatch: its arrays changed after saving")
        if not all_finite(stored):
            raise ValueError("it holds NaN or inf")
        return unpack(stored, meta["layout"], template) if "layout" in meta else stored

    def read(self, step: int, template):
        """The state of ``step``, shaped like ``template``, leaving the folder as it is
        (nothing is moved aside: e.g. another run's checkpoint that a run starts from).

        Raises:
          CheckpointError: no such step, or it is damaged or does not fit ``template``.
        """
        self.wait()
        if step not in self._manager.all_steps():
            raise CheckpointError(f"no checkpoint of step {step} under {self.directory}")
        self._hush_closed_loop_noise()
        try:
            return self._read(step, template)
        except ValueError as err:
            raise CheckpointError(f"checkpoint {self.directory / str(step)}: {err}") from None

    def read_as_dicts(self, step: int | None = None) -> dict:
        """The state of ``step`` (default: the newest) as nested dicts of NumPy arrays,
        without a template and on one device, whatever devices or processes wrote it.

        Keys are the names of the state's fields and dict keys (e.g.
        ``["members"]["params"]``). Raises ValueError where the step is damaged.
        """
        self.wait()
        step = self.latest_step() if step is None else step
        if step is None:
            raise CheckpointError(f"no checkpoint under {self.directory}")
        one = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        meta = self._manager.restore(step, args=ocp.args.Composite(
            meta=ocp.args.JsonRestore()))["meta"]
        if "layout" in meta:
            abstract = {group: jax.ShapeDtypeStruct(shape, dtype, sharding=one)
                        for group, (shape, dtype) in _packed_shapes(meta["layout"]).items()}
        else:  # written unpacked, by an earlier version: the tree as Orbax recorded it
            checkpointer = ocp.StandardCheckpointer()
            tree = checkpointer.metadata(self.directory / str(step) / "state")
            checkpointer.close()
            tree = getattr(tree, "item_metadata", tree).tree  # older Orbax: the tree itself
            abstract = jax.tree_util.tree_map(
                lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=one), tree)
        stored = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract)))["state"]
        if _digest_of(stored, meta) != meta.get("sha256"):
            raise ValueError(f"checkpoint {self.directory / str(step)}: checksum mismatch")
        if "layout" in meta:
            return unpack_as_dicts(stored, meta["layout"])
        return jax.tree_util.tree_map(np.asarray, stored)

    def restore(self, template, step: int | None = None):
        """The newest intact state (or that of ``step``), shaped like ``template``.

        A damaged step is reported in one line, moved aside to ``<step>.damaged`` (so a
        later save of that epoch can be written) and the next older step is tried.

        Raises:
          CheckpointError: no step left, or ``step`` damaged.
        """
        self.wait()
        candidates = [step] if step is not None else self.steps()[::-1]
        if not candidates:
            raise CheckpointError(f"no checkpoint under {self.directory}")
        self._hush_closed_loop_noise()
        problems = 0
        for i, candidate in enumerate(candidates):
            try:
                return self._read(candidate, template)
            except ValueError as err:
                older = candidates[i + 1] if i + 1 < len(candidates) else None
                then = f"falling back to step {older}" if older is not None else "none older"
                self._log(f"checkpoint {self.directory / str(candidate)} is damaged: {err}; "
                          f"{then}")
                problems += 1
                self._set_aside(candidate)
        raise CheckpointError(f"no intact checkpoint under {self.directory} (all "
                              f"{problems} damaged, see above); start again with "
                              "--overwrite")

    def _hush_closed_loop_noise(self) -> None:
        if self._unraisablehook is None:  # until close(): the noise can come late
            self._unraisablehook = sys.unraisablehook
            sys.unraisablehook = _drop_closed_loop_noise(self._unraisablehook)

    def _set_aside(self, step: int) -> None:
        path = self.directory / str(step)
        if path.exists():
            target, n = path.with_name(f"{step}.damaged"), 1
            while target.exists():
                target, n = path.with_name(f"{step}.damaged{n}"), n + 1
            path.rename(target)
        self._manager.reload()

    def close(self) -> None:
        try:
            self.wait()
        finally:
            if self._writer is not None:
                self._writer.shutdown(wait=True)
                self._writer = None
            self._manager.close()
        if self._unraisablehook is not None:
            gc.collect()  # the callbacks of failed reads are collected now, while filtered
            sys.unraisablehook, self._unraisablehook = self._unraisablehook, None
