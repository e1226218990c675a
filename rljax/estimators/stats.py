"""Bias, variance and cosine of an estimator over many seeds, in one vmapped jit.

For n independent estimates ĝ_1..ĝ_n [D] of a target g (the exact gradient):

  mean ḡ = (1/n) Σ ĝ_s,   Cov = sample covariance (ddof=1),   variance = tr(Cov)
  bias = ‖ḡ − g‖,   noise = sqrt(tr(Cov)/n)   (the rms size of ‖ḡ − E ĝ‖)

‖ḡ − E ĝ‖² is, by the CLT, Σ_i λ_i z_i²/n with λ_i the eigenvalues of Cov. For Σλ_i fixed its
tail beyond 1.54·Σλ_i is largest when one eigenvalue carries everything (Székely & Bakirov
2003), so P(‖ḡ − E ĝ‖ > z·noise) ≤ P(|N(0,1)| > z) whatever the spectrum. With z = 2.576 the
bound z·noise is a 99% bound: a bias above it is significantly nonzero.

Scale-free views: the scale c = ⟨ḡ, g⟩/‖g‖² (how much of g the mean carries: a constant c ≠ 1
is absorbed by the learning rate) and the direction bias ‖ḡ − c·g‖, the part of the mean no
learning rate can fix; and the cosine ⟨ĝ_s, g⟩/(‖ĝ_s‖‖g‖), averaged over seeds.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Z99 = 2.5758  # two-sided 99% normal quantile


def summarize(samples, target):
    """Statistics of estimates `samples` [n, D] of `target` [D] (see the module docstring).

    Returns a dict of scalars: bias, bias_bound (99%), noise, bias_z (bias/noise), rel_bias
    (bias/‖g‖), scale (c), scale_se (its standard error), direction_bias (‖ḡ − c·g‖/‖g‖),
    direction_bound (bias_bound/‖g‖), variance (tr Cov), rel_variance (tr Cov/‖g‖²),
    matched_variance (tr Cov/(c²‖g‖²): the variance of ĝ/c, which has g's scale), cosine (mean
    over seeds), cosine_of_mean, rel_mse (E‖ĝ − g‖²/‖g‖²), grad_norm (‖g‖).
    """
    n = samples.shape[0]
    g2 = jnp.sum(jnp.square(target))
    mean = jnp.mean(samples, axis=0)
    variance = jnp.sum(jnp.square(samples - mean)) / (n - 1)
    noise = jnp.sqrt(variance / n)
    bias = jnp.linalg.norm(mean - target)
    proj = samples @ target / g2  # per-seed scale along g
    scale = jnp.mean(proj)
    norms = jnp.linalg.norm(samples, axis=1) * jnp.sqrt(g2)
    cos = jnp.where(norms > 0, samples @ target / jnp.where(norms > 0, norms, 1.0), 0.0)
    return {
        "bias": bias,
        "bias_bound": Z99 * noise,
        "noise": noise,
        "bias_z": bias / noise,
        "rel_bias": bias / jnp.sqrt(g2),
        "scale": scale,
        "scale_se": jnp.std(proj, ddof=1) / jnp.sqrt(n),
        "direction_bias": jnp.linalg.norm(mean - scale * target) / jnp.sqrt(g2),
        "direction_bound": Z99 * noise / jnp.sqrt(g2),
        "variance": variance,
        "rel_variance": variance / g2,
        "matched_variance": variance / (jnp.square(scale) * g2),
        "cosine": jnp.mean(cos),
        "cosine_of_mean": mean @ target / (jnp.linalg.norm(mean) * jnp.sqrt(g2)),
        "rel_mse": jnp.mean(jnp.sum(jnp.square(samples - target), axis=1)) / g2,
        "grad_norm": jnp.sqrt(g2),
    }


def sample_estimates(estimators, params, keys, group_size):
    """One estimate per key from each estimator: {name: [n, D]}.

    Args:
      estimators: {name: fn(params, key, G) -> [D]} (e.g. `make_estimator`s).
      params: θ; keys: [n] PRNG keys (the same for every estimator: common random numbers);
      group_size: G.

    Traceable: jit it, and every estimator runs in one compiled program, vmapped over keys.
    """
    return {name: jax.vmap(lambda k, f=f: f(params, k, group_size))(keys) for name, f in estimators.items()}


def measure(estimator, params, target, key, group_size, n_seeds):
    """`summarize` of n_seeds estimates of `estimator` against `target`, in one jit; floats."""

    @jax.jit
    def run(params, keys, target):
        return summarize(sample_estimates({"e": estimator}, params, keys, group_size)["e"], target)

    out = run(params, jax.random.split(key, n_seeds), target)
    return {k: float(v) for k, v in out.items()}
