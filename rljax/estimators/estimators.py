"""Policy-gradient estimators of ∇J, composed from `rljax.losses`.

An estimator samples G responses to each of the P prompts, builds a surrogate loss from the
library's pieces and returns −∇_θ loss (loss = −objective, so −∇loss estimates ∇J). It is
described by a `Spec` of four independent choices; the advantage and the surrogate are rows of
`rljax.losses.registry`, the table the trainer reads too (every critic-free advantage row):

  advantage  how sequence rewards r_i become advantages A_i (groups of G per prompt):
    none          A = r                                        REINFORCE (Williams 1992)
    batch_mean    A = r − mean_batch(r)                        a batch-mean baseline
    rloo          A = r_i − mean_{j≠i} r_j                     Kool et al. 2019; Ahmadian et al. 2024
    grpo          A = (r − mean_G r)/(std_G r + ε)             Shao et al. 2024
    dr_grpo       A = r − mean_G r                             Liu et al. 2025
    reinforce_pp  A = (r − mean_batch r)/std_batch r           Hu 2025
    remax         A = r − r(greedy response)                   Li et al. 2023
  surrogate  the loss whose gradient is taken:
    reinforce     −A·log π_θ per token (on-policy)             `losses.reinforce_loss`
    seq_is        −w·A·log π_θ, w = π_θ(y)/π_old(y) per response, samples from π_old (the
                  exact off-policy correction, a control)      `reinforce_loss(is_weights=w)`
    ppo           PPO-clip, token ratios, ε = 0.2; samples from π_old   Schulman et al. 2017
    gspo          GSPO, length-normalised sequence ratio, ε = (3e-4, 4e-4); from π_old
                                                               Zheng et al. 2025
    cispo         CISPO, clipped token IS weight (ε_high = 0.28) on REINFORCE; from π_old
                                                               MiniMax 2025
  agg        the `losses.aggregate` mode (norm_len = L for seq-mean-token-sum-norm).
  kl         how −β·KL(π‖π_ref) enters (Schulman 2020's estimators, `losses.kl_estimate`):
    none          ignored (the estimator targets ∇E[R] only)
    reward-k1     r = R − β·Σ_t (log π − log π_ref), `losses.kl_penalized_rewards` (Ziegler et
                  al. 2019): the penalty is part of the reward, so of the baseline too
    loss-k1/k2/k3 + β·aggregate(k_t, agg) in the loss, per token (as GRPO does)
    loss-seq-k2   + β·mean over responses of ½(Σ_t (log π − log π_ref))², k2 of the sequence
                  log-ratio (Tang & Munos 2025): its gradient is D·∇log π(y), exact on-policy

The stale surrogates (seq_is, ppo, gspo, cispo) sample from the testbed's π_old and take the
gradient at θ (importance ratio ≠ 1); their advantages and KL-shaped rewards use the sampler's
log-probs, as at rollout time.

`ESTIMATORS` names the configurations of the study; `estimate_gradient` runs any Spec.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from rljax import losses
from rljax.losses import registry
from rljax.estimators.exact import flatten
from rljax.estimators.testbed import Batch

sg = jax.lax.stop_gradient


# The study's advantage and surrogate choices are rows of the one registry the trainer reads.
ADVANTAGES = tuple(name for name, row in registry.ADVANTAGES.items() if not row.needs_critic)
SURROGATES = tuple(registry.SURROGATES)

KL_MODES = ("none", "reward-k1", "loss-k1", "loss-k2", "loss-k3", "loss-seq-k2")


@dataclasses.dataclass(frozen=True)
class Spec:
    """One estimator: an advantage, a surrogate, an aggregation mode and a KL placement (see
    the module docstring for the choices)."""

    advantage: str = "rloo"
    surrogate: str = "reinforce"
    agg: str = "seq-mean-token-sum"
    kl: str = "none"

    def __post_init__(self):
        for field, value, choices in (
            ("advantage", self.advantage, ADVANTAGES),
            ("surrogate", self.surrogate, SURROGATES),
            ("agg", self.agg, losses.AGG_MODES),
            ("kl", self.kl, KL_MODES),
        ):
            if value not in choices:
                raise ValueError(f"unknown {field} {value!r}; expected one of {choices}")

    @property
    def stale(self):
        """True if the estimator samples from π_old (ratio ≠ 1)."""
        return not registry.surrogate(self.surrogate).on_policy


# The study's estimators, one choice changed at a time from `rloo`: RLOO advantages, the
# on-policy REINFORCE surrogate, seq-mean-token-sum (the aggregation under which −∇loss is
# unbiased for ∇J) and no KL; except the rows named for a paper's full recipe (grpo_paper).
ESTIMATORS = {
    # advantages / baselines
    "reinforce": Spec(advantage="none"),
    "batch_mean": Spec(advantage="batch_mean"),
    "rloo": Spec(),
    "grpo": Spec(advantage="grpo"),
    "dr_grpo": Spec(advantage="dr_grpo", agg="seq-mean-token-sum-norm"),
    "reinforce_pp": Spec(advantage="reinforce_pp"),
    "remax": Spec(advantage="remax"),
    # stale sampler: samples from π_old, gradient at θ
    "seq_is": Spec(surrogate="seq_is"),
    "ppo_clip": Spec(surrogate="ppo"),
    "gspo": Spec(surrogate="gspo", agg="seq-mean-token-mean"),
    "cispo": Spec(surrogate="cispo"),
    # aggregation modes
    "agg_token_mean": Spec(agg="token-mean"),
    "agg_seq_mean_token_mean": Spec(agg="seq-mean-token-mean"),
    "agg_seq_mean_token_sum_norm": Spec(agg="seq-mean-token-sum-norm"),
    # where the KL goes (meaningful with β > 0)
    "kl_reward_k1": Spec(kl="reward-k1"),
    "kl_loss_k1": Spec(kl="loss-k1"),
    "kl_loss_k2": Spec(kl="loss-k2"),
    "kl_loss_k3": Spec(kl="loss-k3"),
    "kl_loss_seq_k2": Spec(kl="loss-seq-k2"),
    "grpo_paper": Spec(advantage="grpo", agg="seq-mean-token-mean", kl="loss-k3"),  # Shao et al.'s recipe
}


def resolve(spec):
    """A Spec from a Spec or the name of one in `ESTIMATORS`."""
    if isinstance(spec, Spec):
        return spec
    if spec not in ESTIMATORS:
        raise ValueError(f"unknown estimator {spec!r}; choose one of {sorted(ESTIMATORS)}")
    return ESTIMATORS[spec]


def kl_loss(logp, ref_logp, mask, kind, agg="seq-mean-token-sum", norm_len=None):
    """The KL penalty as a loss term (to be multiplied by β and added to the policy loss).

    kind "k1", "k2", "k3": aggregate(kl_estimate(logp, ref_logp, kind), mask, agg), per token.
    kind "seq-k2": ½(Σ_t (log π − log π_ref))² per response (k2 of the sequence log-ratio D),
    averaged over responses whatever `agg`: one term per response. Its gradient D·∇log π(y) is
    the score-function estimate of ∇KL(π‖π_ref) on-policy.

    Args:
      logp: [B, T] log π_θ of the sampled tokens (differentiable); ref_logp: [B, T] log π_ref;
      mask: [B, T]; agg, norm_len: as `losses.aggregate`.
    """
    if kind == "seq-k2":
        seq = losses.kl_estimate(losses.seq_sum(logp, mask)[:, None], losses.seq_sum(ref_logp, mask)[:, None], "k2")
        return losses.aggregate(seq, jnp.ones_like(seq, bool), "seq-mean-token-sum")
    return losses.aggregate(losses.kl_estimate(logp, ref_logp, kind), mask, agg, norm_len)


def sequence_rewards(bed, batch, logp, ref_logp, kl, beta):
    """The rewards r [B] that advantages are computed from: R(x, y), minus β·Σ_t k1_t for
    kl="reward-k1" (logp: the sampler's token log-probs, ref_logp: π_ref's; both [B, L])."""
    scores = bed.reward(*batch)
    if kl != "reward-k1":
        return scores
    shaped = losses.kl_penalized_rewards(scores, logp, ref_logp, batch.mask, beta, kind="k1")
    return losses.seq_sum(shaped, batch.mask)


class Rollout(NamedTuple):
    """Sampled responses with the log-probs the trainer needs: batch (P·G rows), old_logp
    (log π of the sampler, [B, L]) and ref_logp (log π_ref, [B, L]), all constants."""

    batch: Batch
    old_logp: jax.Array
    ref_logp: jax.Array


def _logprobs(bed, params, batch):
    return sg(bed.token_logprobs(params, batch.prompts, batch.tokens))


def rollout(bed, sampler_params, key, group_size):
    """G responses per prompt from π_sampler, with the sampler's and π_ref's token log-probs."""
    batch = bed.sample(sampler_params, key, group_size)
    return Rollout(batch, _logprobs(bed, sampler_params, batch), _logprobs(bed, bed.ref_params, batch))


def gradient_from_rollout(bed, params, data, spec="rloo", beta=0.0):
    """−∇_θ loss of estimator `spec` on a `Rollout` (from π_old if spec.stale, else from θ).

    Returns a flat vector [D]; `estimate_gradient` is this after `rollout`.
    """
    spec = resolve(spec)
    batch, old_logp, ref_logp = data
    group_size = batch.prompts.shape[0] // bed.num_prompts
    rewards = sequence_rewards(bed, batch, old_logp, ref_logp, spec.kl, beta)
    greedy_rewards = None
    if spec.advantage == "remax":
        sampler = bed.old_params if spec.stale else params
        greedy = bed.greedy(sg(sampler))
        greedy_rewards = sequence_rewards(
            bed, greedy, _logprobs(bed, sampler, greedy), _logprobs(bed, bed.ref_params, greedy), spec.kl, beta
        )
    baseline = None if greedy_rewards is None else jnp.repeat(greedy_rewards, group_size)
    inputs = registry.AdvantageInputs(rewards, losses.last_token_rewards(rewards, batch.mask), batch.mask, None,
                                      baseline, group_size)
    adv = sg(registry.compute_advantages(spec.advantage, inputs)[0])

    def loss(p):
        logp = bed.token_logprobs(p, batch.prompts, batch.tokens)
        value, _ = registry.surrogate_loss(spec.surrogate, logp, old_logp, adv, batch.mask, agg=spec.agg,
                                           norm_len=bed.max_len)
        if spec.kl.startswith("loss-"):
            value = value + beta * kl_loss(logp, ref_logp, batch.mask, spec.kl[5:], spec.agg, bed.max_len)
        return value

    return -flatten(jax.grad(loss)(params))


def estimate_gradient(bed, params, key, group_size, spec="rloo", beta=0.0):
    """One estimate of ∇J(θ) = ∇(E[R] − β·KL) from G sampled responses per prompt.

    Args:
      bed: a `Testbed`; params: θ; key: PRNG key; group_size: G (static).
      spec: a `Spec` or a name in `ESTIMATORS`; beta: β.

    Returns:
      −∇_θ loss as a flat vector [D] (same layout as `exact.flatten(params)`).
    """
    spec = resolve(spec)
    sampler = bed.old_params if spec.stale else params
    return gradient_from_rollout(bed, params, rollout(bed, sampler, key, group_size), spec, beta)


def make_estimator(bed, spec="rloo", beta=0.0):
    """`estimate_gradient` with the testbed, estimator and β bound: (params, key, G) -> [D]."""
    return functools.partial(estimate_gradient, bed, spec=resolve(spec), beta=beta)


def cost(spec, num_prompts, group_size, beta=0.0):
    """The work of one estimate, counted in responses (sequences of L tokens).

    generated: responses sampled (P·G, plus ReMax's P greedy rollouts); reward_calls: verifier
    calls; forward: no-grad forward passes (π_ref on every response when β > 0 and the KL is
    used, π_old on the samples for the stale surrogates, i.e. the trainer's old-policy pass);
    train: forward+backward passes of π_θ (P·G). ReMax's greedy rollout also costs a decode of
    P responses, counted in `generated`.
    """
    spec = resolve(spec)
    n, extra = num_prompts * group_size, num_prompts if spec.advantage == "remax" else 0
    uses_ref = spec.kl != "none" and beta != 0
    return {
        "generated": n + extra,
        "reward_calls": n + extra,
        "forward": (n + extra) * uses_ref + n * spec.stale,
        "train": n,
    }
