"""Policy-gradient losses: per-token terms (`*_term`, [B, T]) and losses (`*_loss`, scalar).

Shapes: B batch, T tokens. `logp` [B, T] is log π_θ of the sampled tokens (the only input that
carries gradient); `old_logp` [B, T] is log π_old, the policy that produced the advantages;
`advantages` is [B] (one per sequence, broadcast over tokens) or [B, T]; `mask` [B, T] is True on
the tokens to train on. `old_logp`, `ref_logp`, advantages and importance weights are constants:
their gradients are stopped here explicitly. Masked positions are zeroed before any exp, so
whatever padding holds, they get exactly zero gradient.

Every loss takes the aggregation keywords of `aggregate` (`agg`, `norm_len`, `num_tokens`,
`num_seqs`) and two optional extras:
  is_weights: [B] or [B, T] weights multiplying the per-token term before aggregation (e.g. the
    sampler/trainer correction of `importance_weights`); gradient stopped.
  entropy: [B, T] per-token entropies (`entropy(logits)`), reported as the `entropy` metric.
and returns (loss, metrics), metrics a dict of scalars (means over the real tokens of this
batch) with no gradient.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from ._common import (
    as_float,
    check_choice,
    check_range,
    check_shapes,
    is_number,
    masked_max,
    masked_mean,
    masked_min,
    per_token,
    stop_metrics,
)
from .aggregation import aggregate, seq_mean, seq_sum
from .kl import kl_estimate

sg = jax.lax.stop_gradient

# ------------------------------------------------------------------------------ helpers


def _inputs(mask, **arrays):
    """Check shapes, zero masked positions, stop the gradient of every array but `logp`.

    Every array must be [B, T] like the mask, except `advantages`, which may be [B]. Returns
    (real [B, T] bool, *arrays as float [B, T], in the order given).
    """
    check_shapes(ndim=2, mask=mask, **{k: v for k, v in arrays.items() if k != "advantages"})
    real = jnp.asarray(mask, bool)
    out = []
    for name, x in arrays.items():
        x = per_token(x, real) if name == "advantages" else as_float(x)
        out.append(jnp.where(real, x if name == "logp" else sg(x), 0.0))
    return (real, *out)


def _finish(term, real, metrics, agg, norm_len, num_tokens, num_seqs, is_weights, entropy):
    """Weight, aggregate, add the entropy metric; the shared tail of every loss."""
    if is_weights is not None:
        term = term * sg(per_token(is_weights, real, "is_weights"))
    if entropy is not None:
        check_shapes(entropy=entropy, mask=real)
        metrics["entropy"] = masked_mean(as_float(entropy), real)
    loss = aggregate(term, real, agg, norm_len, num_tokens=num_tokens, num_seqs=num_seqs)
    return loss, stop_metrics(metrics)


def _ratio_metrics(ratio, real, logp, old_logp, low, high, advantages=None, dual_clip=None):
    """Ratio statistics, approximate KL(π_old‖π_θ) (k3) and clip fractions over real tokens.

    With advantages, a clip fraction counts the tokens whose gradient the clip removes (ratio
    below 1−low with A < 0, above 1+high with A > 0, above dual_clip with A < 0); without, every
    token whose ratio lies outside the bound.
    """
    pos = neg = True
    if advantages is not None:
        pos, neg = advantages > 0, advantages < 0

    def frac(hit):
        return masked_mean(jnp.asarray(hit, jnp.float32), real)

    metrics = {
        "ratio_mean": masked_mean(ratio, real),
        "ratio_max": masked_max(ratio, real),
        "ratio_min": masked_min(ratio, real),
        "approx_kl": masked_mean(kl_estimate(old_logp, logp, "k3"), real),
        "clipfrac_high": frac(pos & (ratio > 1 + high)),
    }
    if low is not None:
        metrics["clipfrac_low"] = frac(neg & (ratio < 1 - low))
    if dual_clip is not None:
        metrics["clipfrac_dual"] = frac(neg & (ratio > dual_clip))
    return metrics


def _eps_high(clip_eps, clip_eps_high):
    return clip_eps if clip_eps_high is None else clip_eps_high


def clipped_surrogate(ratio, advantages, clip_eps=0.2, clip_eps_high=None, dual_clip=None):
    """PPO's clipped surrogate per token (Schulman et al. 2017), as a loss to minimise:

      ℓ = max(−A·ρ, −A·clip(ρ, 1 − ε_low, 1 + ε_high))
      with dual_clip = c > 1 (Ye et al. 2020, "Mastering complex control in MOBA games with deep
      RL"), for A < 0:  ℓ = min(ℓ, −A·c)

    ε_low = clip_eps; ε_high = clip_eps_high, defaulting to clip_eps (DAPO's clip-higher sets it
    larger, e.g. 0.28). ratio, advantages: broadcastable arrays; the advantages' gradient is
    stopped.
    """
    check_range("clip_eps", clip_eps, low=0.0)
    check_range("clip_eps_high", clip_eps_high, low=0.0)
    check_range("dual_clip", dual_clip, low=1.0, low_open=True)
    a = sg(advantages)
    clipped = jnp.clip(ratio, 1 - clip_eps, 1 + _eps_high(clip_eps, clip_eps_high))
    loss = jnp.maximum(-a * ratio, -a * clipped)
    if dual_clip is not None:
        loss = jnp.where(a < 0, jnp.minimum(loss, -a * dual_clip), loss)
    return loss


# ------------------------------------------------------------------------ REINFORCE


def reinforce_term(logp, advantages, mask):
    """REINFORCE per token (Williams 1992): ℓ_t = −sg(A_t)·log π_θ(y_t); [B, T]."""
    _, logp, adv = _inputs(mask, logp=logp, advantages=advantages)
    return -adv * logp


def reinforce_loss(
    logp, advantages, mask, agg="token-mean", *,
    norm_len=None, num_tokens=None, num_seqs=None, is_weights=None, entropy=None,
):
    """REINFORCE with given advantages (baseline-subtracted returns: `rloo_advantages`,
    `remax_advantages`, `reinforce_pp_advantages`, ...): aggregate(−sg(A)·log π_θ).

    Returns (loss, metrics); metrics: advantage_mean.
    """
    real, logp, adv = _inputs(mask, logp=logp, advantages=advantages)
    metrics = {"advantage_mean": masked_mean(adv, real)}
    return _finish(-adv * logp, real, metrics, agg, norm_len, num_tokens, num_seqs, is_weights, entropy)


# ------------------------------------------------------------------------ PPO / GRPO


def _ppo(logp, old_logp, advantages, mask, clip_eps, clip_eps_high, dual_clip):
    real, logp, old_logp, adv = _inputs(mask, logp=logp, old_logp=old_logp, advantages=advantages)
    ratio = jnp.exp(logp - old_logp)
    high = _eps_high(clip_eps, clip_eps_high)
    term = clipped_surrogate(ratio, adv, clip_eps, high, dual_clip)
    metrics = _ratio_metrics(ratio, real, logp, old_logp, clip_eps, high, adv, dual_clip)
    return real, logp, term, metrics


def ppo_term(logp, old_logp, advantages, mask, clip_eps=0.2, clip_eps_high=None, dual_clip=None):
    """PPO-clip per token, [B, T]: `clipped_surrogate` of ρ_t = exp(log π_θ − sg(log π_old))."""
    return _ppo(logp, old_logp, advantages, mask, clip_eps, clip_eps_high, dual_clip)[2]


def ppo_policy_loss(
    logp, old_logp, advantages, mask, clip_eps=0.2, clip_eps_high=None, dual_clip=None,
    agg="token-mean", *,
    norm_len=None, num_tokens=None, num_seqs=None, is_weights=None, entropy=None,
):
    """PPO clipped policy loss (Schulman et al. 2017, "Proximal policy optimization algorithms"):

      ρ_t = exp(log π_θ(y_t) − log π_old(y_t))
      ℓ_t = max(−A_t·ρ_t, −A_t·clip(ρ_t, 1 − ε_low, 1 + ε_high)),  then (A_t < 0, dual_clip c)
      ℓ_t = min(ℓ_t, −A_t·c);   loss = aggregate(ℓ, mask, agg)

    At ρ = 1 the gradient is REINFORCE's, −A·∇log π.

    Returns (loss, metrics); metrics: ratio_mean/max/min, approx_kl (k3 estimate of
    KL(π_old‖π_θ)), clipfrac_low, clipfrac_high, clipfrac_dual (with dual_clip), entropy.
    """
    real, _, term, metrics = _ppo(logp, old_logp, advantages, mask, clip_eps, clip_eps_high, dual_clip)
    return _finish(term, real, metrics, agg, norm_len, num_tokens, num_seqs, is_weights, entropy)


def grpo_loss(
    logp, old_logp, ref_logp, advantages, mask, clip_eps=0.2, clip_eps_high=None, beta=0.04,
    kl="k3", agg="seq-mean-token-mean", *, dual_clip=None,
    norm_len=None, num_tokens=None, num_seqs=None, is_weights=None, entropy=None,
):
    """GRPO (Shao et al. 2024, "DeepSeekMath"): the PPO term plus a KL penalty in the loss,

      ℓ_t = ppo_term_t + β·kl_estimate(log π_θ, sg(log π_ref), kl)_t;   loss = aggregate(ℓ, agg)

    with the paper's k3 estimator and per-sequence token mean by default. Advantages usually
    come from `group_advantages`. Variants by keyword: Dr. GRPO (Liu et al. 2025) is
    `group_advantages(normalize_std=False)` with agg="seq-mean-token-sum-norm" and beta=0; DAPO
    (Yu et al. 2025) is clip_eps_high=0.28, agg="token-mean", beta=0. With beta=0, ref_logp may
    be None.

    Returns (loss, metrics): those of `ppo_policy_loss` plus kl (token mean of the estimate).
    """
    if ref_logp is None and not (is_number(beta) and beta == 0):
        raise ValueError("grpo_loss needs ref_logp unless beta == 0")
    real, logp, term, metrics = _ppo(logp, old_logp, advantages, mask, clip_eps, clip_eps_high, dual_clip)
    if ref_logp is not None:
        _, ref_logp = _inputs(real, ref_logp=ref_logp)
        kl_t = kl_estimate(logp, sg(ref_logp), kl)
        metrics["kl"] = masked_mean(kl_t, real)
        term = term + beta * kl_t
    return _finish(term, real, metrics, agg, norm_len, num_tokens, num_seqs, is_weights, entropy)


# ----------------------------------------------------------------------------- GSPO

GSPO_VARIANTS = ("sequence", "token")


def _gspo(logp, old_logp, advantages, mask, clip_eps, clip_eps_high, variant):
    check_choice("GSPO variant", variant, GSPO_VARIANTS)
    if variant == "sequence" and jnp.ndim(advantages) != 1:
        raise ValueError("sequence-level GSPO takes one advantage per sequence, [B]; use variant='token'")
    real, logp, old_logp, adv = _inputs(mask, logp=logp, old_logp=old_logp, advantages=advantages)
    log_s = seq_mean(logp - old_logp, real)[:, None]  # [B, 1]: log of the sequence ratio s_i
    if variant == "token":
        log_s = sg(log_s) + logp - sg(logp)
    ratio = jnp.broadcast_to(jnp.exp(log_s), logp.shape)
    high = _eps_high(clip_eps, clip_eps_high)
    term = clipped_surrogate(ratio, adv, clip_eps, high)
    metrics = _ratio_metrics(ratio, real, logp, old_logp, clip_eps, high, adv)
    return real, term, metrics


def gspo_term(logp, old_logp, advantages, mask, clip_eps=3e-4, clip_eps_high=4e-4, variant="sequence"):
    """GSPO per token, [B, T] (the sequence's clipped term on each of its real tokens)."""
    return _gspo(logp, old_logp, advantages, mask, clip_eps, clip_eps_high, variant)[1]


def gspo_loss(
    logp, old_logp, advantages, mask, clip_eps=3e-4, clip_eps_high=4e-4, variant="sequence",
    agg="seq-mean-token-mean", *,
    norm_len=None, num_tokens=None, num_seqs=None, is_weights=None, entropy=None,
):
    """GSPO (Zheng et al. 2025, "Group sequence policy optimization"): a length-normalised
    sequence-level importance ratio, clipped per sequence:

      s_i = exp( (1/|y_i|) Σ_t (log π_θ(y_it) − log π_old(y_it)) )     (real tokens only)
      ℓ_i = max(−A_i·s_i, −A_i·clip(s_i, 1 − ε_low, 1 + ε_high))

    variant="sequence" (GSPO): A is [B]; ℓ_i is placed on every real token of sequence i, so the
    default agg="seq-mean-token-mean" gives the paper's (1/G) Σ_i ℓ_i.
    variant="token" (GSPO-token): s_it = sg(s_i)·π_θ(y_it)/sg(π_θ(y_it)), equal to s_i in value,
    and token advantages A_it [B, T] are allowed; ℓ_it uses A_it. With A_it = A_i its value and
    gradient equal GSPO's.

    The paper's clip range is ε_low = 3e-4, ε_high = 4e-4 (ratios of a sequence-mean are close
    to 1). Returns (loss, metrics) as `ppo_policy_loss` (clip fractions are token fractions, as
    the paper reports them).
    """
    real, term, metrics = _gspo(logp, old_logp, advantages, mask, clip_eps, clip_eps_high, variant)
    return _finish(term, real, metrics, agg, norm_len, num_tokens, num_seqs, is_weights, entropy)


# ----------------------------------------------------------------------------- CISPO


def _cispo(logp, old_logp, advantages, mask, clip_eps_low, clip_eps_high):
    check_range("clip_eps_low", clip_eps_low, low=0.0)
    check_range("clip_eps_high", clip_eps_high, low=0.0)
    real, logp, old_logp, adv = _inputs(mask, logp=logp, old_logp=old_logp, advantages=advantages)
    ratio = jnp.exp(logp - old_logp)
    low = None if clip_eps_low is None else 1 - clip_eps_low
    weight = sg(jnp.clip(ratio, low, 1 + clip_eps_high))
    metrics = _ratio_metrics(ratio, real, logp, old_logp, clip_eps_low, clip_eps_high)
    return real, -weight * adv * logp, metrics


def cispo_term(logp, old_logp, advantages, mask, clip_eps_low=None, clip_eps_high=0.28):
    """CISPO per token, [B, T]: −sg(clip(ρ_t, 1 − ε_low, 1 + ε_high))·A_t·log π_θ(y_t)."""
    return _cispo(logp, old_logp, advantages, mask, clip_eps_low, clip_eps_high)[1]


def cispo_loss(
    logp, old_logp, advantages, mask, clip_eps_low=None, clip_eps_high=0.28, agg="token-mean", *,
    norm_len=None, num_tokens=None, num_seqs=None, is_weights=None, entropy=None,
):
    """CISPO (MiniMax 2025, "MiniMax-M1: scaling test-time compute efficiently with lightning
    attention"): clip the importance-sampling weight, not the update, so every token keeps a
    gradient:

      ℓ_t = −sg(clip(ρ_t, 1 − ε_low, 1 + ε_high))·A_t·log π_θ(y_t),   ρ_t = π_θ/π_old
      loss = aggregate(ℓ, agg)      (token-mean: the paper's 1/Σ|o_i| normalisation)

    The paper sets no lower bound (clip_eps_low=None) and tunes only ε_high, whose value it does
    not publish; the default 0.28 follows DAPO's clip-higher and common CISPO implementations.

    Returns (loss, metrics): ratio_mean/max/min, approx_kl, clipfrac_high (and clipfrac_low
    with a lower bound): the fraction of real tokens whose weight is clipped, whatever A's sign.
    """
    real, term, metrics = _cispo(logp, old_logp, advantages, mask, clip_eps_low, clip_eps_high)
    return _finish(term, real, metrics, agg, norm_len, num_tokens, num_seqs, is_weights, entropy)


# ---------------------------------------------------- sampler/trainer importance weights

IS_LEVELS = ("token", "sequence")
IS_MODES = ("truncate", "mask")


def importance_weights(logp, sampler_logp, mask, level="token", mode="truncate", high=2.0, low=None):
    """Importance weights correcting for the mismatch between the sampler (e.g. an inference
    engine) and the trainer computing π_old, to pass as `is_weights` to any loss.

      ρ_t = π_trainer(y_t) / π_sampler(y_t)            level="token"
      ρ_i = Π_t ρ_t  (over real tokens), on each token   level="sequence"

      mode="truncate" (TIS, Yao et al. 2025, "Your efficient RL framework secretly brings you
        off-policy RL training"):  w = min(ρ, high)   (the paper's C = 2)
      mode="mask" (masked IS, as in Liu et al. 2025, "When speed kills stability"):
        w = ρ·[low ≤ ρ ≤ high]: tokens (sequences) outside the bounds are dropped; low=None
        sets no lower bound.

    Computed in log space, so long sequences do not overflow. Dropped tokens still count in a
    token-mean's denominator; to drop them from it too, pass `mask & (w > 0)` as the mask.

    Args:
      logp: [B, T] log π_old of the sampled tokens as the trainer computes them.
      sampler_logp: [B, T] log-probs the sampler reported for the same tokens.
      mask: [B, T].

    Returns:
      (weights [B, T], 0 on masked tokens, no gradient; metrics: is_weight_mean,
      is_clipfrac (truncate) or is_maskfrac (mask), mismatch_kl (k3 estimate of
      KL(π_sampler‖π_trainer)).
    """
    check_choice("importance-sampling level", level, IS_LEVELS)
    check_choice("importance-sampling mode", mode, IS_MODES)
    check_range("high", high, low=0.0, low_open=True)
    check_range("low", low, low=0.0, low_open=True, high=high)
    real, logp, sampler_logp = _inputs(mask, old_logp=logp, sampler_logp=sampler_logp)
    log_ratio = logp - sampler_logp
    if level == "sequence":
        log_ratio = jnp.broadcast_to(seq_sum(log_ratio, real)[:, None], log_ratio.shape)
    log_high = math.log(high)
    if mode == "truncate":
        weights = jnp.exp(jnp.minimum(log_ratio, log_high))
        hit = log_ratio > log_high
    else:
        keep = log_ratio <= log_high
        if low is not None:
            keep = keep & (log_ratio >= math.log(low))
        weights = jnp.where(keep, jnp.exp(jnp.where(keep, log_ratio, 0.0)), 0.0)
        hit = ~keep
    weights = jnp.where(real, weights, 0.0)
    metrics = {
        "is_weight_mean": masked_mean(weights, real),
        f"is_{'clip' if mode == 'truncate' else 'mask'}frac": masked_mean(hit.astype(jnp.float32), real),
        "mismatch_kl": masked_mean(kl_estimate(sampler_logp, logp, "k3"), real),
    }
    return weights, stop_metrics(metrics)


# ----------------------------------------------------------------------------- entropy


def entropy_bonus(
    entropy, mask, coef, agg="token-mean", *, norm_len=None, num_tokens=None, num_seqs=None,
):
    """Entropy regularisation (Williams & Peng 1991; Mnih et al. 2016): −coef·aggregate(H).

    Args:
      entropy: [B, T] per-token entropies from `entropy(logits)` (differentiable).
      mask: [B, T]; coef: the bonus coefficient.

    Returns:
      (loss to add to a policy loss, {"entropy": token mean of H}).
    """
    check_shapes(ndim=2, entropy=entropy, mask=mask)
    entropy = jnp.where(jnp.asarray(mask, bool), as_float(entropy), 0.0)
    loss = -coef * aggregate(entropy, mask, agg, norm_len, num_tokens=num_tokens, num_seqs=num_seqs)
    return loss, stop_metrics({"entropy": masked_mean(entropy, mask)})
