"""The interface between rollouts and the learner: a typed batch of scored trajectories.

A rollout (single-turn prompts and completions, or multi-turn conversations with tool output)
produces a `TrajectoryBatch`; `rljax.train.learner` learns from it and reads nothing else. Every
field is always present, so the learner never branches on what a batch happens to hold. Shapes:
B = P·G rows (groups of G consecutive rows answer the same prompt), T tokens. Per-token arrays
are aligned with `tokens`: entry t belongs to token t.

  tokens          [B, T] int32    prompt (left-padded), then what followed it
  attention_mask  [B, T] bool     True on real tokens
  loss_mask       [B, T] bool     True exactly on the tokens the policy sampled (holes for
                                  template glue and tool output in multi-turn rows)
  sampler_logp    [B, T] float32  the sampler's log π(tokens[t] | tokens[<t]) (0 off loss_mask)
  rewards         [B] float32     each trajectory's total reward
  token_rewards   [B, T] float32  the same reward per token: on the last loss-mask token of the
                                  row (or each turn's share on that turn's last sampled token);
                                  Σ_t token_rewards = rewards
  baseline        [B] float32     a baseline supplied by the rollout (ReMax's greedy reward for
                                  the row's prompt; 0 when the advantage reads none)
  group_ids       [B] int32       which prompt each row answers (row // G)
  policy_version  [B] int32       the learner's step count when the row was sampled, so a
                                  stale (off-policy) batch is measured (`staleness`)
"""

from __future__ import annotations

import flax.struct
import jax
import numpy as np

from rljax import losses


@flax.struct.dataclass
class TrajectoryBatch:
    tokens: jax.Array
    attention_mask: jax.Array
    loss_mask: jax.Array
    sampler_logp: jax.Array
    rewards: jax.Array
    token_rewards: jax.Array
    baseline: jax.Array
    group_ids: jax.Array
    policy_version: jax.Array

    @property
    def num_rows(self) -> int:
        return self.tokens.shape[0]

    @classmethod
    def from_rows(cls, tokens, attention_mask, loss_mask, sampler_logp, rewards, group_size: int,
                  policy_version: int, token_rewards=None, baseline=None) -> "TrajectoryBatch":
        """A host batch (NumPy) of B rows in groups of `group_size`, checked for shape.

        token_rewards: per-token rewards [B, T] summing to `rewards`; default: each row's reward
        on its last loss-mask token. baseline: [B] (default zeros).
        """
        tokens = np.asarray(tokens, np.int32)
        B, T = tokens.shape
        attention_mask, loss_mask = (np.asarray(m, bool) for m in (attention_mask, loss_mask))
        rewards = np.asarray(rewards, np.float32)
        for name, x, shape in (("attention_mask", attention_mask, (B, T)), ("loss_mask", loss_mask, (B, T)),
                               ("sampler_logp", sampler_logp, (B, T)), ("rewards", rewards, (B,))):
            if np.shape(x) != shape:
                raise ValueError(f"{name} has shape {np.shape(x)}, expected {shape} (tokens are {tokens.shape})")
        if B % group_size:
            raise ValueError(f"{B} rows do not split into groups of {group_size}")
        if np.any(loss_mask & ~attention_mask):
            raise ValueError("loss_mask is True on a token that attention_mask marks as padding")
        if token_rewards is None:
            token_rewards = losses.last_token_rewards(rewards, loss_mask)
        token_rewards = np.asarray(token_rewards, np.float32)
        baseline = np.zeros(B, np.float32) if baseline is None else np.asarray(baseline, np.float32)
        return cls(tokens=tokens, attention_mask=attention_mask, loss_mask=loss_mask,
                   sampler_logp=np.where(loss_mask, np.asarray(sampler_logp, np.float32), 0.0),
                   rewards=rewards, token_rewards=token_rewards, baseline=baseline,
                   group_ids=np.repeat(np.arange(B // group_size, dtype=np.int32), group_size),
                   policy_version=np.full(B, policy_version, np.int32))

    @classmethod
    def from_generation(cls, prompt_tokens, prompt_mask, gen, rewards, group_size: int, policy_version: int = 0,
                        baseline=None) -> "TrajectoryBatch":
        """The batch of a single-turn rollout: prompts [P, L] (left-padded, mask [P, L]), each
        repeated for its G samples, followed by `generate`'s completions `gen` (P·G rows), with
        `rewards` [P·G]. The loss mask is the completion's mask (`gen.mask`)."""
        prompt_tokens, prompt_mask = np.asarray(prompt_tokens), np.asarray(prompt_mask, bool)
        tokens, mask, logprobs = (np.asarray(x) for x in (gen.tokens, gen.mask, gen.logprobs))
        repeat = lambda x: np.repeat(x, group_size, axis=0)  # noqa: E731
        no_loss = np.zeros(repeat(prompt_mask).shape, bool)
        return cls.from_rows(np.concatenate([repeat(prompt_tokens), tokens], 1),
                             np.concatenate([repeat(prompt_mask), mask], 1), np.concatenate([no_loss, mask], 1),
                             np.concatenate([no_loss.astype(np.float32), logprobs], 1), rewards, group_size,
                             policy_version, baseline=baseline)

    @classmethod
    def from_trajectories(cls, traj, group_size: int, policy_version: int = 0,
                          turn_rewards: bool = False) -> "TrajectoryBatch":
        """The batch of a multi-turn rollout (`rljax.envs.rollout`'s `Trajectories`, B rows in
        groups of `group_size`): its token stream as is, the loss on the sampled tokens only.
        With `turn_rewards`, each turn's reward sits on that turn's last sampled token (for a
        per-token advantage such as GAE); otherwise the whole reward on the row's last one."""
        token_rewards = None
        if turn_rewards:
            token_rewards = np.zeros(traj.tokens.shape, np.float32)
            rows, turns = np.nonzero(traj.turn_ends >= 0)
            np.add.at(token_rewards, (rows, traj.turn_ends[rows, turns]), traj.turn_rewards[rows, turns])
        return cls.from_rows(traj.tokens, traj.mask, traj.loss_mask, traj.logprobs, traj.rewards, group_size,
                             policy_version, token_rewards=token_rewards)
