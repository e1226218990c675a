"""Per-token estimators of KL(π ‖ π_ref) from samples of π.

J. Schulman, "Approximating KL divergence" (2020), http://joschu.net/blog/kl-approx.html.
With tokens sampled from π and d = log π − log π_ref (so r = π_ref/π = exp(−d)):

  k1 = d                     unbiased, high variance, can be negative
  k2 = d²/2                  biased (exact to second order for nearby π, π_ref), low variance, ≥ 0
  k3 = exp(−d) + d − 1       = (r − 1) − log r: unbiased, low variance, ≥ 0

Straight-through kinds "k1+" and "k3+": the value of k1 (k3), the gradient of k2:
  k2 + stop_gradient(kN − k2).
Why: as a loss on on-policy samples, ∇_θ k2 = d·∇_θ log π, whose expectation is the exact
gradient ∇_θ KL(π‖π_ref); the pathwise gradients of k1 (∇ log π, zero in expectation) and of
k3 ((1 − r)·∇ log π, the gradient of KL(π_ref‖π)) are not (Tang & Munos 2025, "On a few
pitfalls in KL divergence gradient estimation for RL"). The "+" kinds report the unbiased value
and train with the right gradient, as verl's "k3+" does.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ._common import as_float, check_choice, check_shapes

KL_KINDS = ("k1", "k2", "k3", "k1+", "k3+")


def _estimate(d, kind):
    if kind == "k1":
        return d
    if kind == "k2":
        return 0.5 * jnp.square(d)
    return jnp.expm1(-d) + d  # k3 = exp(−d) − 1 + d, written with expm1 for small |d|


def kl_estimate(logp, ref_logp, kind="k3"):
    """Per-token estimate of KL(π‖π_ref) on tokens sampled from π (Schulman 2020).

    Args:
      logp: [B, T] log π of the sampled tokens (differentiable).
      ref_logp: [B, T] log π_ref of the same tokens (gradient flows only if the caller wants it;
        a frozen reference has none).
      kind: "k1" (d), "k2" (d²/2), "k3" (exp(−d) + d − 1), or the straight-through "k1+"/"k3+"
        (value of k1/k3, gradient of k2); d = logp − ref_logp.

    Returns:
      [B, T] per-token estimates; reduce with `aggregate`.
    """
    check_choice("KL kind", kind, KL_KINDS)
    check_shapes(logp=logp, ref_logp=ref_logp)
    d = as_float(logp) - as_float(ref_logp)
    if kind.endswith("+"):
        k2 = _estimate(d, "k2")
        return k2 + jax.lax.stop_gradient(_estimate(d, kind[:-1]) - k2)
    return _estimate(d, kind)
