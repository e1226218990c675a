"""Supervised fine-tuning loss."""

from __future__ import annotations

import jax.numpy as jnp

from ._common import as_float, check_shapes, masked_mean, stop_metrics
from .aggregation import aggregate


def sft_loss(logp, mask, agg="token-mean", *, norm_len=None, num_tokens=None, num_seqs=None):
    """Masked negative log-likelihood (maximum likelihood on the target tokens):

      loss = aggregate(−log π_θ(y_t | y_<t), mask, agg)

    Args:
      logp: [B, T] log-probs of the target tokens (`token_logprobs(logits, targets)`).
      mask: [B, T], True on the tokens to learn (e.g. the response, not the prompt).
      agg and the keywords: see `aggregate` (token-mean: the usual per-token cross-entropy).

    Returns:
      (loss, metrics): nll (token mean) and perplexity (its exponential).
    """
    check_shapes(ndim=2, logp=logp, mask=mask)
    real = jnp.asarray(mask, bool)
    nll = jnp.where(real, -as_float(logp), 0.0)
    loss = aggregate(nll, real, agg, norm_len, num_tokens=num_tokens, num_seqs=num_seqs)
    token_nll = masked_mean(nll, real)
    return loss, stop_metrics({"nll": token_nll, "perplexity": jnp.exp(token_nll)})
