"""Offline preference losses (DPO family, KTO, SimPO, ORPO) and the Bradley-Terry reward-model loss.

Shapes: B pairs (or examples). Inputs are per-sequence log-probs [B]: the sum over the
response's real tokens (`seq_sum(token_logprobs(...), mask)`) for DPO and KTO, the mean over them
(`seq_mean`) for the length-normalised SimPO and ORPO. Reference log-probs are constants
(gradient stopped). Every loss is a mean over the batch and returns (loss, metrics); the reward
metrics are those of TRL: rewards_chosen, rewards_rejected (batch means of the implicit
rewards), reward_margin (mean of chosen − rejected) and reward_accuracy (fraction of pairs with
chosen > rejected).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ._common import as_float, check_choice, check_range, check_shapes, is_number, masked_mean, stop_metrics

sg = jax.lax.stop_gradient
log_sigmoid = jax.nn.log_sigmoid

DPO_LOSS_TYPES = ("sigmoid", "ipo", "hinge", "robust")


def _sequences(**arrays):
    """Check that every array is [B] with one B; return them as floats, in order."""
    check_shapes(ndim=1, **arrays)
    return [as_float(x) for x in arrays.values()]


def _logistic(z, label_smoothing=0.0):
    """−(1 − ls)·log σ(z) − ls·log σ(−z): the Bradley-Terry negative log-likelihood of z > 0,
    with conservative label smoothing ls (Mitchell 2023, cDPO)."""
    return -(1.0 - label_smoothing) * log_sigmoid(z) - label_smoothing * log_sigmoid(-z)


def _reward_metrics(chosen, rejected):
    return {
        "rewards_chosen": jnp.mean(chosen),
        "rewards_rejected": jnp.mean(rejected),
        "reward_margin": jnp.mean(chosen - rejected),
        "reward_accuracy": jnp.mean((chosen > rejected).astype(jnp.float32)),
    }


def dpo_loss(
    chosen_logp, rejected_logp, ref_chosen_logp, ref_rejected_logp, beta=0.1, loss_type="sigmoid",
    label_smoothing=0.0,
):
    """DPO (Rafailov et al. 2023, "Direct preference optimization") and variants.

    With h = (log π(y_w) − log π_ref(y_w)) − (log π(y_l) − log π_ref(y_l)) and ls the label
    smoothing, mean over the batch of:

      sigmoid  −(1 − ls)·log σ(βh) − ls·log σ(−βh)        (DPO; cDPO with ls > 0)
      ipo      (h − 1/(2β))²                              (IPO, Azar et al. 2023)
      hinge    relu(1 − βh)                               (SLiC, Zhao et al. 2023)
      robust   (−(1 − ls)·log σ(βh) + ls·log σ(−βh)) / (1 − 2ls)   (rDPO, Chowdhury et al. 2024)

    IPO's paper uses length-normalised log-probs; pass `seq_mean` log-probs for that.

    Args:
      chosen_logp, rejected_logp: [B] log π_θ of the preferred / dispreferred responses.
      ref_chosen_logp, ref_rejected_logp: [B] the same under π_ref (gradient stopped).
      beta: β; loss_type: one of `DPO_LOSS_TYPES`; label_smoothing: ls in [0, 0.5] (sigmoid) or
        [0, 0.5) (robust); must be 0 for ipo and hinge.

    Returns:
      (loss, metrics): the reward metrics of the implicit rewards β·(log π − log π_ref).
    """
    check_choice("DPO loss_type", loss_type, DPO_LOSS_TYPES)
    if loss_type in ("ipo", "hinge") and is_number(label_smoothing) and label_smoothing != 0:
        raise ValueError(f"label_smoothing applies to the sigmoid and robust losses, not {loss_type!r}")
    check_range("label_smoothing", label_smoothing, low=0.0, high=0.5)
    if loss_type == "robust" and is_number(label_smoothing) and label_smoothing == 0.5:
        raise ValueError("the robust DPO loss needs label_smoothing < 0.5")
    check_range("beta", beta, low=0.0, low_open=True)
    chosen, rejected, ref_chosen, ref_rejected = _sequences(
        chosen_logp=chosen_logp, rejected_logp=rejected_logp,
        ref_chosen_logp=ref_chosen_logp, ref_rejected_logp=ref_rejected_logp,
    )
    chosen_ratio = chosen - sg(ref_chosen)
    rejected_ratio = rejected - sg(ref_rejected)
    h = chosen_ratio - rejected_ratio
    ls = label_smoothing
    if loss_type == "sigmoid":
        losses = _logistic(beta * h, ls)
    elif loss_type == "robust":
        losses = (-(1.0 - ls) * log_sigmoid(beta * h) + ls * log_sigmoid(-beta * h)) / (1.0 - 2.0 * ls)
    elif loss_type == "ipo":
        losses = jnp.square(h - 1.0 / (2.0 * beta))
    else:
        losses = jax.nn.relu(1.0 - beta * h)
    metrics = _reward_metrics(beta * chosen_ratio, beta * rejected_ratio)
    return jnp.mean(losses), stop_metrics(metrics)


def kto_loss(
    logp, ref_logp, desirable, kl_logp=None, kl_ref_logp=None, z0=None, beta=0.1,
    desirable_weight=1.0, undesirable_weight=1.0,
):
    """KTO (Ethayarajh et al. 2024, "KTO: model alignment as prospect theoretic optimization"),
    on unpaired examples labelled desirable or undesirable:

      r = log π_θ(y|x) − log π_ref(y|x)
      z0 = sg(max(0, KL estimate)),  the reference point
      v = λ_D·σ(β(r − z0)) if desirable, λ_U·σ(β(z0 − r)) if undesirable
      loss = mean over the batch of (λ_y − v)

    The reference point z0 is, as in the paper and TRL, the batch mean of
    log π_θ(y'|x) − log π_ref(y'|x) over mismatched pairs (x, y') (e.g. y' the response of the
    next example in the batch), clamped at 0 and with its gradient stopped. Pass those pairs'
    sequence log-probs as kl_logp and kl_ref_logp, or a precomputed z0 (e.g. averaged across
    data-parallel shards), which is clamped and stopped likewise; exactly one of the two.

    Args:
      logp, ref_logp: [B] sequence log-probs of (x_i, y_i) under π_θ and π_ref.
      desirable: [B] bool, True for desirable examples.
      kl_logp, kl_ref_logp: [B'] sequence log-probs of mismatched pairs; or z0: a scalar.
      beta: β; desirable_weight: λ_D; undesirable_weight: λ_U.

    Returns:
      (loss, metrics): kl (z0), rewards_chosen / rewards_rejected (mean β·r over the desirable
      / undesirable examples).
    """
    if (z0 is None) == (kl_logp is None or kl_ref_logp is None):
        raise ValueError("kto_loss takes either kl_logp and kl_ref_logp, or z0")
    logp, ref_logp, desirable_f = _sequences(logp=logp, ref_logp=ref_logp, desirable=desirable)
    if z0 is None:
        kl_logp, kl_ref_logp = _sequences(kl_logp=kl_logp, kl_ref_logp=kl_ref_logp)
        z0 = jnp.mean(kl_logp - kl_ref_logp)
    z0 = sg(jnp.maximum(as_float(z0), 0.0))
    good = desirable_f > 0
    r = logp - sg(ref_logp)
    value = jnp.where(
        good,
        desirable_weight * jax.nn.sigmoid(beta * (r - z0)),
        undesirable_weight * jax.nn.sigmoid(beta * (z0 - r)),
    )
    loss = jnp.mean(jnp.where(good, desirable_weight, undesirable_weight) - value)
    metrics = {
        "kl": z0,
        "rewards_chosen": masked_mean(beta * r, good),
        "rewards_rejected": masked_mean(beta * r, ~good),
    }
    return loss, stop_metrics(metrics)


def simpo_loss(chosen_logp, rejected_logp, beta=2.0, gamma=1.0):
    """SimPO (Meng et al. 2024, "SimPO: simple preference optimization with a reference-free
    reward"): no reference model, length-normalised rewards and a target margin γ,

      loss = mean −log σ( β/|y_w|·log π(y_w) − β/|y_l|·log π(y_l) − γ )

    Args:
      chosen_logp, rejected_logp: [B] length-normalised log-probs (1/|y|)·log π(y|x), i.e.
        `seq_mean` of the token log-probs.
      beta: β (the paper uses 2.0 to 2.5); gamma: γ (the paper's γ/β = 0.5 gives 1.0 at β = 2).

    Returns:
      (loss, metrics): the reward metrics of the rewards β·(1/|y|)·log π(y).
    """
    chosen, rejected = _sequences(chosen_logp=chosen_logp, rejected_logp=rejected_logp)
    loss = jnp.mean(_logistic(beta * (chosen - rejected) - gamma))
    return loss, stop_metrics(_reward_metrics(beta * chosen, beta * rejected))


def _log_odds(avg_logp):
    """log(p / (1 − p)) from log p < 0, stably: log p − log(1 − exp(log p))."""
    log1mexp = jnp.where(
        avg_logp > -jnp.log(2.0),
        jnp.log(-jnp.expm1(avg_logp)),
        jnp.log1p(-jnp.exp(avg_logp)),
    )
    return avg_logp - log1mexp


def orpo_loss(chosen_logp, rejected_logp, lam=0.1):
    """ORPO (Hong et al. 2024, "ORPO: monolithic preference optimization without reference
    model"): supervised fine-tuning plus an odds-ratio penalty, with P(y|x) the length-normalised
    likelihood exp((1/|y|)·log π(y|x)):

      odds(y) = P / (1 − P)
      loss = mean[ −(1/|y_w|)·log π(y_w) ] + λ·mean[ −log σ( log odds(y_w) − log odds(y_l) ) ]

    Args:
      chosen_logp, rejected_logp: [B] length-normalised log-probs (`seq_mean`), < 0.
      lam: λ (0.1 in the paper).

    Returns:
      (loss, metrics): nll (the SFT term), log_odds_ratio (its batch mean), and the reward
      metrics of λ·(1/|y|)·log π(y) (as TRL reports them).
    """
    chosen, rejected = _sequences(chosen_logp=chosen_logp, rejected_logp=rejected_logp)
    log_odds_ratio = _log_odds(chosen) - _log_odds(rejected)
    nll = -jnp.mean(chosen)
    loss = nll + lam * jnp.mean(_logistic(log_odds_ratio))
    metrics = {"nll": nll, "log_odds_ratio": jnp.mean(log_odds_ratio)}
    metrics.update(_reward_metrics(lam * chosen, lam * rejected))
    return loss, stop_metrics(metrics)


def bradley_terry_loss(chosen_rewards, rejected_rewards, margin=0.0, center_coef=0.0):
    """Bradley-Terry reward-model loss (Bradley & Terry 1952; Ouyang et al. 2022, InstructGPT):

      loss = mean −log σ(r_w − r_l − m) + η·mean (r_w + r_l)²

    m the margin (a scalar, or [B] per-pair margins from preference strength, Touvron et al.
    2023, Llama 2); η = center_coef the reward-centring penalty of Eisenstein et al. 2023
    ("Helping or herding? Reward model ensembles mitigate but do not eliminate reward hacking"),
    which keeps the rewards near zero mean.

    Args:
      chosen_rewards, rejected_rewards: [B] scalar rewards of the preferred / dispreferred
        responses (the reward model's outputs; differentiable).

    Returns:
      (loss, metrics): the reward metrics of r_w and r_l.
    """
    chosen, rejected = _sequences(chosen_rewards=chosen_rewards, rejected_rewards=rejected_rewards)
    if jnp.ndim(margin) != 0:
        check_shapes(margin=margin, chosen_rewards=chosen)
    loss = jnp.mean(_logistic(chosen - rejected - as_float(margin)))
    loss = loss + center_coef * jnp.mean(jnp.square(chosen + rejected))
    return loss, stop_metrics(_reward_metrics(chosen, rejected))
