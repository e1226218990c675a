"""Per-token quantities from logits: log-probabilities of targets and entropies.

Memory. With V ≈ 150k, a float32 [B, T, V] array is the largest thing in an RL step. A plain
`jax.nn.log_softmax(logits.astype(float32))` materialises one in the forward pass and autodiff
keeps another (the softmax) for the backward pass. Here the B·T token rows are processed
`chunk_size` rows at a time by `jax.lax.map`, each chunk under `jax.checkpoint`, so the float32
work array exists for one chunk at a time, in the forward pass and again (recomputed) in the
backward pass; only the logits themselves (in their own dtype) and their cotangent are full size.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

DEFAULT_CHUNK_SIZE = 512  # token rows per chunk: 512 × 152k vocab × 4 bytes ≈ 311 MB of float32


def _chunk_rows(n, chunk_size):
    """Rows per chunk: a divisor of n in [chunk_size/2, chunk_size] if there is one, so that no
    remainder has to be sliced off (a copy of the logits); else chunk_size."""
    if chunk_size is None or chunk_size >= n:
        return n
    for rows in range(chunk_size, (chunk_size + 1) // 2 - 1, -1):
        if n % rows == 0:
            return rows
    return chunk_size


def _map_token_rows(row_fn, logits, *per_token, chunk_size):
    """Apply row_fn(logits_row [V], *scalars) -> scalar to every token; returns [B, T] float32.

    Rows are the flattened B·T tokens (a free reshape, no transpose), mapped about `chunk_size`
    at a time (see `_chunk_rows`); `chunk_size=None` processes all rows as one chunk.
    """
    if logits.ndim != 3:
        raise ValueError(f"logits must have shape [B, T, V], got {logits.shape}")
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer or None, got {chunk_size}")
    for a in per_token:
        if a.shape != logits.shape[:2]:
            raise ValueError(f"targets must have shape {logits.shape[:2]} (logits' [B, T]), got {a.shape}")
    lead, vocab = logits.shape[:2], logits.shape[2]
    rows = (logits.reshape(-1, vocab),) + tuple(a.reshape(-1) for a in per_token)
    fn = jax.checkpoint(lambda args: row_fn(*args))
    out = jax.lax.map(fn, rows, batch_size=_chunk_rows(rows[0].shape[0], chunk_size))
    return out.reshape(lead)


def _target_logprob(row, target):
    row = row.astype(jnp.float32)
    return row[target] - jax.nn.logsumexp(row)


def _entropy(row):
    row = row.astype(jnp.float32)
    logp = row - jax.nn.logsumexp(row)
    return -jnp.sum(jnp.exp(logp) * logp)


def token_logprobs(logits, targets, chunk_size=DEFAULT_CHUNK_SIZE):
    """log π(targets | context) per token: log_softmax(logits)[b, t, targets[b, t]].

    Args:
      logits: [B, T, V], any float dtype (computed in float32).
      targets: [B, T] integer token ids (for next-token prediction, the tokens shifted by one).
      chunk_size: token rows per chunk (see the module docstring); None: one chunk.

    Returns:
      [B, T] float32. Every position is computed; mask padding downstream.
    """
    return _map_token_rows(_target_logprob, logits, targets, chunk_size=chunk_size)


def entropy(logits, chunk_size=DEFAULT_CHUNK_SIZE):
    """Entropy of the next-token distribution per token: H_t = −Σ_v π_v log π_v.

    Args:
      logits: [B, T, V], any float dtype (computed in float32).
      chunk_size: token rows per chunk (see the module docstring); None: one chunk.

    Returns:
      [B, T] float32, differentiable (for an entropy bonus).
    """
    return _map_token_rows(_entropy, logits, chunk_size=chunk_size)
