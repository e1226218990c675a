"""One stage loop for every training stage (SFT, RL, preference, reward model).

A stage runs `body(state, it) -> (state, metrics)` for iterations `start .. total - 1` and
takes care of what every stage needs around it:
  - resume: the state (its trainable part: frozen params are rebuilt, not saved) and the data
    sampler's position come from the stage's latest checkpoint, so a rerun continues exactly;
  - metrics fetched one iteration late: iteration `it`'s metrics are read from the device after
    iteration `it + 1` has been dispatched, so the host does not wait on the device; except
    before a checkpoint, which is written only once every row it covers is (a run killed in
    between then neither loses a row nor logs one twice);
  - non-finite updates counted (`faults.NonFiniteGuard`), and a run stopped after too many;
  - evaluation every `eval_every` iterations and at the last one;
  - checkpoints every `checkpoint.every` iterations and at the end; after SIGTERM
    (`faults.Preemption`) a checkpoint, then `Preempted`;
  - a metrics row per iteration in `metrics.jsonl` and TensorBoard, a progress bar.
Iteration `it` is logged at x = log_offset + it, so the stages of one run share a step axis. A
stage that logs rows of its own before iteration 0 (the RL stage's evaluation of its starting
policy) puts them at x >= `first_logged`, so that a stage restarted from scratch drops them with
the rest of its rows instead of logging them twice.
"""

from __future__ import annotations

import os
from typing import Any, Callable

import numpy as np

from rljax.data.sampler import PromptSampler
from rljax.sharding import to_host
from rljax.train.checkpoint import Checkpointer, abstract_like
from rljax.train.config import CheckpointConfig, LogConfig
from rljax.train.faults import NonFiniteGuard, Preempted, Preemption
from rljax.train.metrics import MetricsLogger
from rljax.train.state import TrainState

Body = Callable[[TrainState, int], tuple[TrainState, dict]]


def host_metrics(metrics: dict) -> dict[str, Any]:
    """Device metrics fetched in one transfer; strings (a sample completion) kept as they are."""
    arrays = {k: v for k, v in metrics.items() if not isinstance(v, str)}
    return {**{k: v for k, v in metrics.items() if isinstance(v, str)}, **to_host(arrays)}


class Stage:
    """The checkpoints, metrics and loop of the stage `name` (module docstring).

    workdir: where metrics.jsonl, TensorBoard events and (under checkpoints/<name>) the
    checkpoints go; total: iterations; state: the state to start from (and the template of a
    restore); sampler: the stage's data order, its position checkpointed with the state.
    """

    def __init__(self, name: str, workdir: str, total: int, state: TrainState, sampler: PromptSampler | None, *,
                 checkpoint: CheckpointConfig, log: LogConfig, log_offset: int = 0,
                 preemption: Preemption | None = None, first_logged: int | None = None, prefix: str = ""):
        self.name, self.total, self.log_offset, self.preemption = name, total, log_offset, preemption
        self.prefix, self.sampler, self.state, self.start = prefix, sampler, state, 0
        self.ckpt = Checkpointer(os.path.join(workdir, "checkpoints", name), save_every=checkpoint.every,
                                 keep=checkpoint.keep)
        if self.ckpt.latest_step() is not None:
            restored, meta = self.ckpt.restore(abstract_like(state.trainable_part()))
            self.state = restored.replace(frozen=state.frozen)
            self.start = meta["iteration"]
            if sampler is not None:
                sampler.position = meta["data_position"]
        self.logger = None
        if self.start < total:
            start_step = log_offset + self.start if self.start or first_logged is None else first_logged
            self.logger = MetricsLogger(workdir, total_steps=total, start_step=start_step, done_steps=self.start,
                                        tensorboard=log.tensorboard, progress=log.progress, description=name,
                                        stage=name, end_step=log_offset + total)

    @property
    def done(self) -> bool:
        return self.start >= self.total

    def log_row(self, step: int, metrics: dict, advance: bool = False) -> None:
        """A row of host metrics at x = `step` outside the iterations (e.g. an evaluation)."""
        if self.logger is not None:
            self.logger.log(step, metrics, advance=advance)

    def run(self, body: Body, *, guard: NonFiniteGuard | None = None,
            evaluate: Callable[[TrainState], dict] | None = None, eval_every: int = 0,
            progress_keys=()) -> TrainState:
        """Runs the remaining iterations; returns the final state (also `self.state`). The body's
        metrics are logged under `prefix` (a flag `nonfinite`, scalar or one per update, is
        counted by `guard`); `evaluate(state)`'s as they are; `progress_keys` as logged."""
        guard = guard if guard is not None else NonFiniteGuard()
        pending = None  # (iteration, metrics) not yet fetched from the device

        def flush():
            nonlocal pending
            (it, metrics), pending = pending, None
            metrics, row = host_metrics(metrics), {}
            if (flag := self.prefix + "nonfinite") in metrics:
                skipped = guard.observe(metrics.pop(flag), where=f"{self.name} iteration {it}")
                row = {flag + "_steps": float(skipped), flag + "_total": float(guard.total)}
            row.update({k: float(np.asarray(v)) for k, v in metrics.items() if not isinstance(v, str)})
            self.logger.log(self.log_offset + it, row, progress_keys=progress_keys)

        try:
            for it in range(self.start, self.total):
                state, metrics = body(self.state, it)
                metrics = {self.prefix + k: v for k, v in metrics.items()}
                if evaluate is not None and ((eval_every and (it + 1) % eval_every == 0) or it + 1 == self.total):
                    metrics = {**metrics, **evaluate(state)}
                if pending is not None:
                    flush()
                pending = (it, metrics)
                stop = self.preemption is not None and self.preemption.should_stop()
                if stop or self._saves_at(it + 1):  # a checkpoint never covers a row not yet written
                    flush()
                self._end_iteration(it, state, stop)
        finally:  # a preempted or failed stage still logs the last iteration it took
            if pending is not None:
                flush()
            self.close()
        return self.state

    def _saves_at(self, iteration: int) -> bool:
        return iteration % self.ckpt.save_every == 0 or iteration == self.total

    def _end_iteration(self, it: int, state: TrainState, stop: bool) -> None:
        self.state = state
        meta = {"iteration": it + 1, "data_position": self.sampler.position if self.sampler is not None else 0}
        self.ckpt.maybe_save(it + 1, state.trainable_part(), meta, force=stop or it + 1 == self.total)
        if stop:
            self.ckpt.wait()
            raise Preempted(self.name, it + 1, self.ckpt.directory)

    def close(self) -> None:
        self.ckpt.close()
        if self.logger is not None:
            self.logger.close()
