"""The estimator study: every estimator at every group size against the exact gradient.

`evaluate` compiles one program per group size that runs all the estimators over the same
n_seeds keys (common random numbers: estimators that sample from the same policy see the same
responses, so their differences are measured with less noise) and reduces each to the
statistics of `stats.summarize`. `kl_loss_table` computes, exactly, the expected gradient of
each KL penalty placed in the loss.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp

from rljax.estimators import estimators as est
from rljax.estimators.exact import exact_gradients, expected_gradient
from rljax.estimators.stats import summarize


# The study's panels: estimators compared with each other, each panel with `rloo` (or its KL
# counterpart) as the unbiased reference. β is that of J in the panel (0: J = E[R]).
PANELS = {
    "baselines": ("reinforce", "batch_mean", "rloo", "grpo", "dr_grpo", "reinforce_pp", "remax"),
    "stale": ("rloo", "seq_is", "ppo_clip", "gspo", "cispo"),
    "aggregation": ("rloo", "agg_token_mean", "agg_seq_mean_token_mean", "agg_seq_mean_token_sum_norm"),
    "kl": ("kl_reward_k1", "kl_loss_k1", "kl_loss_k2", "kl_loss_k3", "kl_loss_seq_k2", "grpo_paper"),
}


def evaluate(bed, names, group_sizes, n_seeds, beta=0.0, seed=0):
    """Statistics of each estimator in `names` at each G, against the exact ∇J.

    Args:
      bed: a Testbed; names: estimator names (keys of `estimators.ESTIMATORS`);
      group_sizes: the G values; n_seeds: estimates per (estimator, G);
      beta: β of J and of the estimator, one float or a dict name -> β;
      seed: seeds the keys (the same keys for every estimator and G).

    Returns:
      A list of dicts, one per (estimator, G): the `summarize` statistics against
      ∇J = ∇E[R] − β·∇KL, the `cost` counts, the Spec fields, and seconds (the wall time of
      that G's compile + run, shared by its rows).
    """
    betas = {name: beta[name] if isinstance(beta, dict) else beta for name in names}
    grads = exact_gradients(bed, bed.params, 0.0)
    keys = jax.random.split(jax.random.key(seed), n_seeds)
    rows = []
    for group_size in group_sizes:

        def run(params, keys, grads, group_size=group_size):
            # One rollout per key and sampler, shared by the estimators (a smaller program than
            # `stats.sample_estimates` of independent estimators, same numbers).
            data = {
                stale: jax.vmap(lambda k, p=sampler: est.rollout(bed, p, k, group_size))(keys)
                for stale, sampler in ((False, params), (True, bed.old_params))
            }
            out = {}
            for name in names:
                spec = est.resolve(name)
                samples = jax.vmap(lambda d, s=spec: est.gradient_from_rollout(bed, params, d, s, betas[name]))(
                    data[spec.stale]
                )
                out[name] = summarize(samples, grads["reward"] - betas[name] * grads["kl"])
            return out

        start = time.perf_counter()
        out = jax.device_get(jax.jit(run)(bed.params, keys, grads))
        seconds = time.perf_counter() - start
        for name in names:
            spec = est.resolve(name)
            rows.append({
                "policy": bed.policy.name, "estimator": name, "G": group_size, "beta": betas[name],
                "n_seeds": n_seeds, "seconds": seconds,
                "advantage": spec.advantage, "surrogate": spec.surrogate, "agg": spec.agg, "kl": spec.kl,
                **{k: float(v) for k, v in out[name].items()},
                **est.cost(spec, bed.num_prompts, group_size, betas[name]),
            })
    return rows


def kl_loss_table(bed, kinds=("k1", "k2", "k3", "seq-k2"), aggs=("seq-mean-token-sum", "seq-mean-token-mean")):
    """The exact expected gradient E_y[∇ kl_loss] of each KL penalty in the loss, on-policy,
    against the exact ∇KL(π‖π_ref), by enumeration (no sampling).

    Only the per-response aggregations are listed: under them the loss is a mean of per-response
    terms, whose expectation is a finite sum (token-mean couples the responses of a batch;
    seq-mean-token-sum-norm is seq-mean-token-sum divided by L).

    Returns:
      A list of dicts: kind, agg, rel_error (‖E∇loss − ∇KL‖/‖∇KL‖), cosine, norm_ratio.
    """
    cases = [(kind, agg) for kind in kinds for agg in (aggs if kind != "seq-k2" else aggs[:1])]

    def per_response(kind, agg):
        def loss(logp, ref_logp, mask):
            one = lambda a, b, m: est.kl_loss(a[None], b[None], m[None], kind, agg)  # noqa: E731
            return jax.vmap(one)(logp, ref_logp, mask)

        return loss

    @jax.jit  # one program for every case
    def grads(params):
        return [expected_gradient(bed, params, per_response(*case)) for case in cases]

    target = exact_gradients(bed, bed.params, 0.0)["kl"]
    norm = jnp.linalg.norm(target)
    rows = []
    for (kind, agg), grad in zip(cases, grads(bed.params)):
        rows.append({
            "kind": kind, "agg": agg if kind != "seq-k2" else "mean over responses",
            "rel_error": float(jnp.linalg.norm(grad - target) / norm),
            "cosine": float(grad @ target / (jnp.linalg.norm(grad) * norm)),
            "norm_ratio": float(jnp.linalg.norm(grad) / norm),
        })
    return rows
