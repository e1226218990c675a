"""Checkpoints with orbax: asynchronous saves, keep-N, and resume from the latest step.

A checkpoint holds the whole `TrainState` pytree (policy, critic, optimiser, step, RNG) and a
JSON dict of host-side state (data position, anything else needed to continue exactly).

Restoring tells two failures apart: a checkpoint that cannot be read (a partial write, a
truncated or corrupt file) is set aside and the one before it is used; a readable checkpoint
whose arrays do not fit the state to restore (another model size, another optimiser) raises
`CheckpointMismatchError` and touches nothing, since every older step of that directory was
written by the same other config.
"""

from __future__ import annotations

import os
import warnings
from typing import Any

import jax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from rljax import sharding


# Differing leaves named in a CheckpointMismatchError; the count of the others follows.
_MISMATCHES_SHOWN = 5


class CheckpointMismatchError(ValueError):
    """A readable checkpoint whose tree structure, shapes or dtypes differ from the restore
    target's: the directory was written by a different config. Nothing is renamed or deleted."""


class Checkpointer:
    """Saves `(state, meta)` every `save_every` steps into `directory`, keeping the last `keep`."""

    def __init__(self, directory: str, save_every: int = 100, keep: int = 3, async_save: bool = True):
        self.directory = os.path.abspath(directory)
        self.save_every = save_every
        # Handlers registered up front (not on first use), so that the state's metadata can be
        # read before it is restored.
        registry = ocp.handlers.DefaultCheckpointHandlerRegistry()
        for item, args in (("state", ocp.args.StandardSave), ("state", ocp.args.StandardRestore),
                           ("meta", ocp.args.JsonSave), ("meta", ocp.args.JsonRestore)):
            registry.add(item, args)
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep, create=True, enable_async_checkpointing=async_save
            ),
            handler_registry=registry,
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

        The checkpoint's saved tree structure, shapes and dtypes are compared with
        `abstract_state` first; any difference raises `CheckpointMismatchError` (the workdir
        was written by a different config) and leaves the directory as it is.

        Without `step`, the newest checkpoint that can be read: one that fails to read (its
        metadata or its arrays: a partial write, a truncated or corrupt file) is renamed
        `<step>.corrupt` (kept for inspection, invisible to later restores and saves) with a
        warning, and the one before it is tried. On several processes, each reading its own
        shards, a step that fails on any of them is set aside by all, so they all continue from
        the same step; a mismatch, read from the same metadata by all, stops them all alike."""
        if step is not None:
            self._check_fits(abstract_state, step, self._saved_arrays(step))
            return self._restore(abstract_state, step)
        steps = sorted(self._manager.all_steps(), reverse=True)
        if not steps:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        for i, candidate in enumerate(steps):
            saved, problem = _attempt(self._saved_arrays, candidate)
            if not sharding.any_process(problem is not None):
                self._check_fits(abstract_state, candidate, saved)
                restored, problem = _attempt(self._restore, abstract_state, candidate)
                if not sharding.any_process(problem is not None):
                    return restored
            fallback = f"falling back to step {steps[i + 1]}" if i + 1 < len(steps) else "no older one"
            warnings.warn(f"checkpoint step {candidate} in {self.directory} cannot be restored "
                          f"({problem or 'on another process'}); moved aside as {candidate}.corrupt, "
                          f"{fallback}", stacklevel=2)
            self._set_aside(candidate)
        raise FileNotFoundError(f"no readable checkpoint in {self.directory} (tried steps {steps})")

    def _saved_arrays(self, step: int) -> dict[str, tuple[tuple[int, ...], Any]]:
        """Path ("params/embed/embedding") -> (shape, dtype) of each array saved at `step`,
        from orbax's metadata; raises when that cannot be read."""
        metadata = self._manager.metadata(step).item_metadata["state"]
        if metadata is None:
            raise FileNotFoundError(f"no metadata for the state in {os.path.join(self.directory, str(step))}")
        return _shapes_and_dtypes(metadata)

    def _check_fits(self, abstract_state: Any, step: int, saved: dict) -> None:
        expected = _shapes_and_dtypes(abstract_state)
        problems = []
        for path in [*expected, *(p for p in saved if p not in expected)]:
            if path not in saved:
                problems.append(f"{path}: not saved, expected {_describe(expected[path])}")
            elif path not in expected:
                problems.append(f"{path}: saved {_describe(saved[path])}, not in the state to restore")
            elif saved[path] != expected[path]:
                problems.append(f"{path}: saved {_describe(saved[path])}, expected {_describe(expected[path])}")
        if problems:
            more = len(problems) - _MISMATCHES_SHOWN
            listed = "; ".join(problems[:_MISMATCHES_SHOWN]) + (f"; and {more} more" if more > 0 else "")
            raise CheckpointMismatchError(
                f"checkpoint step {step} in {self.directory} was written by a different config "
                f"(model size, optimiser or state layout): {listed}; resume with the config that wrote "
                f"it, or use a fresh directory (nothing was moved or deleted)")

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


def _attempt(read, *args) -> tuple[Any, str | None]:
    """(read(*args), None), or (None, the error) when reading fails: any failure of a read is
    taken for an unreadable checkpoint."""
    try:
        return read(*args), None
    except Exception as error:  # noqa: BLE001 - orbax and tensorstore raise many types
        return None, f"{type(error).__name__}: {error}"


def _shapes_and_dtypes(tree: Any) -> dict[str, tuple[tuple[int, ...], Any]]:
    """Path -> (shape, dtype) of each leaf of a pytree of arrays, ShapeDtypeStructs or orbax
    array metadata, with paths spelled as orbax saves them (tuples and NamedTuples by index and
    field, like lists and dicts; empty nodes left out)."""
    return {path: (tuple(leaf.shape), leaf.dtype)
            for path, leaf in ocp.tree.to_flat_dict(tree, sep="/").items()}


def _describe(shape_and_dtype: tuple[tuple[int, ...], Any]) -> str:
    shape, dtype = shape_and_dtype
    return f"{shape} {dtype}"


def abstract_like(tree: Any) -> Any:
    """ShapeDtypeStructs (with shardings) of a concrete pytree: the restore target for `tree`."""
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)), tree
    )
