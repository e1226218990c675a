"""The RL loop: prompts -> grouped generation -> rewards -> advantages -> policy updates.

One iteration (Shao et al. 2024's GRPO loop; PPO with a critic when `algorithm="ppo"`):
  1. draw B prompts, sample G completions each (one jit: prefill once, decode loop);
  2. score them on the host (a reward function that raises or hangs gives 0, counted);
  3. DAPO dynamic sampling (optional): keep groups whose rewards differ, refill from new prompts;
  4. trainer log-probs of the samples (old policy; the sampler/trainer mismatch is logged; with
     one update per rollout, the update's own forward pass gives them), reference log-probs for
     the KL, critic values for PPO;
  5. advantages (group-relative estimators, or GAE on KL-shaped token rewards for PPO, which
     computes them inside its one update when there is only one: `in_step_advantages`);
  6. `epochs` passes over the batch in `minibatches` shuffled mini-batches of policy updates.
Iteration i uses PRNG key fold_in(seed_key, i) and the prompt sampler's position from the
checkpoint, so a resumed run repeats exactly what an uninterrupted one would have done.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from rljax import generate, losses, models, sharding
from rljax.data.batching import pad_left
from rljax.data.sampler import PromptSampler
from rljax.models.config import ModelConfig
from rljax.rewards import score
from rljax.sharding import to_host
from rljax.train import rollout
from rljax.train.steps import make_policy_step, run_networks
from rljax.train.faults import NonFiniteGuard
from rljax.train.objectives import make_objective, sampler_mismatch
from rljax.train.optim import LR_DECAYS, make_optimizer
from rljax.train.sharded import MeshStep, on_mesh, place_rows
from rljax.train.state import TrainState


@dataclasses.dataclass(frozen=True)
class RLConfig:
    """Hyperparameters of the RL loop; the defaults are GRPO's (Shao et al. 2024)."""

    algorithm: str = "grpo"  # "grpo" family (any estimator + policy loss) or "ppo" (critic + GAE)
    estimator: str = "grpo"  # see rollout.ESTIMATORS; ignored by ppo
    policy_loss: str = "grpo"  # see objectives.POLICY_LOSSES
    steps: int = 100  # RL iterations
    prompts_per_step: int = 16  # B
    group_size: int = 8  # G
    max_new_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    learning_rate: float = 1e-5
    warmup_steps: int = 0
    # After warmup: "constant", or "cosine"/"linear" decay to 0 at the last optimiser step (an
    # annealed end averages out the policy gradient's noise; see configs/grpo_arithmetic.py).
    lr_decay: str = "constant"
    weight_decay: float = 0.0
    clip_norm: float = 1.0
    epochs: int = 1
    minibatches: int = 1
    micro_batches: int = 1
    clip_eps: float = 0.2
    clip_eps_high: float | None = None
    agg: str = "seq-mean-token-mean"
    beta: float = 0.0  # KL coefficient (in the loss: GRPO's β or kl_coef; in the reward: PPO-style)
    kl_estimator: str = "k3"
    kl_in_reward: bool = False
    entropy_coef: float = 0.0
    old_logp: str = "trainer"  # "trainer" (recomputed, or the update's own if it is the only one) or "sampler"
    is_correction: str | None = None  # "truncate" / "mask": sampler/trainer importance weights
    dynamic_sampling: bool = False
    max_sampling_rounds: int = 3
    # A learned reward (RLTrainer(reward_model=...)): minus each group's mean, since a
    # Bradley-Terry reward is identified only up to a constant per prompt; False leaves that
    # constant to a critic (e.g. one initialised from the reward model, which predicts it).
    center_learned_reward: bool = True
    # PPO
    value_coef: float = 0.5
    value_clip: float | None = 0.2
    gamma: float = 1.0
    lam: float = 0.95
    whiten_advantages: bool = True


def validate(rl: RLConfig) -> None:
    """Rejects settings that cannot work, naming the key and the fix."""
    if rl.algorithm not in ("grpo", "ppo"):
        raise ValueError(f"rl.algorithm={rl.algorithm!r}: choose 'grpo' (critic-free family) or 'ppo'")
    if rl.algorithm == "grpo" and rl.estimator not in rollout.ESTIMATORS:
        raise ValueError(f"rl.estimator={rl.estimator!r}: choose one of {rollout.ESTIMATORS}")
    group_relative = rl.estimator in ("grpo", "dr_grpo", "rloo", "reinforce_pp_baseline")
    if rl.algorithm == "grpo" and group_relative and rl.group_size < 2:
        raise ValueError(f"rl.group_size={rl.group_size}: the {rl.estimator} estimator compares samples "
                         "of a group, so it needs rl.group_size >= 2")
    rows = rl.prompts_per_step * rl.group_size
    if rows % (rl.minibatches * rl.micro_batches):
        raise ValueError(f"rl.prompts_per_step * rl.group_size = {rows} must be divisible by "
                         f"rl.minibatches * rl.micro_batches = {rl.minibatches * rl.micro_batches}")
    if rl.lr_decay not in LR_DECAYS:
        raise ValueError(f"rl.lr_decay={rl.lr_decay!r}: choose one of {LR_DECAYS}")
    if rl.old_logp not in ("trainer", "sampler"):
        raise ValueError(f"rl.old_logp={rl.old_logp!r}: choose 'trainer' or 'sampler'")
    if rl.is_correction is not None and rl.old_logp != "trainer":
        raise ValueError("rl.is_correction compares trainer and sampler log-probs: set rl.old_logp='trainer'")


def rollout_advantages(rl: RLConfig, scores, mask, old_logp=None, ref_logp=None, values=None, greedy=None):
    """Step 5 of the loop, pure: a rollout's advantages and the arrays its update reads with them.

    With the KL in the reward (rl.kl_in_reward, rl.beta = β > 0) each token pays β·kl_t,
    kl_t = kl_estimate(log π_old, log π_ref)_t (Ziegler et al. 2019 use k1: log π_old − log π_ref).
      ppo:  r_t = −β·kl_t + [t = last real token]·score, GAE(γ, λ) on the critic's values
            (Schulman et al. 2016), the advantages whitened over the batch's real tokens
            (rl.whiten_advantages) -> advantages, returns, old_values [B·G, T];
      grpo family: the estimator's advantages (`rollout.sequence_advantages`) of the scores
            minus β·Σ_t kl_t, over groups [B, G] -> advantages [B·G].
    scores: [B·G]; mask: the loss mask [B·G, T]; old_logp, ref_logp, values: [B·G, T], needed
    only by the KL and by PPO; greedy: ReMax's greedy rewards [B].
    Returns (arrays, metrics): metrics holds `kl`, the penalised KL's token mean, when there is one.
    """
    metrics = {}
    penalised = rl.kl_in_reward and rl.beta
    if penalised:
        kl = losses.kl_estimate(old_logp, ref_logp, rl.kl_estimator)
        metrics["kl"] = losses.aggregate(kl, mask, "token-mean")
    if rl.algorithm == "ppo":
        token_rewards = (losses.kl_penalized_rewards(scores, old_logp, ref_logp, mask, rl.beta, rl.kl_estimator)
                         if penalised else losses.last_token_rewards(scores, mask))
        advantages, returns = losses.gae(token_rewards, values, mask, rl.gamma, rl.lam)
        if rl.whiten_advantages:
            advantages = losses.whiten(advantages, mask)
        return {"advantages": advantages, "returns": returns, "old_values": values}, metrics
    if penalised:
        scores = scores - rl.beta * losses.seq_sum(kl, mask)
    B, G = rl.prompts_per_step, rl.group_size
    advantages = rollout.sequence_advantages(rl.estimator, scores.reshape(B, G), greedy)
    return {"advantages": advantages.reshape(-1)}, metrics


def in_step_advantages(rl: RLConfig, fwd, batch):
    """PPO's advantages inside the one update of an on-policy rollout: π_old and V_old are the
    networks being updated, so the step's own forward pass (gradient stopped) gives the old
    log-probs and values that `rollout_advantages` reads, and no separate pass is needed. The
    batch carries the scores (and ref_logp); whitening spans the batch the step sees, so the
    trainer uses this only without micro-batches."""
    stop = jax.lax.stop_gradient
    return rollout_advantages(rl, batch["scores"], batch["loss_mask"], stop(fwd.logp), batch.get("ref_logp"),
                              stop(fwd.values))


def make_rl_objective(rl: RLConfig):
    """The objective of `rl` (policy loss, KL in the loss unless in the reward, entropy, critic).
    PPO's computes the advantages itself (`in_step_advantages`) from a batch that has none."""
    kl_in_loss = rl.beta if not rl.kl_in_reward else 0.0
    policy = "ppo" if rl.algorithm == "ppo" else rl.policy_loss
    hparams: dict[str, Any] = {}
    if policy in ("ppo", "grpo", "gspo"):
        hparams.update(clip_eps=rl.clip_eps, clip_eps_high=rl.clip_eps_high)
    if policy == "cispo":
        hparams.update(clip_eps_high=rl.clip_eps_high if rl.clip_eps_high is not None else 0.28)
    if policy == "grpo":
        hparams.update(beta=kl_in_loss, kl=rl.kl_estimator)
        kl_in_loss = 0.0
    return make_objective(
        policy, agg=rl.agg, norm_len=rl.max_new_tokens, kl_coef=kl_in_loss, kl_estimator=rl.kl_estimator,
        entropy_coef=rl.entropy_coef, value_coef=rl.value_coef if rl.algorithm == "ppo" else 0.0,
        value_clip=rl.value_clip, is_correction=rl.is_correction,
        advantages_fn=functools.partial(in_step_advantages, rl) if rl.algorithm == "ppo" else None, **hparams,
    )


class RLTrainer:
    """Holds the compiled functions of one RL run; `iteration` runs one loop iteration.

    policy_cfg/ref params: the policy starts from `params`; `ref_params` (frozen) anchors the KL.
    critic_cfg: PPO's separate critic network (None: the policy's value head, shared trunk).
    guard: counts optimiser steps skipped for a non-finite loss or gradient and stops the run
      after too many in a row (default: `NonFiniteGuard()`).
    reward_model: a learned reward, (tokens [B, T], attention_mask [B, T]) -> [B] (e.g.
      `rljax.train.reward_model.reward_function`): when set, the policy is trained on it, and the
      reward functions' score is only logged (reward/true; reward/learned is the model's;
      reward/agreement, its pairwise accuracy on the rollout: `rollout.pairwise_agreement`).
    mesh: the devices to run on (`rljax.sharding.make_mesh`; default: this process's first device).
      On more than one device the params passed in must already be sharded
      (`sharding.shard_params`); the policy step is `shard_train_step`'s, and generation and the
      log-prob and value passes run under `sharding.use_mesh` on batches split over data x fsdp.
      A mesh over several processes needs every process to make the same calls; what the host
      reads (completions to decode and score, metrics) is gathered whole on each of them
      (`sharding.to_host`), so they all score, log and decide alike.
    """

    def __init__(self, rl: RLConfig, cfg: ModelConfig, tokenizer, reward_fns: Mapping[str, Callable],
                 reward_weights: Mapping[str, float], prompt_len: int,
                 critic_cfg: ModelConfig | None = None, reward_timeout_s: float = 5.0,
                 reward_model: Callable | None = None, guard: NonFiniteGuard | None = None,
                 mesh: Mesh | None = None):
        validate(rl)
        self.mesh = mesh if mesh is not None else sharding.one_device_mesh()
        self.rl, self.cfg, self.tokenizer, self.critic_cfg = rl, cfg, tokenizer, critic_cfg
        self.reward_model = reward_model
        self.guard = guard if guard is not None else NonFiniteGuard()
        self.reward_fns, self.reward_weights = dict(reward_fns), dict(reward_weights)
        self.prompt_len, self.reward_timeout_s = prompt_len, reward_timeout_s
        if rl.algorithm == "ppo" and critic_cfg is None and not cfg.value_head:
            raise ValueError("PPO needs a critic: set model.value_head=True (shared trunk) or a critic config")
        updates = rl.steps * rl.epochs * rl.minibatches
        # With one update per rollout the trainer's old log-probs (and PPO's old values) are those
        # of the params being updated, so the step takes them from its own forward pass instead of
        # a second one. PPO's advantages then come from the step too (`in_step_advantages`; their
        # whitening needs the whole batch in one micro-batch); the other estimators compute theirs
        # before the step, so a KL-shaped reward there still needs the separate pass.
        one_update = rl.old_logp == "trainer" and rl.epochs * rl.minibatches == 1
        self.advantages_in_step = one_update and rl.algorithm == "ppo" and rl.micro_batches == 1
        self.old_logp_in_step = self.advantages_in_step or (one_update and rl.algorithm != "ppo"
                                                            and not (rl.kl_in_reward and rl.beta))
        self.optimizer = make_optimizer(rl.learning_rate, total_steps=updates, warmup_steps=rl.warmup_steps,
                                        decay=rl.lr_decay, weight_decay=rl.weight_decay, clip_norm=rl.clip_norm)
        step = make_policy_step(cfg, self.optimizer, make_rl_objective(rl), rl.micro_batches, critic_cfg,
                                with_entropy=True)
        param_axes = models.param_axes(cfg)
        if critic_cfg is not None:
            param_axes = {"policy": param_axes, "critic": models.param_axes(critic_cfg)}
        self._step = MeshStep(step, self.mesh, param_axes)
        # The gradient-free passes over a rollout: one forward of the policy (and critic) gives the
        # old log-probs and, for PPO, the values; the fused LM head scores the completion only.
        # Traced and run under the mesh, like generation and the step.
        forward = lambda c, p, batch, critic_cfg: run_networks(c, p, batch, critic_cfg,  # noqa: E731
                                                                logp_where=batch["loss_mask"])
        self._forward = on_mesh(self.mesh)(jax.jit(forward, static_argnums=(0, 3)))
        self._advantages = on_mesh(self.mesh)(jax.jit(rollout_advantages, static_argnums=0))

    # -- state --------------------------------------------------------------------------------
    def init_state(self, params, key, critic_params=None) -> TrainState:
        if self.critic_cfg is not None:
            params = {"policy": params, "critic": critic_params}
        return self._step.place_state(TrainState.create(params, self.optimizer, key))

    def policy_params(self, state: TrainState):
        return state.params["policy"] if self.critic_cfg is not None else state.params

    # -- one iteration ------------------------------------------------------------------------
    def encode_prompts(self, prompts: Sequence[str]):
        ids = [self.tokenizer.encode(p) for p in prompts]
        if (longest := max(len(x) for x in ids)) > self.prompt_len:
            raise ValueError(f"a prompt has {longest} tokens but data.max_prompt_tokens={self.prompt_len}: "
                             "raise it or shorten the prompt template")
        return pad_left(ids, pad_id=self.tokenizer.pad_id, length=self.prompt_len)

    def sample(self, params, prompts: Sequence[str], key, num_samples: int, temperature: float):
        tokens, mask = (place_rows(x, self.mesh) for x in self.encode_prompts(prompts))
        with on_mesh(self.mesh):
            gen = generate.generate(self.cfg, params, tokens, mask, key, max_new_tokens=self.rl.max_new_tokens,
                                    temperature=temperature, top_p=self.rl.top_p if temperature else 1.0,
                                    eos_ids=self.tokenizer.eos_ids, num_samples=num_samples,
                                    pad_id=self.tokenizer.pad_id)
        return tokens, mask, gen

    def score(self, gen, examples, num_samples):
        completions = rollout.decode_completions(self.tokenizer, *to_host((gen.tokens, gen.mask)))
        rewards, metrics = score(self.reward_fns, completions, rollout.group_examples(examples, num_samples),
                                 weights=self.reward_weights, timeout_s=self.reward_timeout_s)
        return rewards, metrics, completions

    def collect(self, params, sampler: PromptSampler, prompt_fn, key):
        """Steps 1-3: B groups of G scored samples (informative groups first with dynamic sampling)."""
        rl, B, G = self.rl, self.rl.prompts_per_step, self.rl.group_size
        kept, spare, metrics = [], [], {}
        rounds = rl.max_sampling_rounds if rl.dynamic_sampling else 1
        for r in range(rounds):
            examples = sampler.next_batch(B)
            prompt_tokens, prompt_mask, gen = self.sample(params, [prompt_fn(e) for e in examples],
                                                          jax.random.fold_in(key, r), G, rl.temperature)
            rewards, metrics_r, completions = self.score(gen, examples, G)
            seqs = to_host(rollout.sequences_from_generation(prompt_tokens, prompt_mask, gen, G))
            if self.reward_model is not None:  # the learned reward replaces the verifier's, only logged
                learned = self.reward_model(seqs["tokens"], seqs["attention_mask"])
                metrics_r = {**metrics_r, "reward/true": float(np.mean(rewards)),
                             "reward/learned": float(np.mean(learned)),
                             "reward/agreement": rollout.pairwise_agreement(rewards.reshape(B, G),
                                                                            learned.reshape(B, G))}
                # rl.center_learned_reward: the advantages then compare the answers to one prompt.
                center = rl.center_learned_reward and G > 1
                rewards = learned - (learned.reshape(B, G).mean(1).repeat(G) if center else 0.0)
            informative = rollout.informative_groups(rewards.reshape(B, G))
            for i in range(B):
                group = {k: v[i * G:(i + 1) * G] for k, v in seqs.items()}
                group["rewards"] = rewards[i * G:(i + 1) * G]
                group["example"] = examples[i]
                (kept if informative[i] or not rl.dynamic_sampling else spare).append(group)
            if r == 0:
                metrics = {**metrics_r, "sample_completion": completions[0]}
            if len(kept) >= B:
                break
        metrics["sampling_rounds"] = r + 1
        # Keep the batch shape static: fill up with uninformative groups (zero advantage).
        groups = (kept + spare)[:B]
        batch = {k: np.concatenate([g[k] for g in groups]) for k in seqs}
        rewards = np.concatenate([g["rewards"] for g in groups]).astype(np.float32)
        # Measured with or without dynamic sampling: tied groups give no group-relative signal.
        metrics["informative_group_frac"] = float(rollout.informative_groups(rewards.reshape(B, G)).mean())
        greedy = None
        if rl.algorithm == "grpo" and rl.estimator == "remax":
            examples = [g["example"] for g in groups]
            _, _, greedy_gen = self.sample(params, [prompt_fn(e) for e in examples], key, 1, 0.0)
            greedy, _, _ = self.score(greedy_gen, examples, 1)
        return batch, rewards, greedy, metrics

    def prepare(self, state: TrainState, batch: dict, rewards: np.ndarray, greedy, ref_params):
        """Steps 4-5: old/ref log-probs, values, advantages. Returns the train batch and metrics."""
        rl, cfg = self.rl, self.cfg
        tokens, attn, loss_mask, sampler_logp = (place_rows(batch[k], self.mesh) for k in
                                                 ("tokens", "attention_mask", "loss_mask", "sampler_logp"))
        rows = {"tokens": tokens, "attention_mask": attn, "loss_mask": loss_mask}
        train = {**rows, "sampler_logp": sampler_logp}
        metrics, old_logp, values = {}, None, None
        if not self.old_logp_in_step:  # else the step's forward pass gives them, and the mismatch
            current = self._forward(cfg, state.params, rows, self.critic_cfg)
            metrics = sampler_mismatch(current.logp, sampler_logp, loss_mask)
            old_logp = train["old_logp"] = current.logp if rl.old_logp == "trainer" else sampler_logp
            values = current.values
        if rl.beta:
            train["ref_logp"] = self._forward(cfg, ref_params, rows, None).logp
        scores = place_rows(np.asarray(rewards, np.float32), self.mesh)
        if self.advantages_in_step:
            train["scores"] = scores
        else:
            arrays, adv_metrics = self._advantages(rl, scores, loss_mask, old_logp, train.get("ref_logp"), values,
                                                   None if greedy is None else jnp.asarray(greedy))
            train.update(arrays)
            metrics.update(adv_metrics)
        return train, metrics

    def update(self, state: TrainState, train: dict, key) -> tuple[TrainState, list[dict]]:
        """Step 6: `epochs` × `minibatches` policy updates on shuffled mini-batches."""
        rl = self.rl
        rows = train["tokens"].shape[0]
        size = rows // rl.minibatches
        step_metrics = []
        for epoch in range(rl.epochs):
            order = jax.random.permutation(jax.random.fold_in(key, epoch), rows)
            for m in range(rl.minibatches):
                idx = order[m * size:(m + 1) * size]
                minibatch = jax.tree.map(lambda x: x[idx], train)
                state, metrics = self._step(state, minibatch, key)
                step_metrics.append(metrics)
        return state, step_metrics

    def iteration(self, state: TrainState, sampler: PromptSampler, prompt_fn, ref_params, key):
        """One RL iteration; returns the new state and host metrics."""
        t0 = time.perf_counter()
        batch, rewards, greedy, metrics = self.collect(self.policy_params(state), sampler, prompt_fn, key)
        t1 = time.perf_counter()
        train, prep_metrics = self.prepare(state, batch, rewards, greedy, ref_params)
        state, step_metrics = self.update(state, train, jax.random.fold_in(key, 1 << 20))
        step_metrics = to_host(step_metrics)  # the one host sync of the update phase
        skipped = self.guard.observe([m["nonfinite"] for m in step_metrics],
                                     where=f"RL optimiser step {int(state.step)}")
        t2 = time.perf_counter()
        loss_mask = batch["loss_mask"]
        lengths = loss_mask.sum(axis=1)
        gen_tokens = int(lengths.sum()) * metrics["sampling_rounds"]
        out = {k: v for k, v in metrics.items() if not isinstance(v, str)}
        out.update({k: float(v) for k, v in to_host(prep_metrics).items()})
        out.update({k: float(np.mean([m[k] for m in step_metrics])) for k in step_metrics[0]})
        out.update({
            "nonfinite_steps": float(skipped),
            "nonfinite_total": float(self.guard.total),
            "reward_mean": float(rewards.mean()),
            "reward_std": float(rewards.std()),
            "response_length": float(lengths.mean()),
            "time/generate_s": t1 - t0,
            "time/train_s": t2 - t1,
            "generate_tokens_per_s": gen_tokens / max(t1 - t0, 1e-9),
            "train_tokens_per_s": self.rl.epochs * int(batch["attention_mask"].sum()) / max(t2 - t1, 1e-9),
        })
        return state, out, metrics["sample_completion"]


def evaluate(trainer: RLTrainer, params, examples: Sequence[Mapping], prompt_fn, batch_size: int,
             accuracy_key: str = "reward/correct") -> dict[str, float]:
    """Greedy held-out evaluation: mean reward, accuracy (the `correct` reward) and length."""
    totals: dict[str, float] = {}
    lengths = []
    for start in range(0, len(examples), batch_size):
        chunk = list(examples[start:start + batch_size])
        pad = batch_size - len(chunk)  # keep one compiled shape: pad the last chunk
        _, _, gen = trainer.sample(params, [prompt_fn(e) for e in chunk + chunk[:1] * pad],
                                   jax.random.PRNGKey(0), 1, 0.0)
        tokens, mask = to_host((gen.tokens, gen.mask))
        gen = gen._replace(tokens=tokens[:len(chunk)], mask=mask[:len(chunk)])
        rewards, metrics, _ = trainer.score(gen, chunk, 1)
        for k in ("reward/total", accuracy_key):
            totals[k] = totals.get(k, 0.0) + metrics.get(k, 0.0) * len(chunk)
        lengths.extend(gen.mask.sum(axis=1).tolist())
    n = len(examples)
    return {"eval/reward": totals["reward/total"] / n, "eval/accuracy": totals.get(accuracy_key, 0.0) / n,
            "eval/response_length": float(np.mean(lengths))}
