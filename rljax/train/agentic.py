"""Multi-turn RL from a config's `env` section: environments from task examples, their
rollouts as trajectory batches, greedy evaluation, and the expert demonstrations of the
supervised warm start.

`EnvCollector` stands where `rljax.train.rollout.Collector` stands in a single-turn run: each
iteration, P examples become P·G environments (`rljax.envs.games.make_env`), one multi-turn
rollout talks to all of them (`rljax.envs.rollout`), and the trajectories become one
`TrajectoryBatch` for the same learner.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax
import numpy as np

from jax.sharding import Mesh

from rljax import envs, sharding
from rljax.data.batching import pad_left
from rljax.data.tokenizers import CHATML_TEMPLATE, render_chat_template
from rljax.data.sampler import PromptSampler
from rljax.envs.games import demonstration, make_env
from rljax.models.config import ModelConfig
from rljax.train.config import EnvSection, RLConfig
from rljax.train.rollout import informative_groups, sampling_kwargs
from rljax.train.trajectories import TrajectoryBatch


def environments(env: EnvSection, examples: Sequence[Mapping], copies: int = 1) -> list[envs.Env]:
    """`copies` fresh environments per example, in order (a group of G answers one example)."""
    return [make_env(env.name, e, max_turns=env.max_turns, tools=env.tools, knobs=env.knobs)
            for e in examples for _ in range(copies)]


def demonstration_batch(tokenizer, env: EnvSection, examples: Sequence[Mapping]) -> dict[str, np.ndarray]:
    """An SFT batch of the scripted expert's conversations (`envs.ChatBridge.conversation`):
    left-padded to env.max_total_tokens, the loss on the expert's replies only."""
    chat = envs.ChatBridge(tokenizer)
    rows = [chat.conversation(demonstration(env.name, e, max_turns=env.max_turns, tools=env.tools, knobs=env.knobs))
            for e in examples]
    tokens, mask = pad_left([ids for ids, _ in rows], pad_id=tokenizer.pad_id, length=env.max_total_tokens)
    loss_mask, _ = pad_left([loss for _, loss in rows], length=env.max_total_tokens)
    return {"tokens": tokens, "attention_mask": mask, "loss_mask": loss_mask.astype(bool)}


def demonstration_corpus(env: EnvSection, examples: Sequence[Mapping], size: int = 2000) -> list[str]:
    """Texts to train a from-scratch tokenizer on: the expert's conversations with the first
    `size` examples, rendered in ChatML (the template of `rljax.data.tokenizers`' SentencePiece
    models, whose markers are pieces of their own)."""
    return [render_chat_template(CHATML_TEMPLATE, demonstration(env.name, e, max_turns=env.max_turns, tools=env.tools,
                                                                knobs=env.knobs), add_generation_prompt=False)
            for e in list(examples[:size])]


class EnvCollector:
    """Rollouts of an `env` run. rl: the RL section (prompts_per_step P, group_size G, sampling);
    mesh: the run's devices (default: this process's first device)."""

    def __init__(self, cfg: ModelConfig, tokenizer, env: EnvSection, rl: RLConfig, mesh: Mesh | None = None):
        self.cfg, self.tokenizer, self.env, self.rl = cfg, tokenizer, env, rl
        self.mesh = mesh if mesh is not None else sharding.one_device_mesh()

    def rollout(self, params, examples: Sequence[Mapping], key, copies: int, temperature: float) -> envs.Trajectories:
        if self.mesh.size > 1:  # one all-gather per rollout instead of one per generated token
            params = sharding.to_generation_layout(self.cfg, params, self.mesh)
        return envs.rollout(self.cfg, params, self.tokenizer, environments(self.env, examples, copies), key,
                            max_turns=self.env.max_turns, max_total_tokens=self.env.max_total_tokens,
                            mesh=self.mesh, **sampling_kwargs(self.rl.sampling, temperature))

    def collect(self, params, sampler: PromptSampler, key, policy_version: int = 0) -> tuple[TrajectoryBatch, dict]:
        """P groups of G conversations as a host `TrajectoryBatch`, and the rollout's metrics."""
        rl = self.rl
        traj = self.rollout(params, sampler.next_batch(rl.prompts_per_step), key, rl.group_size,
                            rl.sampling.temperature)
        batch = TrajectoryBatch.from_trajectories(traj, rl.group_size, policy_version)
        grouped = traj.rewards.reshape(rl.prompts_per_step, rl.group_size)
        metrics = {**{f"env/{k}": v for k, v in traj.metrics.items()}, "sampling_rounds": 1,
                   "informative_group_frac": float(informative_groups(grouped).mean())}
        return batch, metrics

    def evaluate(self, params, examples: Sequence[Mapping], batch_size: int) -> dict[str, float]:
        """Greedy conversations with `examples`' environments: mean reward, success (reward > 0),
        turns and sampled tokens per conversation."""
        rewards, turns, lengths = [], [], []
        for start in range(0, len(examples), batch_size):
            chunk = list(examples[start:start + batch_size])
            pad = batch_size - len(chunk)  # one compiled shape: pad the last chunk
            traj = self.rollout(params, chunk + chunk[:1] * pad, jax.random.PRNGKey(0), 1, 0.0)
            n = len(chunk)
            rewards += traj.rewards[:n].tolist()
            turns += traj.num_turns[:n].tolist()
            lengths += traj.loss_mask[:n].sum(axis=1).tolist()
        rewards = np.asarray(rewards)
        return {"eval/reward": float(rewards.mean()), "eval/accuracy": float((rewards > 0).mean()),
                "eval/turns": float(np.mean(turns)), "eval/response_length": float(np.mean(lengths))}
