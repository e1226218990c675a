"""Pure functional entry points: `init` and `apply` over plain parameter pytrees."""

from __future__ import annotations

import functools
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from rljax.models.cache import Cache
from rljax.models.config import ModelConfig
from rljax.models.layout import unstack_layers
from rljax.models.transformer import Transformer


class Output(NamedTuple):
    """Everything one forward pass computes. logits/values are None when the head is absent."""

    logits: jax.Array | None  # [B, T, V] float32
    values: jax.Array | None  # [B, T] float32 (value head)
    hidden: jax.Array  # [B, T, D] after the final norm
    cache: Cache | None


def _init_variables(cfg: ModelConfig, key: jax.Array):
    tokens = jnp.zeros((1, 1), jnp.int32)
    return Transformer(cfg).init(key, tokens, jnp.zeros_like(tokens), jnp.ones((1, 1), bool), None)


@functools.partial(jax.jit, static_argnums=0)
def init(cfg: ModelConfig, key: jax.Array) -> dict:
    """Fresh parameters: a pytree (nested dicts) of arrays in `cfg.param_dtype`."""
    return nn.meta.unbox(_init_variables(cfg, key)["params"])


def param_axes(cfg: ModelConfig) -> dict:
    """The logical axis names of every parameter: a pytree of `PartitionSpec`s, like `init`'s."""
    boxed = jax.eval_shape(functools.partial(_init_variables, cfg), jax.random.PRNGKey(0))
    return nn.get_partition_spec(boxed)["params"]


# LoRA adapters (`rljax.models.lora`) travel with the params they adapt, under this key.
ADAPTERS = "lora"


def variables(params: dict) -> dict:
    """The Linen variables of a params pytree: its adapters (the `ADAPTERS` entry, when there
    is one) are a collection of their own beside "params"."""
    if ADAPTERS not in params:
        return {"params": params}
    return {"params": {k: v for k, v in params.items() if k != ADAPTERS}, ADAPTERS: params[ADAPTERS]}


def per_layer_layout(cfg: ModelConfig, params: dict) -> tuple[ModelConfig, dict]:
    """(cfg, params) in the per-layer layout, which a forward pass with a cache runs: a
    `scan_layers` config's stacked layers (and adapters) are split into `layers_0`, ...; under
    jit, one copy of the weights per call. Other configs are returned as they are."""
    if not cfg.scan_layers:
        return cfg, params
    params = unstack_layers(params, cfg.n_layers)
    if ADAPTERS in params:
        params[ADAPTERS] = unstack_layers(params[ADAPTERS], cfg.n_layers)
    return cfg.replace(scan_layers=False), params


def default_positions(mask: jax.Array, cache: Cache | None = None) -> jax.Array:
    """cumsum(mask) - 1, continued from the real tokens already in the cache; padding gets 0."""
    positions = jnp.cumsum(mask.astype(jnp.int32), axis=1) - 1
    if cache is not None:
        positions = positions + jnp.sum(cache["mask"], axis=1, dtype=jnp.int32)[:, None]
    return jnp.maximum(positions, 0)


@functools.partial(jax.jit, static_argnums=0)
def forward(cfg: ModelConfig, params: dict, tokens: jax.Array, positions: jax.Array | None = None,
            mask: jax.Array | None = None, cache: Cache | None = None) -> Output:
    """One forward pass over tokens [B, T] returning every head's output (see `Output`).

    mask [B, T] is True on real tokens (default: all); padding is never attended to.
    With a cache, the T tokens are written at its next slots and attend to everything before.
    """
    tokens = jnp.asarray(tokens)
    if tokens.ndim != 2:
        raise ValueError(f"tokens must be [B, T], got shape {tokens.shape}")
    mask = jnp.ones(tokens.shape, bool) if mask is None else jnp.asarray(mask, bool)
    if positions is None:
        positions = default_positions(mask, cache)
    if cache is not None:
        cfg, params = per_layer_layout(cfg, params)
    outputs, cache = Transformer(cfg).apply(variables(params), tokens, positions, mask, cache)
    return Output(outputs.get("logits"), outputs.get("values"), outputs["hidden"], cache)


def apply(cfg: ModelConfig, params: dict, tokens: jax.Array, positions: jax.Array | None = None,
          mask: jax.Array | None = None, cache: Cache | None = None):
    """logits [B, T, V] (float32) and the updated cache (None when no cache was given)."""
    if not cfg.lm_head:
        raise ValueError("this config has no LM head (lm_head=False); use models.forward for values")
    out = forward(cfg, params, tokens, positions, mask, cache)
    return out.logits, out.cache


def last_token_values(values: jax.Array, mask: jax.Array) -> jax.Array:
    """Reads a per-token head at each row's last real token: values [B, T], mask [B, T] -> [B].

    This is the reward-model convention (Ouyang et al. 2022): the scalar reward of a sequence is
    the head's output at its final token.
    """
    t = jnp.arange(mask.shape[1])
    last = jnp.max(jnp.where(mask, t, -1), axis=1)
    return jnp.take_along_axis(values, jnp.maximum(last, 0)[:, None], axis=1)[:, 0]


def reward(cfg: ModelConfig, params: dict, tokens: jax.Array, mask: jax.Array,
           positions: jax.Array | None = None) -> jax.Array:
    """Per-sequence scalar reward [B] from the value head, read at the last real token."""
    if not cfg.value_head:
        raise ValueError("reward() needs a config with value_head=True")
    out = forward(cfg, params, tokens, positions, mask)
    return last_token_values(out.values, mask)


def count_params(params) -> int:
    """Number of scalars in a parameter pytree (works on `jax.eval_shape` outputs too)."""
    return sum(int(x.size) for x in jax.tree.leaves(params))
