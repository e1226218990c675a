"""Policy-gradient objectives for `make_policy_step`, composed from `rljax.losses`.

An objective maps (networks' outputs, micro-batch, global counts) to (loss, metrics):

  loss = policy_loss(name)                                 (REINFORCE, PPO, GRPO, GSPO, CISPO)
       + kl_coef · aggregate(kl_estimate(log π, log π_ref))  (KL in the loss; GRPO carries its own β)
       − entropy_coef · aggregate(H)                       (entropy bonus)
       + value_coef · value_loss(V, V_old, R)              (PPO's critic)

Batch keys read: loss_mask, advantages, and as needed old_logp, ref_logp, sampler_logp,
old_values, returns. Without old_logp, π_old is the policy being updated (the one update of an
on-policy rollout): its log-probs are the step's own, without gradient, and with sampler_logp the
step logs the sampler/trainer mismatch (`sampler_mismatch`). Without advantages, the objective's
`advantages_fn` computes them (and returns, old_values) from that same forward pass, as
`rljax.train.rl.in_step_advantages` does for PPO.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from rljax import losses
from rljax.train.steps import Batch, Forward, Objective

POLICY_LOSSES = ("reinforce", "ppo", "grpo", "gspo", "cispo")


def sampler_mismatch(trainer_logp, sampler_logp, mask) -> dict:
    """How far the sampler's log-probs are from the trainer's on the sampled tokens:
    KL(π_sampler ‖ π_trainer) (k3 estimate, token mean) and the largest absolute gap."""
    return {
        "mismatch/kl": losses.aggregate(losses.kl_estimate(sampler_logp, trainer_logp, "k3"), mask),
        "mismatch/max_abs": jnp.max(jnp.where(mask, jnp.abs(trainer_logp - sampler_logp), 0.0)),
    }


def _policy_loss(name: str, fwd: Forward, batch: Batch, common: dict, hparams: dict):
    mask, adv = batch["loss_mask"], batch["advantages"]
    if name == "reinforce":
        return losses.reinforce_loss(fwd.logp, adv, mask, **common, **hparams)
    if name == "grpo":
        return losses.grpo_loss(fwd.logp, batch["old_logp"], batch.get("ref_logp"), adv, mask,
                                **common, **hparams)
    loss_fn = {"ppo": losses.ppo_policy_loss, "gspo": losses.gspo_loss, "cispo": losses.cispo_loss}[name]
    return loss_fn(fwd.logp, batch["old_logp"], adv, mask, **common, **hparams)


def make_objective(
    policy_loss: str = "grpo",
    agg: str = "seq-mean-token-mean",
    norm_len: int | None = None,
    kl_coef: float = 0.0,
    kl_estimator: str = "k3",
    entropy_coef: float = 0.0,
    value_coef: float = 0.0,
    value_clip: float | None = None,
    is_correction: str | None = None,
    is_level: str = "token",
    is_cap: float = 2.0,
    advantages_fn: Callable[[Forward, Batch], tuple[dict, dict]] | None = None,
    **policy_hparams: Any,
) -> Objective:
    """Builds an objective. `policy_hparams` go to the policy loss (clip_eps, beta, kl, ...).

    advantages_fn(fwd, batch) -> (arrays, metrics), for a batch without advantages: the
    advantages (and whatever else the losses read, e.g. returns and old_values) from the step's
    own forward pass; its metrics join the step's.

    is_correction ("truncate" or "mask") reweights tokens by π_old / π_sampler
    (`losses.importance_weights`) to correct for a sampler whose log-probs differ from the
    trainer's; it needs `sampler_logp` in the batch.
    """
    if policy_loss not in POLICY_LOSSES:
        raise ValueError(f"unknown policy_loss {policy_loss!r}; choose one of {POLICY_LOSSES}")
    if policy_loss == "grpo" and kl_coef:
        raise ValueError("grpo_loss has its own KL term: set its `beta` instead of kl_coef")

    def objective(fwd: Forward, batch: Batch, counts: dict):
        mask = batch["loss_mask"]
        reduce = dict(agg=agg, norm_len=norm_len, **counts)
        own_metrics = {}
        if "advantages" not in batch:
            if advantages_fn is None:
                raise ValueError("the batch has no advantages and the objective no advantages_fn")
            arrays, own_metrics = advantages_fn(fwd, batch)
            batch = {**batch, **arrays}
        if "old_logp" not in batch:  # π_old = π_θ: the same numbers as a second forward pass
            batch = {**batch, "old_logp": jax.lax.stop_gradient(fwd.logp)}
            if "sampler_logp" in batch:
                own_metrics = {**own_metrics, **sampler_mismatch(batch["old_logp"], batch["sampler_logp"], mask)}
        is_weights, is_metrics = None, {}
        if is_correction is not None:
            is_weights, is_metrics = losses.importance_weights(
                batch["old_logp"], batch["sampler_logp"], mask, level=is_level, mode=is_correction, high=is_cap
            )
        loss, metrics = _policy_loss(policy_loss, fwd, batch, dict(reduce, is_weights=is_weights,
                                                                    entropy=fwd.entropy), policy_hparams)
        metrics = {**metrics, **is_metrics, **own_metrics, "policy_loss": loss}
        if kl_coef:
            kl = losses.kl_estimate(fwd.logp, batch["ref_logp"], kl_estimator)
            kl_loss = losses.aggregate(kl, mask, **reduce)
            loss = loss + kl_coef * kl_loss
            metrics["kl"] = kl_loss
        if entropy_coef:
            bonus, _ = losses.entropy_bonus(fwd.entropy, mask, entropy_coef, **reduce)
            loss = loss + bonus
        if value_coef:
            v_loss, v_metrics = losses.value_loss(fwd.values, batch["old_values"], batch["returns"], mask,
                                                  clip=value_clip, **reduce)
            loss = loss + value_coef * v_loss
            metrics = {**metrics, **{f"value/{k}": v for k, v in v_metrics.items()}, "value_loss": v_loss}
        return loss, metrics

    return objective
