"""Value-function (critic) loss for PPO."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ._common import as_float, check_range, check_shapes, masked_mean, masked_moments, safe_div, stop_metrics
from .aggregation import aggregate


def value_loss(
    values, old_values, returns, mask, clip=None, agg="token-mean", *,
    norm_len=None, num_tokens=None, num_seqs=None,
):
    """Squared-error value loss, optionally clipped around the old values (as in OpenAI's PPO
    baselines and the "implementation matters" study, Engstrom et al. 2020):

      ℓ_t = 0.5·(V_t − R_t)²
      with clip = c:  ℓ_t = 0.5·max((V_t − R_t)², (V_old,t + clip(V_t − V_old,t, −c, c) − R_t)²)
      loss = aggregate(ℓ, mask, agg)

    Args:
      values: [B, T] current predictions V (differentiable).
      old_values: [B, T] predictions at rollout time V_old (gradient stopped); may be None
        without clip.
      returns: [B, T] targets R, e.g. from `gae` (gradient stopped).
      mask: [B, T]; clip: c or None; agg and the keywords: see `aggregate`.

    Returns:
      (loss, metrics): value_mean, return_mean, explained_variance (1 − Var(R − V)/Var(R) over
      real tokens), value_clipfrac (with clip: the fraction of tokens where the clipped error is
      the larger one).
    """
    if clip is not None and old_values is None:
        raise ValueError("value_loss with clip needs old_values")
    check_range("clip", clip, low=0.0)
    check_shapes(ndim=2, values=values, old_values=old_values, returns=returns, mask=mask)
    real = jnp.asarray(mask, bool)
    v = jnp.where(real, as_float(values), 0.0)
    r = jnp.where(real, jax.lax.stop_gradient(as_float(returns)), 0.0)
    err = jnp.square(v - r)
    metrics = {"value_mean": masked_mean(v, real), "return_mean": masked_mean(r, real)}
    if clip is not None:
        old = jnp.where(real, jax.lax.stop_gradient(as_float(old_values)), 0.0)
        clipped_err = jnp.square(old + jnp.clip(v - old, -clip, clip) - r)
        metrics["value_clipfrac"] = masked_mean((clipped_err > err).astype(err.dtype), real)
        err = jnp.maximum(err, clipped_err)
    _, var_residual = masked_moments(r - v, real, ddof=0)
    _, var_returns = masked_moments(r, real, ddof=0)
    metrics["explained_variance"] = 1.0 - safe_div(var_residual, var_returns)
    loss = aggregate(0.5 * err, real, agg, norm_len, num_tokens=num_tokens, num_seqs=num_seqs)
    return loss, stop_metrics(metrics)
