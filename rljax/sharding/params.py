"""Model-aware placement: the shardings of the parameters of `models.init` and of the KV cache of
`models.init_cache` on a mesh, by the logical-axis rules of `rljax.sharding.mesh`, and parameters
placed or created with them.

Shapes come from `jax.eval_shape`, so the shardings of full-size presets cost nothing to plan.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.sharding import AbstractMesh, Mesh, NamedSharding, PartitionSpec

from rljax import models
from rljax.models.cache import CACHE_AXES, init_cache, map_arrays
from rljax.models.config import ModelConfig
from rljax.sharding.mesh import RULES, Rules, logical_to_sharding


def _tree_shardings(axes_tree, shapes_tree, mesh, rules: Rules):
    """Maps a pytree of logical specs and the matching pytree of shapes to `NamedSharding`s."""
    return jax.tree.map(
        lambda axes, leaf: logical_to_sharding(axes, leaf.shape, mesh, rules),
        axes_tree,
        shapes_tree,
        is_leaf=lambda x: isinstance(x, (PartitionSpec, tuple)),
    )


def param_shardings(cfg: ModelConfig, mesh: Mesh | AbstractMesh, rules: Rules = RULES) -> dict:
    """A pytree of `NamedSharding`s matching `models.init(cfg, key)`.

    Shapes come from `jax.eval_shape`, so this is cheap for full-size presets and never
    allocates parameters. An `AbstractMesh` gives shardings for planning without devices.
    """
    shapes = jax.eval_shape(functools.partial(models.init, cfg), jax.random.PRNGKey(0))
    return _tree_shardings(models.param_axes(cfg), shapes, mesh, rules)


def shard_params(cfg: ModelConfig, params: dict, mesh: Mesh, rules: Rules = RULES) -> dict:
    """`params` placed on `mesh` by the logical-axis rules (a `jax.device_put` of every leaf).

    On several processes every process must pass the same values (JAX checks this). To create
    parameters too large for one device, use `init_sharded` instead.
    """
    shardings = param_shardings(cfg, mesh, rules)
    if jax.tree.structure(params) != jax.tree.structure(shardings):
        raise ValueError(
            f"params do not have the layout of models.init for this config (scan_layers="
            f"{cfg.scan_layers}); convert with models.stack_layers / models.unstack_layers"
        )
    return jax.device_put(params, shardings)


def init_sharded(cfg: ModelConfig, key: jax.Array, mesh: Mesh, rules: Rules = RULES) -> dict:
    """`models.init(cfg, key)` created directly in its sharded layout.

    `models.init` is compiled with the parameter shardings as `out_shardings`, so each device
    only ever holds its own shards: no full-size parameter is materialised on one device. The
    values equal `models.init(cfg, key)` (JAX's partitionable threefry RNG does not depend on
    the sharding).
    """
    key = jax.device_put(key, NamedSharding(mesh, PartitionSpec()))
    init = jax.jit(functools.partial(models.init, cfg), out_shardings=param_shardings(cfg, mesh, rules))
    return init(key)


def cache_shardings(cfg: ModelConfig, mesh: Mesh, batch_size: int, max_len: int,
                    rules: Rules = RULES) -> dict:
    """`NamedSharding`s matching `models.init_cache(cfg, batch_size, max_len)` (CACHE_AXES)."""
    shapes = jax.eval_shape(lambda: init_cache(cfg, batch_size, max_len))
    return map_arrays(lambda name, leaf: logical_to_sharding(CACHE_AXES[name], leaf.shape, mesh, rules), shapes)


def generation_shardings(params, mesh: Mesh | AbstractMesh) -> dict:
    """The generation layout of `params` (arrays or `jax.eval_shape` structures with
    `NamedSharding`s on `mesh`): each leaf's sharding without its 'fsdp' split, which is what
    `GENERATION_RULES` give the model's parameters (tensor parallelism kept, replicated over data
    and fsdp). Read from the leaves' own shardings, so any parameter tree in the training layout
    (a policy, its adapters) has one."""
    def drop_fsdp(spec):
        axes = (a,) if isinstance(a := spec, str) else tuple(spec or ())
        kept = tuple(x for x in axes if x != "fsdp")
        return kept[0] if len(kept) == 1 else (kept or None)

    return jax.tree.map(lambda x: NamedSharding(mesh, PartitionSpec(*map(drop_fsdp, x.sharding.spec))), params)


def generation_dtypes(cfg: ModelConfig, params) -> dict:
    """The dtype of each leaf of `params` in the generation copy: the compute dtype where every
    use casts the leaf to it first (matrix weights, the embedding, biases, adapters), so that the
    copy is smaller and a decoding step reads fewer bytes with unchanged results; the parameter's
    own dtype for the norm scales (`RMSNorm` computes in float32) and the value head's weights
    (computed in float32)."""
    def dtype(path, x):
        names = [getattr(k, "key", None) for k in path]
        keep = names[-1] == "scale" or "value_head" in names or not jnp.issubdtype(x.dtype, jnp.floating)
        return x.dtype if keep else cfg.compute_dtype

    return jax.tree_util.tree_map_with_path(dtype, params)


def to_generation_layout(cfg: ModelConfig, params, mesh: Mesh):
    """A copy of `params` (in the training layout on `mesh`) in the generation layout
    (`generation_shardings`, `generation_dtypes`): one all-gather over 'fsdp' per rollout instead
    of one per generated token. The cast runs before the gather, so only compute-dtype bytes cross
    the interconnect. `params` stay valid (nothing is donated)."""
    return _generation_copy(cfg, params, mesh)(params)


def lower_to_generation_layout(cfg: ModelConfig, params, mesh: Mesh) -> jax.stages.Lowered:
    """`to_generation_layout` lowered ahead of time for `params` given as `jax.ShapeDtypeStruct`s
    with their training-layout shardings (nothing allocated): what the reshard costs."""
    return _generation_copy(cfg, params, mesh).lower(params)


def _generation_copy(cfg: ModelConfig, params, mesh: Mesh):
    """The jitted copy of `to_generation_layout` for the layout of `params`."""
    shardings = generation_shardings(params, mesh)
    return _jitted_copy(cfg, jax.tree.structure(shardings), tuple(jax.tree.leaves(shardings)))


@functools.cache
def _jitted_copy(cfg: ModelConfig, treedef, out_shardings: tuple):
    def copy(params):
        return jax.tree.map(lambda x, d: x.astype(d), params, generation_dtypes(cfg, params))

    return jax.jit(copy, out_shardings=jax.tree.unflatten(treedef, out_shardings))
