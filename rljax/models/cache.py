"""The key/value cache: an explicit pytree, passed into `apply` and returned updated.

Layout (S slots, written left to right; every row of the batch writes the same slots):
  k, v       [L, B, S, K, H]  keys and values of every layer, in the compute dtype
  mask       [B, S] bool      True where a slot holds a real token (padding never attended)
  positions  [B, S] int32     the RoPE position of the token in each slot (for sliding windows)
  index      [] int32         the next slot to write

Rows with left-padded prompts of different lengths share slot indices but not positions, so
attention is masked by `mask`, ordered by slot (causality) and windowed by position.
"""

from __future__ import annotations

from typing import TypedDict

import jax
import jax.numpy as jnp

from rljax.models.config import ModelConfig


class Cache(TypedDict):
    k: jax.Array
    v: jax.Array
    mask: jax.Array
    positions: jax.Array
    index: jax.Array


# Logical axis names of each cache entry, for sharding (see rljax.sharding).
CACHE_AXES = {
    "k": ("layers", "batch", "cache_length", "act_kv_heads", "head_dim"),
    "v": ("layers", "batch", "cache_length", "act_kv_heads", "head_dim"),
    "mask": ("batch", "cache_length"),
    "positions": ("batch", "cache_length"),
    "index": (),
}


def init_cache(cfg: ModelConfig, batch_size: int, max_len: int, dtype=None) -> Cache:
    """An empty cache for `batch_size` rows and `max_len` slots (prompt plus generated tokens)."""
    dtype = jnp.dtype(dtype or cfg.dtype)
    shape = (cfg.n_layers, batch_size, max_len, cfg.n_kv_heads, cfg.head_dim)
    return Cache(
        k=jnp.zeros(shape, dtype),
        v=jnp.zeros(shape, dtype),
        mask=jnp.zeros((batch_size, max_len), bool),
        positions=jnp.zeros((batch_size, max_len), jnp.int32),
        index=jnp.zeros((), jnp.int32),
    )


def write_tokens(cache: Cache, mask: jax.Array, positions: jax.Array) -> Cache:
    """Records the mask [B, T] and positions [B, T] of T new tokens at slots index..index+T-1.

    Keys and values follow with `write_keys_values`, and `index` advances after both (see
    `advance`).
    """
    start = (0, cache["index"])
    return Cache(
        k=cache["k"],
        v=cache["v"],
        mask=jax.lax.dynamic_update_slice(cache["mask"], mask, start),
        positions=jax.lax.dynamic_update_slice(cache["positions"], positions.astype(jnp.int32), start),
        index=cache["index"],
    )


def write_keys_values(cache: Cache, k: jax.Array, v: jax.Array) -> Cache:
    """Writes every layer's keys and values k, v [L, B, T, K, H] at slots index..index+T-1.

    One write for all layers, after the forward pass has read the cache: inside a decoding loop
    XLA then updates the cache buffer in place.
    """
    start = (0, 0, cache["index"], 0, 0)
    return Cache(**{**cache,
                    "k": jax.lax.dynamic_update_slice(cache["k"], k.astype(cache["k"].dtype), start),
                    "v": jax.lax.dynamic_update_slice(cache["v"], v.astype(cache["v"].dtype), start)})


def advance(cache: Cache, num_tokens: int) -> Cache:
    return Cache(**{**cache, "index": cache["index"] + num_tokens})


def attention_mask(
    q_slots: jax.Array,
    q_positions: jax.Array,
    kv_slots: jax.Array,
    kv_mask: jax.Array,
    kv_positions: jax.Array,
    window: int | None,
) -> jax.Array:
    """Which keys each query may attend to: [B, T, S] bool.

    q_slots [T] and kv_slots [S] order tokens (causality); kv_mask [B, S] drops padding;
    with a sliding `window`, a query at position p sees keys at positions in (p - window, p].
    """
    allowed = (kv_slots[None, None, :] <= q_slots[None, :, None]) & kv_mask[:, None, :]
    if window is not None:
        allowed &= q_positions[:, :, None] - kv_positions[:, None, :] < window
    return allowed
