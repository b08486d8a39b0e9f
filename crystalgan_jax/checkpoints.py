"""Orbax checkpoints of a :class:`~crystalgan_jax.training.TrainState`.

Two folders under the run's ``checkpoints/``: ``rolling/`` keeps the latest few
checkpoints (saved every M epochs, at the end of each stage and on Ctrl-C), and
``stage1/`` keeps the state at the end of stage 1 for good, so that stage 3 can be
re-run or varied from it. Checkpoint steps are global epoch counts.
"""

from __future__ import annotations

from pathlib import Path

import jax
import orbax.checkpoint as ocp


class Checkpoints:
    """Saves and restores train states under ``directory``."""

    def __init__(self, directory: str | Path, max_to_keep: int = 2):
        self.directory = Path(directory).resolve()
        # Synchronous saves: a checkpoint is complete on disk when save() returns, so a
        # crash or Ctrl-C right after loses nothing.
        options = dict(create=True, enable_async_checkpointing=False)
        self._rolling = ocp.CheckpointManager(
            self.directory / "rolling",
            options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, **options))
        self._stage1 = ocp.CheckpointManager(
            self.directory / "stage1", options=ocp.CheckpointManagerOptions(**options))

    def save(self, state, end_of_stage1: bool = False) -> int:
        """Saves ``state`` at step ``state.epoch``; returns the step."""
        step = int(state.epoch)
        managers = [self._rolling] + ([self._stage1] if end_of_stage1 else [])
        for manager in managers:
            if step not in manager.all_steps():
                manager.save(step, args=ocp.args.StandardSave(state), force=True)
        return step

    def latest_step(self) -> int | None:
        """The newest saved step in either folder, or None."""
        steps = [s for m in (self._rolling, self._stage1) for s in m.all_steps()]
        return max(steps) if steps else None

    def restore(self, template, step: int | None = None):
        """The state saved at ``step`` (default: the latest), shaped like ``template``."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint under {self.directory}")
        manager = self._rolling if step in self._rolling.all_steps() else self._stage1
        abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, template)
        return manager.restore(step, args=ocp.args.StandardRestore(abstract))

    def close(self) -> None:
        self._rolling.close()
        self._stage1.close()
