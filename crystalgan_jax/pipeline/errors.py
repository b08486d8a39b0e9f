"""The errors a run (single or population) raises; each message says why and what to do."""

from __future__ import annotations

import signal


class RunError(Exception):
    """A run that cannot start or go on; the message says why and what to do."""


class OutputDirError(RunError):
    """The output folder cannot be used (not ours, not creatable, not writable)."""


class RunLockedError(RunError):
    """Another live process holds the output folder's lock."""


class ResumeMismatchError(RunError, ValueError):
    """``--resume`` with settings that differ from those the checkpoint was made with."""


class SettingsError(RunError, ValueError):
    """Settings that do not fit the data (e.g. a target composition larger than its rows)."""


class DivergenceError(RunError):
    """Training produced NaN or inf; the last finite state is checkpointed.

    Attributes:
      stage: stage name; epoch: epoch within the stage; global_epoch: over all stages;
      saved_epoch: the epoch of the checkpoint ``--resume`` continues from (or None).
    """

    def __init__(self, message: str, stage: str, epoch: int, global_epoch: int,
                 saved_epoch: int | None):
        super().__init__(message)
        self.stage, self.epoch = stage, epoch
        self.global_epoch, self.saved_epoch = global_epoch, saved_epoch


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM during a run; ``signum`` says which (exit code 128 + signum)."""

    def __init__(self, signum: int = signal.SIGINT):
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)
