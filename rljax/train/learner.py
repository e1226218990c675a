"""One jitted learner per rollout: `learn(state, trajectories, key) -> (state, metrics)`.

Given a `TrajectoryBatch` (B rows in groups of G), one call does, on device, in one program:

  1. the reference pass: log π_ref of the sampled tokens, when a KL penalty is on;
  2. the old pass: log π_old (and the critic's V_old), gradient-free, when there is more than
     one update per rollout; with a single update π_old = π_θ, so the update's own forward pass
     (gradient stopped) gives them and no second pass runs;
  3. the advantages: `rljax.losses.registry` row `rl.advantage` of the (KL-shaped) rewards;
  4. `epochs` × `minibatches` updates in `lax.scan` (each epoch one shuffle of the rows, each
     update exact gradient accumulation over `micro_batches`), AdamW after each.

The objective of an update, on the tokens of the loss mask (aggregated with `rl.agg` and the
minibatch's global counts):

  loss = surrogate(log π_θ, log π_old, A)                    (`rl.surrogate`, with IS weights)
       + β · aggregate(kl_estimate(log π_θ, log π_ref))    (rl.kl.placement == "loss")
       − entropy_coef · aggregate(H(π_θ))
       + value_coef · value_loss(V, V_old, returns)        (advantages with a critic)

With the KL in the reward instead, each sampled token pays β·kl_t(π_old, π_ref) in the token
rewards (Ziegler et al. 2019) before the advantages. The learner runs through the mesh step
(`rljax.train.sharded.MeshStep`): sharded over the device mesh, the state donated.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

from rljax import losses
from rljax.losses import registry
from rljax.train.config import RLConfig
from rljax.train.networks import Forward, Networks
from rljax.train.state import TrainState
from rljax.train.steps import accumulate_gradients, apply_update
from rljax.train.trajectories import TrajectoryBatch


@flax.struct.dataclass
class PolicyBatch:
    """A complete update batch: the rollout's rows with everything the objective reads."""

    tokens: jax.Array  # [B, T]
    attention_mask: jax.Array  # [B, T]
    loss_mask: jax.Array  # [B, T]
    sampler_logp: jax.Array  # [B, T]
    old_logp: jax.Array  # [B, T] log π_old
    ref_logp: jax.Array  # [B, T] log π_ref (0 without a KL)
    advantages: jax.Array  # [B] or [B, T]
    old_values: jax.Array  # [B, T] V_old (0 without a critic)
    returns: jax.Array  # [B, T] the critic's targets (0 without a critic)


def sampler_mismatch(trainer_logp, sampler_logp, mask) -> dict:
    """How far the sampler's log-probs are from the trainer's on the sampled tokens:
    KL(π_sampler ‖ π_trainer) (k3 estimate, token mean) and the largest absolute gap."""
    return {
        "mismatch/kl": losses.aggregate(losses.kl_estimate(sampler_logp, trainer_logp, "k3"), mask),
        "mismatch/max_abs": jnp.max(jnp.where(mask, jnp.abs(trainer_logp - sampler_logp), 0.0)),
    }


@dataclasses.dataclass(frozen=True)
class Learner:
    """The RL update of `rl` on `networks`, with `optimizer` (an optax transformation).

    `learn` is pure; `norm_len` is Dr. GRPO's constant normaliser (the rollout's max new tokens).
    Static plan, decided once from the config (never from what a batch holds):
      old_pass            a gradient-free pass gives π_old and V_old before the updates;
      advantages_in_step  the single update computes the advantages from its own forward pass
                          (they depend on π_old or V_old, and the update sees the whole batch).
    """

    networks: Networks
    rl: RLConfig
    optimizer: Any
    norm_len: int | None = None

    def __post_init__(self):
        advantage = registry.advantage(self.rl.advantage)
        if advantage.needs_critic and not self.networks.has_critic:
            raise ValueError(f"the {self.rl.advantage!r} advantage needs a critic: a policy config with "
                             "value_head=True, or a separate critic network")

    @property
    def advantages_read_policy(self) -> bool:
        """The advantages depend on π_old or V_old (a critic, or a KL-shaped reward)."""
        return registry.advantage(self.rl.advantage).needs_critic or (
            self.rl.kl.active and self.rl.kl.placement == "reward")

    @property
    def old_pass(self) -> bool:
        single = self.rl.updates_per_rollout == 1
        return not (single and (self.rl.micro_batches == 1 or not self.advantages_read_policy))

    @property
    def advantages_in_step(self) -> bool:
        return not self.old_pass and self.advantages_read_policy

    # -- the pieces, pure ---------------------------------------------------------------------
    def prepare(self, batch: TrajectoryBatch, trainer_logp, old_values, ref_logp) -> tuple[PolicyBatch, dict]:
        """Steps 2-3 on a whole batch: π_old, the KL-shaped rewards and the advantages.

        trainer_logp, old_values: [B, T] the trainer's log π_old and V_old (placeholders where
        the advantages read neither and the update fills π_old in)."""
        rl, mask = self.rl, batch.loss_mask
        old_logp = trainer_logp if rl.old_logp == "trainer" else batch.sampler_logp
        rewards, token_rewards, metrics = batch.rewards, batch.token_rewards, {}
        if rl.kl.active and rl.kl.placement == "reward":
            kl = jnp.where(mask, losses.kl_estimate(old_logp, ref_logp, rl.kl.estimator), 0.0)
            token_rewards = token_rewards - rl.kl.coef * kl
            rewards = rewards - rl.kl.coef * kl.sum(axis=1)
            metrics["kl"] = losses.aggregate(kl, mask, "token-mean")
        inputs = registry.AdvantageInputs(rewards, token_rewards, mask, old_values, batch.baseline, rl.group_size)
        advantages, returns = registry.compute_advantages(rl.advantage, inputs, **rl.advantage_hparams)
        prepared = PolicyBatch(
            tokens=batch.tokens, attention_mask=batch.attention_mask, loss_mask=mask,
            sampler_logp=batch.sampler_logp, old_logp=old_logp, ref_logp=ref_logp,
            advantages=jax.lax.stop_gradient(advantages), old_values=old_values,
            returns=jnp.zeros_like(old_values) if returns is None else jax.lax.stop_gradient(returns))
        return prepared, metrics

    def objective(self, fwd: Forward, batch: PolicyBatch, counts: dict) -> tuple[jax.Array, dict]:
        """The loss of one (micro-)batch, normalised by its minibatch's global `counts`."""
        rl, mask = self.rl, batch.loss_mask
        reduce = dict(agg=rl.agg, norm_len=self.norm_len, **counts)
        is_weights, metrics = None, {}
        if rl.is_correction is not None:
            is_weights, metrics = losses.importance_weights(batch.old_logp, batch.sampler_logp, mask,
                                                            mode=rl.is_correction)
        loss, policy_metrics = registry.surrogate_loss(
            rl.surrogate, fwd.logp, batch.old_logp, batch.advantages, mask, is_weights=is_weights,
            entropy=fwd.entropy, **reduce, **rl.surrogate_hparams)
        metrics = {**metrics, **policy_metrics, "policy_loss": loss}
        if rl.kl.active and rl.kl.placement == "loss":
            kl = losses.aggregate(losses.kl_estimate(fwd.logp, batch.ref_logp, rl.kl.estimator), mask, rl.agg,
                                  self.norm_len, **counts)
            loss, metrics["kl"] = loss + rl.kl.coef * kl, kl
        if rl.entropy_coef:
            bonus, _ = losses.entropy_bonus(fwd.entropy, mask, rl.entropy_coef, **reduce)
            loss = loss + bonus
        if registry.advantage(rl.advantage).needs_critic:
            v_loss, v_metrics = losses.value_loss(fwd.values, batch.old_values, batch.returns, mask,
                                                  clip=rl.value_clip, **reduce)
            loss = loss + rl.value_coef * v_loss
            metrics = {**metrics, **{f"value/{k}": v for k, v in v_metrics.items()}, "value_loss": v_loss}
        return loss, metrics

    def _forward(self, params, frozen, batch) -> Forward:
        return self.networks.forward(params, frozen, batch.tokens, batch.attention_mask, batch.loss_mask)

    def _step(self, state: TrainState, loss_fn, batch, counts_mask) -> tuple[TrainState, dict]:
        """One optimiser step: `loss_fn(params, micro_batch)` summed over `rl.micro_batches`
        slices of `batch` along B, normalised by the counts of `counts_mask` [B, T]."""
        counts = losses.global_counts(counts_mask)
        loss, metrics, grads = accumulate_gradients(lambda p, mb: loss_fn(p, mb, counts), state.params, batch,
                                                    self.rl.micro_batches)
        return apply_update(state, self.optimizer, loss, metrics, grads)

    def update(self, state: TrainState, batch: PolicyBatch) -> tuple[TrainState, dict]:
        """One update on a complete minibatch (π_old and the advantages from before)."""
        return self._step(state, lambda p, mb, counts: self.objective(self._forward(p, state.frozen, mb), mb, counts),
                          batch, batch.loss_mask)

    def on_policy_update(self, state: TrainState, batch: TrajectoryBatch, ref_logp,
                         prepared: PolicyBatch | None) -> tuple[TrainState, dict]:
        """The one update of a rollout, where π_old = π_θ: the update's own forward pass, gradient
        stopped, gives log π_old and V_old. With `prepared` None the advantages come from that
        pass too (the update then sees the whole batch); otherwise only π_old is filled in."""

        def loss_fn(params, micro, counts):
            trajectories, micro_ref, micro_prepared = micro
            fwd = self._forward(params, state.frozen, trajectories)
            old = jax.tree.map(jax.lax.stop_gradient, fwd)
            metrics = sampler_mismatch(old.logp, trajectories.sampler_logp, trajectories.loss_mask)
            if micro_prepared is None:
                micro_prepared, kl_metrics = self.prepare(trajectories, old.logp, old.values, micro_ref)
                metrics.update(kl_metrics)
            elif self.rl.old_logp == "trainer":
                micro_prepared = micro_prepared.replace(old_logp=old.logp)
            loss, objective_metrics = self.objective(fwd, micro_prepared, counts)
            return loss, {**metrics, **objective_metrics}

        return self._step(state, loss_fn, (batch, ref_logp, prepared), batch.loss_mask)

    def learn(self, state: TrainState, batch: TrajectoryBatch, key: jax.Array) -> tuple[TrainState, dict]:
        """Steps 1-4 (module docstring). Metrics: means over the updates, plus `nonfinite` [U],
        one flag per update (1: its loss or gradient was not finite and it was skipped),
        `staleness` (optimiser steps since the batch was sampled) and the pre-update ones."""
        rl = self.rl
        ref_logp = jnp.zeros(batch.loss_mask.shape, jnp.float32)
        if rl.kl.active:
            ref_logp = jax.lax.stop_gradient(self.networks.reference_logp(
                state.frozen, batch.tokens, batch.attention_mask, batch.loss_mask))
        metrics = {"staleness": jnp.mean((state.step - batch.policy_version).astype(jnp.float32))}
        if self.old_pass:
            old = jax.lax.stop_gradient(self._forward(state.params, state.frozen, batch))
            prepared, pre_metrics = self.prepare(batch, old.logp, old.values, ref_logp)
            pre_metrics.update(sampler_mismatch(old.logp, batch.sampler_logp, batch.loss_mask))
            state, update_metrics = self._updates(state, prepared, key)
        else:
            prepared, pre_metrics = None, {}
            if not self.advantages_in_step:  # from the rewards alone; π_old is filled in the update
                placeholder = jnp.zeros(batch.loss_mask.shape, jnp.float32)
                prepared, pre_metrics = self.prepare(batch, placeholder, placeholder, ref_logp)
            state, update_metrics = self.on_policy_update(state, batch, ref_logp, prepared)
            update_metrics = jax.tree.map(lambda x: x[None], update_metrics)
        nonfinite = update_metrics.pop("nonfinite")
        means = {k: jnp.mean(v, axis=0) for k, v in update_metrics.items()}
        return state, {**pre_metrics, **means, **metrics, "nonfinite": nonfinite}

    def _updates(self, state: TrainState, prepared: PolicyBatch, key) -> tuple[TrainState, dict]:
        """`epochs` passes of `minibatches` updates, in `lax.scan` (each epoch one shuffle of the
        rows, then contiguous minibatches); metrics stacked [U, ...]."""
        rl = self.rl
        if rl.updates_per_rollout == 1:
            state, metrics = self.update(state, prepared)
            return state, jax.tree.map(lambda x: x[None], metrics)
        rows = prepared.tokens.shape[0]

        def epoch(state, epoch_key):
            order = jax.random.permutation(epoch_key, rows)
            minibatches = jax.tree.map(
                lambda x: jnp.take(x, order, axis=0).reshape(rl.minibatches, rows // rl.minibatches, *x.shape[1:]),
                prepared)
            return jax.lax.scan(self.update, state, minibatches)

        state, metrics = jax.lax.scan(epoch, state, jax.random.split(key, rl.epochs))
        return state, jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:]), metrics)
