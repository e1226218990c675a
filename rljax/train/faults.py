"""What a long run does when something goes wrong: non-finite steps and preemption.

- A train step whose loss or gradients are not finite leaves the state unchanged and reports
  `nonfinite` = 1 (`steps.apply_update`); `NonFiniteGuard` counts those steps and stops the run
  after `max_consecutive` of them in a row, saying where, since by then the data or the
  hyperparameters, not one unlucky batch, are at fault.
- `Preemption` turns SIGTERM (what schedulers and cloud VMs send before they take a machine
  away) into a flag that the training loop reads after each iteration: the loop then saves a
  checkpoint, closes its files and raises `Preempted`, and the CLI exits with status 143
  (128 + SIGTERM, which schedulers read as "terminated"). Rerunning with the same workdir resumes.
"""

from __future__ import annotations

import signal
import threading

import numpy as np

PREEMPTED_EXIT_CODE = 128 + signal.SIGTERM


class NonFiniteError(RuntimeError):
    """Too many consecutive train steps had a non-finite loss or gradient."""


class Preempted(Exception):
    """The run was asked to stop (SIGTERM) and saved a checkpoint at `iteration` of `stage`."""

    def __init__(self, stage: str, iteration: int, directory: str):
        super().__init__(f"preempted: stage {stage!r} saved its checkpoint at iteration {iteration} in "
                         f"{directory}; rerun the same command with the same --workdir to resume")
        self.stage, self.iteration, self.directory = stage, iteration, directory


class NonFiniteGuard:
    """Counts skipped (non-finite) train steps; raises after `max_consecutive` in a row.

    `observe(flags, where)` takes the `nonfinite` metric of each optimiser step of one loop
    iteration (several with mini-batches), in order.
    """

    def __init__(self, max_consecutive: int = 5):
        if max_consecutive < 1:
            raise ValueError(f"max_consecutive must be >= 1, got {max_consecutive}")
        self.max_consecutive = max_consecutive
        self.total = 0
        self.consecutive = 0

    def observe(self, flags, where: str) -> int:
        """Records the steps' flags; returns how many of them were skipped."""
        skipped = 0
        for flag in np.atleast_1d(np.asarray(flags)).ravel():
            if flag > 0:
                skipped += 1
                self.consecutive += 1
                if self.consecutive >= self.max_consecutive:
                    raise NonFiniteError(
                        f"{self.consecutive} consecutive train steps had a non-finite loss or gradient "
                        f"(the last at {where}); the parameters were left unchanged by each. Check the "
                        "data and rewards for NaN/inf, or lower the learning rate")
            else:
                self.consecutive = 0
        self.total += skipped
        return skipped


class Preemption:
    """A context manager that catches SIGTERM into `requested` (and restores the old handler).

    With several JAX processes, `should_stop()` is true on every process as soon as any one
    received the signal, so that all of them save the same iteration (an all-gather per call).
    Outside the main thread no handler can be installed, and `should_stop()` stays False.
    """

    def __init__(self):
        self.requested = False
        self._previous = None

    def _handle(self, signum, frame):
        del signum, frame
        self.requested = True

    def __enter__(self) -> "Preemption":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None

    def should_stop(self) -> bool:
        from rljax.sharding import any_process

        return any_process(self.requested)
