"""Checkpoints with orbax: asynchronous saves, keep-N, and resume from the latest step.

A checkpoint holds the whole `TrainState` pytree (policy, critic, optimiser, step, RNG) and a
JSON dict of host-side state (data position, anything else needed to continue exactly).
"""

from __future__ import annotations

import os
import warnings
from typing import Any

import jax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from rljax import sharding


class Checkpointer:
    """Saves `(state, meta)` every `save_every` steps into `directory`, keeping the last `keep`."""

    def __init__(self, directory: str, save_every: int = 100, keep: int = 3, async_save: bool = True):
        self.directory = os.path.abspath(directory)
        self.save_every = save_every
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep, create=True, enable_async_checkpointing=async_save
            ),
            item_names=("state", "meta"),
        )

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def maybe_save(self, step: int, state: Any, meta: dict, force: bool = False) -> bool:
        """Saves at multiples of `save_every` (or when forced); returns whether it saved."""
        if not force and (step % self.save_every != 0):
            return False
        if step in self._manager.all_steps():
            return False
        return self._manager.save(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
            force=True,
        )

    def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, dict]:
        """Restores the state at `step` onto the shardings of `abstract_state` (a pytree of
        `jax.ShapeDtypeStruct`s with `.sharding`, e.g. from `jax.eval_shape`).

        Without `step`, the newest checkpoint that can be read: one that fails to restore (a
        partial write, a truncated or corrupt file) is renamed `<step>.corrupt` (kept for
        inspection, invisible to later restores and saves) with a warning, and the one before it
        is tried. On several processes, each reading its own shards, a step that fails on any
        of them is set aside by all, so they all continue from the same step."""
        if step is not None:
            return self._restore(abstract_state, step)
        steps = sorted(self._manager.all_steps(), reverse=True)
        if not steps:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        for i, candidate in enumerate(steps):
            try:
                restored, problem = self._restore(abstract_state, candidate), None
            except Exception as error:  # noqa: BLE001 - any failure to read means "unusable"
                restored, problem = None, f"{type(error).__name__}: {error}"
            if not sharding.any_process(problem is not None):
                return restored
            fallback = f"falling back to step {steps[i + 1]}" if i + 1 < len(steps) else "no older one"
            warnings.warn(f"checkpoint step {candidate} in {self.directory} cannot be restored "
                          f"({problem or 'on another process'}); moved aside as {candidate}.corrupt, "
                          f"{fallback}", stacklevel=2)
            self._set_aside(candidate)
        raise FileNotFoundError(f"no readable checkpoint in {self.directory} (tried steps {steps})")

    def _restore(self, abstract_state: Any, step: int) -> tuple[Any, dict]:
        restored = self._manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()
            ),
        )
        return restored["state"], dict(restored["meta"])

    def _set_aside(self, step: int) -> None:
        path = os.path.join(self.directory, str(step))
        target = path + ".corrupt"
        suffix = 1
        while os.path.exists(target):
            target, suffix = f"{path}.corrupt{suffix}", suffix + 1
        if jax.process_index() == 0 and os.path.exists(path):
            os.replace(path, target)
        if jax.process_count() > 1:  # the others reload only once the step has moved
            multihost_utils.sync_global_devices(f"set aside {path}")
        self._manager.reload()

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


def abstract_like(tree: Any) -> Any:
    """ShapeDtypeStructs (with shardings) of a concrete pytree: the restore target for `tree`."""
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)), tree
    )
