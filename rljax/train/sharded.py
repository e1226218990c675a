"""A pure train step jitted over a device mesh: shardings, donation, and placement of host data.

The step factories of `rljax.train.steps` return `step(state, batch, key) -> (state, metrics)`,
which knows nothing of devices. `shard_train_step` compiles it as one SPMD program over a
('data', 'fsdp', 'tensor') mesh (`rljax.sharding.make_mesh`):

  state    params by their logical axes (`rljax.sharding.RULES`); every optimiser-state subtree
           that mirrors the params (Adam's moments, an EMA, ...) like the params; the rest (step
           counts, the RNG key, schedules' counters) replicated.
  batch    every array of the batch pytree split along its leading B over the data-parallel axes
           ('data', 'fsdp').
  key      replicated.
  output   the state with the input's shardings (so the next step needs no resharding), the
           metrics replicated (readable on every process).

The state is donated: its buffers are reused for the new state, so a step holds one copy of the
params and optimiser moments, not two. The caller's state is invalid after the call.

Shardings are computed from shapes only, so the state and batch passed to `shard_train_step` may
be `jax.eval_shape` structures: nothing full-size needs to exist on one device to plan the step.

Notebook use (an RL learner; any pure step works alike):
    mesh = sharding.make_mesh(data=2, fsdp=4)
    learner = Learner(networks, rl, optimizer)
    sharded = shard_train_step(learner.learn, mesh, state, batch, networks.param_axes(),
                               frozen_axes=networks.frozen_axes(state.frozen))
    state = sharded.place_state(state)
    state, metrics = sharded(state, sharded.place_batch(batch), key)

Ahead of time: `MeshStep.lower(state, batch, key)` (and `ShardedStep.lower`) lower the step from
`jax.eval_shape` structures, on a mesh of any devices, including the compile-only devices of a
TPU topology (`experiments/aot_compile.py`, the HBM preflight of `rljax.train.preflight`).

The stages of `rljax.train.experiment` call a `MeshStep`: the plain
jitted step on one device, this sharded one on more, behind one signature; `place_rows` and
`on_mesh` (from `rljax.sharding`, re-exported here) place their host batches and trace their
model functions on the same mesh.

Several processes (`rljax.sharding.initialize_distributed`): every process runs the same calls
with the same global (not per-process) host values; `place_*` copies to each process's devices
only the shards they hold, and reshards on the devices the global arrays no process holds whole
(`rljax.sharding.to_host` is the way back to the host).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from rljax import sharding
from rljax.sharding import RULES, Rules, on_mesh, place, place_rows  # noqa: F401 - re-exported
from rljax.train.state import TrainState
from rljax.train.steps import Batch, Step


def _tree_shardings(axes: Any, tree: Any, mesh: Mesh, rules: Rules, what: str) -> Any:
    if jax.tree.structure(axes, is_leaf=_is_spec) != jax.tree.structure(tree):
        raise ValueError(f"the logical axes given for {what} do not have its structure; pass "
                         "models.param_axes(cfg) for the config the params were made with")
    return jax.tree.map(lambda a, p: sharding.logical_to_sharding(a, p.shape, mesh, rules), axes, tree,
                        is_leaf=_is_spec)


def state_shardings(state: TrainState, mesh: Mesh, param_axes: Any, rules: Rules = RULES,
                    frozen_axes: Any = None) -> TrainState:
    """`NamedSharding`s for every leaf of `state` (arrays or `jax.eval_shape` structures).

    param_axes is the trainable params' pytree of logical specs: `models.param_axes(cfg)`, or an
    RL learner's (`rljax.train.networks.Networks.param_axes`); frozen_axes the frozen params'
    (None when the state has none). An optimiser-state subtree is sharded like the params when
    it has the params' tree structure and leaf shapes; matching by structure, not by asking the
    optimiser (`optax.tree_map_params`), needs no optimiser here and covers any state that stores
    copies of the params. Every other leaf is replicated.
    """
    params_def = jax.tree.structure(state.params)
    params_sh = _tree_shardings(param_axes, state.params, mesh, rules, "state.params")
    frozen_sh = (None if state.frozen is None
                 else _tree_shardings(frozen_axes, state.frozen, mesh, rules, "state.frozen"))
    shapes = [p.shape for p in jax.tree.leaves(state.params)]
    replicated = NamedSharding(mesh, PartitionSpec())

    def mirrors_params(node) -> bool:
        return (jax.tree.structure(node) == params_def
                and [getattr(x, "shape", None) for x in jax.tree.leaves(node)] == shapes)

    opt_sh = jax.tree.map(lambda node: params_sh if mirrors_params(node) else replicated,
                          state.opt_state, is_leaf=mirrors_params)
    return TrainState(step=replicated, params=params_sh, opt_state=opt_sh, rng=replicated, frozen=frozen_sh)


def _is_spec(x) -> bool:
    return isinstance(x, (PartitionSpec, tuple))


def batch_shardings(batch: Any, mesh: Mesh, rules: Rules = RULES) -> Any:
    """Each [B, ...] array of a batch pytree (a dict, a `TrajectoryBatch`) split along B over the
    data-parallel axes that divide B (a batch smaller than data x fsdp is partly replicated
    rather than refused)."""
    return jax.tree.map(lambda x: sharding.batch_sharding(mesh, np.ndim(x), batch_size=np.shape(x)[0], rules=rules),
                        batch)


@dataclass(frozen=True)
class ShardedStep:
    """A train step compiled over `mesh`; call it like the pure step, on placed arguments."""

    mesh: Mesh
    rules: Rules
    state_shardings: TrainState
    batch_shardings: dict
    jitted: Any  # the jax.jit of the pure step, with the shardings and donation

    def __call__(self, state: TrainState, batch: Batch, key: jax.Array) -> tuple[TrainState, dict]:
        key = place(key, NamedSharding(self.mesh, PartitionSpec()))
        # The model's activation constraints resolve against the mesh and rules of the context
        # in which the step is traced.
        with sharding.use_mesh(self.mesh, self.rules):
            return self.jitted(state, batch, key)

    def lower(self, state: TrainState, batch: Batch, key: jax.Array) -> jax.stages.Lowered:
        """The step lowered for these shapes, ahead of time: `state`, `batch` and `key` may be
        `jax.eval_shape` structures (nothing is allocated or run), and the mesh may be of devices
        this process cannot run on (`jax.experimental.topologies`); `.compile()` then gives the
        executable, its `memory_analysis()` and its HLO."""
        with sharding.use_mesh(self.mesh, self.rules):
            return self.jitted.lower(state, batch, key)

    def place_state(self, state: TrainState) -> TrainState:
        return place(state, self.state_shardings)

    def place_batch(self, batch: Any) -> Any:
        return place(batch, self.batch_shardings)


def shard_train_step(step: Step, mesh: Mesh, state: TrainState, batch: Any, param_axes: Any,
                     rules: Rules = RULES, frozen_axes: Any = None) -> ShardedStep:
    """Jits the pure `step` over `mesh` with the shardings of `state` and `batch` (examples of
    the shapes and dtypes: arrays or `jax.eval_shape` structures) and the state donated.

    param_axes, frozen_axes: the logical specs of the trainable and frozen params (see
    `state_shardings`). A batch of other shapes (another B or T) compiles again but keeps the
    shardings computed here, so B must still be divisible by the data-parallel axes these
    shardings split it over.
    """
    state_sh = state_shardings(state, mesh, param_axes, rules, frozen_axes)
    batch_sh = batch_shardings(batch, mesh, rules)
    replicated = NamedSharding(mesh, PartitionSpec())
    jitted = jax.jit(step, in_shardings=(state_sh, batch_sh, replicated),
                     out_shardings=(state_sh, replicated), donate_argnums=0)
    return ShardedStep(mesh, rules, state_sh, batch_sh, jitted)


class MeshStep:
    """A pure train step jitted with its state donated, over `mesh`: what the training loops call,
    whatever the mesh.

    On a one-device mesh it is `jax.jit(step, donate_argnums=0)` and `place_state` returns its
    argument, so a one-device run compiles and computes exactly what it did before meshes. On
    more devices `place_state` puts the state on `state_shardings` and the first call compiles
    `shard_train_step` from the shapes of that call's state and batch (a loop knows its batch's
    shapes only once it has built one); every call places the batch (`ShardedStep.place_batch`),
    so host and device arrays are both accepted.
    """

    def __init__(self, step: Step, mesh: Mesh, param_axes: Any, frozen_axes: Any = None, rules: Rules = RULES):
        self.step, self.mesh, self.param_axes, self.frozen_axes, self.rules = step, mesh, param_axes, frozen_axes, rules
        self._plain = jax.jit(step, donate_argnums=0) if mesh.size == 1 else None
        self._sharded: ShardedStep | None = None

    def place_state(self, state: TrainState) -> TrainState:
        if self._plain is not None:
            return state
        return place(state, state_shardings(state, self.mesh, self.param_axes, self.rules, self.frozen_axes))

    def __call__(self, state: TrainState, batch: Batch, key: jax.Array) -> tuple[TrainState, dict]:
        if self._plain is not None:
            return self._plain(state, batch, key)
        return self._compiled_for(state, batch)(state, self._sharded.place_batch(batch), key)

    def lower(self, state: TrainState, batch: Batch, key: jax.Array) -> jax.stages.Lowered:
        """The step lowered ahead of time for the shapes of `state`, `batch` and `key` (arrays or
        `jax.eval_shape` structures; see `ShardedStep.lower`), as `__call__` would compile it: on
        a one-device mesh the plain jit, on more the sharded step (which `__call__` then reuses,
        so its shardings are those of these shapes)."""
        if self._plain is not None:
            return self._plain.lower(state, batch, key)
        return self._compiled_for(state, batch).lower(state, batch, key)

    def _compiled_for(self, state: TrainState, batch: Batch) -> ShardedStep:
        """The sharded step, built from the shapes of the first state and batch it is given."""
        if self._sharded is None:
            shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype), state)
            self._sharded = shard_train_step(self.step, self.mesh, shapes, batch, self.param_axes, self.rules,
                                             self.frozen_axes)
        return self._sharded


