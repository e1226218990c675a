"""Rollouts: prompts -> grouped generation -> rewards -> advantages -> a train batch.

The array work is pure (`sequences_from_generation`, `sequence_advantages`); decoding and
scoring run on the host, since reward functions are arbitrary Python.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from rljax import losses
from rljax.generate import Generation

# Sequence-level advantage estimators over rewards [B, G] (PPO uses token-level GAE instead).
ESTIMATORS = ("grpo", "dr_grpo", "rloo", "reinforce_pp", "reinforce_pp_baseline", "remax", "none")


def sequences_from_generation(prompt_tokens: jax.Array, prompt_mask: jax.Array, gen: Generation,
                              num_samples: int) -> dict[str, jax.Array]:
    """Joins each prompt [B, P] (repeated for its G samples) with its completions [B*G, N].

    Returns the train-batch arrays of `rljax.train.steps`, all [B*G, P+N]: tokens,
    attention_mask (prompt and completion), loss_mask (completion only) and sampler_logp
    (the sampler's log-prob of each completion token, 0 elsewhere).
    """
    prompts = jnp.repeat(prompt_tokens, num_samples, axis=0)
    prompt_mask = jnp.repeat(prompt_mask, num_samples, axis=0)
    no_loss = jnp.zeros_like(prompt_mask)
    return {
        "tokens": jnp.concatenate([prompts, gen.tokens], axis=1),
        "attention_mask": jnp.concatenate([prompt_mask, gen.mask], axis=1),
        "loss_mask": jnp.concatenate([no_loss, gen.mask], axis=1),
        "sampler_logp": jnp.concatenate([no_loss.astype(jnp.float32), jnp.where(gen.mask, gen.logprobs, 0.0)],
                                        axis=1),
    }


def sequence_advantages(estimator: str, rewards: jax.Array, greedy_rewards: jax.Array | None = None,
                        eps: float = 1e-6) -> jax.Array:
    """Per-sequence advantages [B, G] from rewards [B, G] (see `rljax.losses.advantages`).

    grpo: (r − mean_G) / (std_G + eps) (Shao et al. 2024); dr_grpo: r − mean_G (Liu et al. 2025);
    rloo: r − mean of the other G−1 (Ahmadian et al. 2024); reinforce_pp(_baseline): batch-
    normalised (Hu 2025); remax: r − r(greedy) (Li et al. 2023); none: r.
    """
    if estimator == "grpo":
        return losses.group_advantages(rewards, normalize_std=True, eps=eps)
    if estimator == "dr_grpo":
        return losses.group_advantages(rewards, normalize_std=False)
    if estimator == "rloo":
        return losses.rloo_advantages(rewards)
    if estimator in ("reinforce_pp", "reinforce_pp_baseline"):
        return losses.reinforce_pp_advantages(rewards, group_baseline=estimator == "reinforce_pp_baseline")
    if estimator == "remax":
        if greedy_rewards is None:
            raise ValueError("the remax estimator needs the rewards of greedy responses")
        return losses.remax_advantages(rewards, greedy_rewards)
    if estimator == "none":
        return jnp.asarray(rewards, jnp.float32)
    raise ValueError(f"unknown advantage estimator {estimator!r}; choose one of {ESTIMATORS}")


def decode_completions(tokenizer, tokens: np.ndarray, mask: np.ndarray) -> list[str]:
    """Text of each completion row: its masked tokens, without EOS ids."""
    eos = set(tokenizer.eos_ids)
    return [tokenizer.decode([int(t) for t, m in zip(row, row_mask) if m and int(t) not in eos])
            for row, row_mask in zip(np.asarray(tokens), np.asarray(mask))]


def informative_groups(rewards: np.ndarray) -> np.ndarray:
    """DAPO's dynamic-sampling filter (Yu et al. 2025): groups [B, G] whose rewards are not all
    equal, since a group with zero reward variance gives zero group-relative advantage."""
    return np.ptp(rewards, axis=1) > 0


def pairwise_agreement(true_rewards: np.ndarray, learned_rewards: np.ndarray) -> float:
    """How often a learned reward ranks two samples of one prompt as the true reward does: over
    the pairs (i, j) of a group [B, G] with true_i > true_j, the fraction with learned_i >
    learned_j (a tie counts one half). It is the reward model's pairwise accuracy on the policy's
    own samples, so a fall during RL marks over-optimisation (Gao et al. 2023). NaN when no
    group has two different true rewards."""
    t, s = np.asarray(true_rewards, np.float64), np.asarray(learned_rewards, np.float64)
    ordered = t[:, :, None] > t[:, None, :]  # [B, G, G]: pairs the true reward ranks
    won = np.sign(s[:, :, None] - s[:, None, :]) * 0.5 + 0.5  # 1, 0.5 on a tie, 0
    n = ordered.sum()
    return float((won * ordered).sum() / n) if n else float("nan")


def group_examples(examples: Sequence[Mapping[str, Any]], num_samples: int) -> list[Mapping[str, Any]]:
    """Repeats each example for its G samples, in generation order (sample i·G+j of prompt i)."""
    return [ex for ex in examples for _ in range(num_samples)]
