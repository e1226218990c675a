"""The key/value cache: an explicit pytree, passed into `apply` and returned updated.

Layout (S slots, written left to right; every row of the batch writes the same slots):
  k          L arrays [B, K, H, S]  each layer's keys (slots last), in the compute dtype
  v          L arrays [B, K, S, H]  each layer's values
  mask       [B, S] bool      True where a slot holds a real token (padding never attended)
  positions  [B, S] int32     the RoPE position of the token in each slot (for sliding windows)
  index      [] int32         the next slot to write

Rows with left-padded prompts of different lengths share slot indices but not positions, so
attention is masked by `mask`, ordered by slot (causality) and windowed by position.

Why one buffer per layer, heads-major. A decoding step is one token per row, and its attention
is two small batched products per layer, q·k over S slots and p·v, that read the whole layer's
cache. As its own buffer, a layer's cache is what the dot reads, in place; as a slice of one
stacked [L, ...] buffer, XLA:CPU copied the slice out first, every layer of every step, and with
the slots before the kv heads ([B, S, K, H]) it transposed it too. Keys are stored slots last, so
that q·k is an ordinary [G, H] x [H, S] product for each (row, kv head). Measured on
SmolLM2-135M (float32, 2-core Xeon) at 255 slots, one decoding step: 274 ms at batch 64 and
102 ms at batch 16 with the stacked [L, B, S, K, H] buffer, 215 ms and 88 ms with per-layer
[B, K, S, H] keys and values, 183 ms and 85 ms with the keys slots last.
Training scans over stacked layers (`scan_layers`) and has no cache; a cached forward pass runs
the per-layer layout (`models.per_layer_layout`).
"""

from __future__ import annotations

from typing import TypedDict

import jax
import jax.numpy as jnp

from rljax.models.config import ModelConfig


class Cache(TypedDict):
    k: tuple[jax.Array, ...]
    v: tuple[jax.Array, ...]
    mask: jax.Array
    positions: jax.Array
    index: jax.Array


# Logical axis names of each cache entry's arrays (every layer's, for k and v), for sharding (see
# rljax.sharding).
CACHE_AXES = {
    "k": ("batch", "act_kv_heads", "head_dim", "cache_length"),
    "v": ("batch", "act_kv_heads", "cache_length", "head_dim"),
    "mask": ("batch", "cache_length"),
    "positions": ("batch", "cache_length"),
    "index": (),
}


def init_cache(cfg: ModelConfig, batch_size: int, max_len: int, dtype=None) -> Cache:
    """An empty cache for `batch_size` rows and `max_len` slots (prompt plus generated tokens)."""
    dtype = jnp.dtype(dtype or cfg.dtype)
    values = (batch_size, cfg.n_kv_heads, max_len, cfg.head_dim)
    keys = (batch_size, cfg.n_kv_heads, cfg.head_dim, max_len)
    return Cache(
        k=tuple(jnp.zeros(keys, dtype) for _ in range(cfg.n_layers)),
        v=tuple(jnp.zeros(values, dtype) for _ in range(cfg.n_layers)),
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


def write_keys_values(cache: Cache, k, v) -> Cache:
    """Writes every layer's keys and values, k L arrays [B, K, H, T] and v L arrays [B, K, T, H]
    (the cache's layouts), at slots index..index+T-1.

    After the forward pass has read the cache: inside a decoding loop XLA then updates each
    layer's buffer in place.
    """
    def write(name, new):
        start = [0] * 4
        start[CACHE_AXES[name].index("cache_length")] = cache["index"]
        return tuple(jax.lax.dynamic_update_slice(b, n.astype(b.dtype), start) for b, n in zip(cache[name], new))

    return Cache(**{**cache, "k": write("k", k), "v": write("v", v)})


def map_arrays(fn, cache: Cache) -> Cache:
    """The cache with fn(name, array) for each of its arrays (each layer's, for k and v): for
    what treats arrays by their logical axes, `CACHE_AXES[name]`."""
    return Cache(**{name: jax.tree.map(lambda x, name=name: fn(name, x), value) for name, value in cache.items()})


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
