"""Advantage estimators and reward shaping.

Shapes: B batch (prompts), G group (samples per prompt), T tokens. Token-level functions take a
mask [B, T], True on real (trainable) tokens; masked positions are skipped by the recursions
(their rewards and values are ignored) and get 0 in every output. Advantages are constants of
the policy loss: they are computed outside the gradient, and the policy losses stop their
gradient again.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ._common import as_float, check_range, check_shapes, masked_moments
from .kl import kl_estimate

# ----------------------------------------------------------------------------- token level


def gae(rewards, values, mask, gamma=1.0, lam=0.95):
    """Generalised advantage estimation (Schulman et al. 2016, "High-dimensional continuous
    control using generalized advantage estimation"), over the real tokens of each sequence.

      δ_t = r_t + γ·V_{t'} − V_t,   A_t = δ_t + γλ·A_{t'},   R_t = A_t + V_t

    where t' is the next real token after t. Masked tokens are transparent: the recursion jumps
    over them (e.g. tool output inside a multi-turn response), their rewards and values are
    ignored, and their advantages and returns are 0.

    Bootstrap: V and A after the last real token are 0, i.e. the response is a complete episode
    ending at its last real token. For a truncated response that should bootstrap from V_boot,
    add γ·V_boot to the reward of its last real token.

    Args:
      rewards: [B, T] token-level rewards (e.g. from `kl_penalized_rewards`).
      values: [B, T] value predictions V_t (no gradient flows through them).
      mask: [B, T], True on real tokens.
      gamma: discount γ; lam: GAE λ (λ=1: Monte-Carlo returns minus V; λ=0: one-step TD).

    Returns:
      (advantages, returns), each [B, T] float32, 0 on masked tokens.
    """
    check_shapes(ndim=2, rewards=rewards, values=values, mask=mask)
    rewards, values = as_float(rewards), jax.lax.stop_gradient(as_float(values))
    real = jnp.asarray(mask, bool)

    def step(carry, xs):
        next_value, next_adv = carry
        r, v, m = xs
        adv = r + gamma * next_value - v + gamma * lam * next_adv
        carry = (jnp.where(m, v, next_value), jnp.where(m, adv, next_adv))
        return carry, jnp.where(m, adv, 0.0)

    zeros = jnp.zeros(rewards.shape[:1], rewards.dtype)
    _, adv = jax.lax.scan(step, (zeros, zeros), (rewards.T, values.T, real.T), reverse=True)
    adv = adv.T
    return adv, jnp.where(real, adv + values, 0.0)


def discounted_returns(rewards, mask, gamma=1.0):
    """Reward-to-go G_t = Σ_{s ≥ t, s real} γ^{k(s)} r_s over the real tokens ([B, T] -> [B, T]),
    with k(s) the number of real tokens between t and s: `gae` with V = 0 and λ = 1."""
    return gae(rewards, jnp.zeros_like(as_float(rewards)), mask, gamma=gamma, lam=1.0)[0]


def whiten(x, mask=None, shift_mean=True, eps=1e-8):
    """(x − mean) / sqrt(var + eps) over the real positions, as TRL's and verl's `masked_whiten`.

    The variance is the sample variance (ddof=1), as theirs is and as `group_advantages`'
    std. With shift_mean=False the mean is added back (scale only).

    Args:
      x: any shape; mask: same shape (None: every position is real).

    Returns:
      x's shape, 0 on masked positions.
    """
    check_shapes(x=x, mask=mask)
    mean, var = masked_moments(x, mask)
    out = (as_float(x) - mean) * jax.lax.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out if mask is None else jnp.where(mask, out, 0.0)


def last_token_rewards(scores, mask):
    """Place a sequence-level score [B] on the last real token of each row: [B, T] rewards."""
    check_shapes(ndim=2, mask=mask)
    check_shapes(scores=scores, rows=mask[:, 0])
    real = jnp.asarray(mask, bool)
    t = jnp.arange(mask.shape[1])
    last = jnp.max(jnp.where(real, t, -1), axis=1)
    return jnp.where(t == last[:, None], as_float(scores)[:, None], 0.0)


def kl_penalized_rewards(scores, logp, ref_logp, mask, beta, kind="k1"):
    """Token rewards with a KL penalty toward π_ref (Ziegler et al. 2019, "Fine-tuning language
    models from human preferences"; Ouyang et al. 2022, InstructGPT):

      r_t = −β·kl_t  + [t = last real token]·score,   kl_t = kl_estimate(logp, ref_logp, kind)_t

    Ziegler et al. use kl_t = log π − log π_ref ("k1"). The rewards are constants (stop-gradient).

    Args:
      scores: [B] sequence-level rewards (reward model or verifier).
      logp, ref_logp: [B, T] log-probs of the sampled tokens under π (the sampling policy) and
        π_ref.
      mask: [B, T]; beta: KL coefficient β (e.g. from `adaptive_kl_update`); kind: KL estimator.

    Returns:
      [B, T] float32 rewards, 0 on masked tokens; feed to `gae` or `discounted_returns`.
    """
    kl = kl_estimate(logp, ref_logp, kind)
    rewards = last_token_rewards(scores, mask) - beta * jnp.where(mask, kl, 0.0)
    return jax.lax.stop_gradient(rewards)


def adaptive_kl_update(beta, kl, target, gain=0.1, max_error=0.2):
    """One step of the adaptive KL controller of Ziegler et al. 2019, state in,
    state out:

      e = clip(KL / KL_target − 1, −max_error, max_error),   β' = β·(1 + K_β·e)

    with K_β = `gain` (0.1 in the paper). The lm-human-preferences code and TRL write the gain
    as n_steps / horizon (batch size / 10000); pass that as `gain` to match them.

    Args:
      beta: current β (scalar, the controller's state). kl: the KL observed this step (scalar,
        e.g. the batch mean of the summed per-sequence k1). target: KL_target.

    Returns:
      The next β (scalar).
    """
    check_range("target", target, low=0.0, low_open=True)
    error = jnp.clip(kl / target - 1.0, -max_error, max_error)
    return beta * (1.0 + gain * error)


def overlong_penalty(lengths, max_len, cache_len):
    """DAPO's soft overlong punishment (Yu et al. 2025, "DAPO: an open-source LLM reinforcement
    learning system at scale"), added to the task reward:

      R(L) = 0                                   if L ≤ L_max − L_cache
             ((L_max − L_cache) − L) / L_cache   if L_max − L_cache < L ≤ L_max
             −1                                  if L > L_max

    Args:
      lengths: [B] (or any shape) response lengths L in tokens.
      max_len: L_max; cache_len: L_cache, the length of the soft-punishment buffer (> 0).

    Returns:
      lengths' shape, float32, in [−1, 0].
    """
    check_range("cache_len", cache_len, low=0, low_open=True, high=max_len)
    lengths = as_float(lengths)
    soft = (max_len - cache_len - lengths) / cache_len
    return jnp.where(lengths > max_len, -1.0, jnp.minimum(soft, 0.0))


# ----------------------------------------------------------------------- sequence level


def _check_groups(rewards, min_group):
    check_shapes(ndim=2, rewards=rewards)
    if rewards.shape[1] < min_group:
        raise ValueError(f"rewards must be [B, G] with G ≥ {min_group}, got shape {rewards.shape}")
    return as_float(rewards)


def group_advantages(rewards, normalize_std=True, eps=1e-6):
    """Group-relative advantages of GRPO (Shao et al. 2024, "DeepSeekMath"), [B, G] -> [B, G]:

      A_i = (r_i − mean_G(r)) / (std_G(r) + eps)

    std the sample standard deviation (ddof=1), as TRL, verl and Tunix use. With
    normalize_std=False: A_i = r_i − mean_G(r), Dr. GRPO (Liu et al. 2025, "Understanding
    R1-Zero-like training: a critical perspective"). Invariant to a shift of the rewards; a group
    whose rewards are all equal gets 0.
    """
    rewards = _check_groups(rewards, 2 if normalize_std else 1)
    centred = rewards - jnp.mean(rewards, axis=1, keepdims=True)
    if not normalize_std:
        return centred
    return centred / (jnp.std(rewards, axis=1, ddof=1, keepdims=True) + eps)


def rloo_advantages(rewards):
    """REINFORCE leave-one-out (Kool et al. 2019, "Buy 4 REINFORCE samples, get a baseline for
    free!"; Ahmadian et al. 2024, "Back to basics"), [B, G] -> [B, G]:

      A_i = r_i − (1/(G−1)) Σ_{j≠i} r_j  = G/(G−1) · (r_i − mean_G(r))

    The baseline excludes the sample itself, so the gradient estimate is unbiased. Sums to 0 per
    group.
    """
    rewards = _check_groups(rewards, 2)
    g = rewards.shape[1]
    others = (jnp.sum(rewards, axis=1, keepdims=True) - rewards) / (g - 1)
    return rewards - others


def remax_advantages(rewards, greedy_rewards):
    """ReMax (Li et al. 2023, "ReMax: a simple, effective, and efficient reinforcement learning
    method for aligning large language models"): the baseline is the reward of the greedy
    (argmax) response to the same prompt,

      A_i = r(x, y_i) − r(x, ŷ_greedy)

    Args:
      rewards: [B] or [B, G] rewards of sampled responses.
      greedy_rewards: [B] rewards of each prompt's greedy response.

    Returns:
      rewards' shape.
    """
    rewards, greedy_rewards = as_float(rewards), as_float(greedy_rewards)
    if greedy_rewards.ndim != 1 or rewards.shape[:1] != greedy_rewards.shape or rewards.ndim > 2:
        raise ValueError(
            f"rewards must be [B] or [B, G] and greedy_rewards [B]; got {rewards.shape} and "
            f"{greedy_rewards.shape}"
        )
    return rewards - greedy_rewards.reshape(greedy_rewards.shape + (1,) * (rewards.ndim - 1))


def reinforce_pp_advantages(rewards, group_baseline=False, eps=1e-8):
    """REINFORCE++ advantages (Hu 2025, "REINFORCE++: a simple and efficient approach for
    aligning large language models"): global batch normalisation instead of a critic,

      A_i = r_i − b_i,   Â_i = (A_i − mean_batch(A)) / sqrt(var_batch(A) + eps)

    with b_i = 0 (REINFORCE++) or b_i = mean_G(r) (REINFORCE++-baseline, group_baseline=True).
    The mean and variance (ddof=1) are over every sequence of the batch, not per group.

    The token-level form with the KL penalty in the reward, as in the paper's first version, is
    the composition `whiten(discounted_returns(kl_penalized_rewards(...), mask), mask)`
    (normalisation over tokens, as OpenRLHF does).

    Args:
      rewards: [B, G] sequence rewards ([B] also accepted when group_baseline=False).

    Returns:
      rewards' shape.
    """
    if group_baseline:
        rewards = group_advantages(rewards, normalize_std=False)
    return whiten(rewards, eps=eps)
