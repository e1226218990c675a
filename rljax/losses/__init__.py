"""Losses and estimators for RL on language models, as pure functions of arrays.

No model, config or RNG inside: hyperparameters are keyword arguments, losses return
(loss, metrics), and per-token terms (`*_term`, [B, T]) are separate from the reductions
(`aggregate`), so estimators can be composed and compared. Shapes: B batch, G group, T tokens,
V vocab.

  tokens       token_logprobs, entropy (chunked over tokens)
  kl           kl_estimate (Schulman's k1, k2, k3 and straight-through k1+, k3+)
  aggregation  aggregate (four modes, global normalisers), seq_sum, seq_mean, global_counts
  advantages   gae, discounted_returns, whiten, group_advantages, rloo_advantages,
               remax_advantages, reinforce_pp_advantages, last_token_rewards,
               kl_penalized_rewards, adaptive_kl_update, overlong_penalty
  policy       REINFORCE, PPO, GRPO, GSPO, CISPO losses and terms, importance_weights,
               entropy_bonus
  value        value_loss
  preference   dpo_loss, kto_loss, simpo_loss, orpo_loss, bradley_terry_loss
  sft          sft_loss
  registry     ADVANTAGES, SURROGATES: estimator names -> these functions (the trainer's and the
               estimator study's one table)
"""

from .advantages import (
    adaptive_kl_update,
    discounted_returns,
    gae,
    group_advantages,
    kl_penalized_rewards,
    last_token_rewards,
    overlong_penalty,
    reinforce_pp_advantages,
    remax_advantages,
    rloo_advantages,
    whiten,
)
from .aggregation import AGG_MODES, aggregate, global_counts, seq_mean, seq_sum
from .kl import KL_KINDS, kl_estimate
from .policy import (
    cispo_loss,
    cispo_term,
    clipped_surrogate,
    entropy_bonus,
    grpo_loss,
    gspo_loss,
    gspo_term,
    importance_weights,
    ppo_policy_loss,
    ppo_term,
    reinforce_loss,
    reinforce_term,
)
from .preference import DPO_LOSS_TYPES, bradley_terry_loss, dpo_loss, kto_loss, orpo_loss, simpo_loss
from .sft import sft_loss
from .tokens import entropy, token_logprobs
from .value import value_loss

__all__ = [
    "AGG_MODES",
    "DPO_LOSS_TYPES",
    "KL_KINDS",
    "adaptive_kl_update",
    "aggregate",
    "bradley_terry_loss",
    "cispo_loss",
    "cispo_term",
    "clipped_surrogate",
    "discounted_returns",
    "dpo_loss",
    "entropy",
    "entropy_bonus",
    "gae",
    "global_counts",
    "group_advantages",
    "grpo_loss",
    "gspo_loss",
    "gspo_term",
    "importance_weights",
    "kl_estimate",
    "kl_penalized_rewards",
    "kto_loss",
    "last_token_rewards",
    "orpo_loss",
    "overlong_penalty",
    "ppo_policy_loss",
    "ppo_term",
    "reinforce_loss",
    "reinforce_pp_advantages",
    "reinforce_term",
    "remax_advantages",
    "rloo_advantages",
    "seq_mean",
    "seq_sum",
    "sft_loss",
    "simpo_loss",
    "token_logprobs",
    "value_loss",
    "whiten",
]
