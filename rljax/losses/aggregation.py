"""Reductions of per-token terms [B, T] to a scalar loss, and per-sequence reductions.

The four modes are those of verl's `loss_agg_mode` (with `m` the mask):

  token-mean               Σ_{b,t} x·m / Σ_{b,t} m                  (DAPO, Yu et al. 2025)
  seq-mean-token-mean      (1/B) Σ_b [Σ_t x·m / Σ_t m]              (GRPO, Shao et al. 2024)
  seq-mean-token-sum       (1/B) Σ_b Σ_t x·m
  seq-mean-token-sum-norm  Σ_{b,t} x·m / (B · norm_len)              (Dr. GRPO, Liu et al. 2025)

Global normalisers (gradient accumulation, data parallelism). Every mode is a sum over the
batch divided by a count, except for the per-sequence token count in seq-mean-token-mean, which
never crosses a sequence. A micro-batch (or a data-parallel shard) therefore gets the full
batch's value and gradient, after summing over micro-batches, if the count is the global one:

  num_tokens  the number of real tokens in the full batch, Σ m (read by token-mean only);
  num_seqs    the number of sequences in the full batch, B (read by the seq-* modes only).

Each mode reads only the normalisers it needs, so a train step may pass both, whatever the
mode. `global_counts(mask)` computes them from the full batch's mask.
"""

from __future__ import annotations

import jax.numpy as jnp

from ._common import as_float, check_choice, check_shapes, masked_mean, masked_sum, safe_div

AGG_MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")


def seq_sum(x, mask):
    """Σ_t x·m: per-sequence sum over real tokens, [B, T] -> [B] (e.g. a sequence log-prob)."""
    check_shapes(x=x, mask=mask)
    return masked_sum(as_float(x), mask, axis=-1)


def seq_mean(x, mask):
    """Σ_t x·m / Σ_t m: per-sequence mean over real tokens, [B, T] -> [B]; 0 for an empty row."""
    check_shapes(x=x, mask=mask)
    return masked_mean(as_float(x), mask, axis=-1)


def global_counts(mask):
    """{'num_tokens': Σ m, 'num_seqs': B} of a full batch's mask [B, T], to pass to `aggregate`."""
    check_shapes(ndim=2, mask=mask)
    return {"num_tokens": jnp.sum(jnp.asarray(mask, jnp.float32)), "num_seqs": mask.shape[0]}


def aggregate(x, mask, mode="token-mean", norm_len=None, *, num_tokens=None, num_seqs=None):
    """Reduce per-token terms x [B, T] over the real tokens (mask [B, T]) to a scalar.

    Args:
      x: [B, T] per-token terms.
      mask: [B, T], True (or 1) on real tokens; a float mask acts as per-token weights.
      mode: one of `AGG_MODES` (see the module docstring for the equations).
      norm_len: Dr. GRPO's constant length for `seq-mean-token-sum-norm` (e.g. the maximum
        generation length); None uses T, the padded length of `x`. Pass it explicitly when
        micro-batches are padded to different lengths.
      num_tokens: global real-token count, replacing Σ m in `token-mean`.
      num_seqs: global sequence count, replacing B in the `seq-*` modes.

    Returns:
      A scalar. A row or batch with no real token contributes 0 (never NaN).
    """
    check_choice("aggregation mode", mode, AGG_MODES)
    check_shapes(ndim=2, x=x, mask=mask)
    x = as_float(x)
    if mode == "token-mean":
        n = jnp.sum(jnp.asarray(mask, x.dtype)) if num_tokens is None else num_tokens
        return safe_div(jnp.sum(seq_sum(x, mask)), n)
    per_seq = seq_mean(x, mask) if mode == "seq-mean-token-mean" else seq_sum(x, mask)
    n = x.shape[0] if num_seqs is None else num_seqs
    if mode == "seq-mean-token-sum-norm":
        n = n * (x.shape[1] if norm_len is None else norm_len)
    return safe_div(jnp.sum(per_seq), n)
