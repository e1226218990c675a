"""Rollouts: prompts -> grouped generation -> rewards -> a `TrajectoryBatch` for the learner.

`Collector.collect` is the host side of an RL iteration (Shao et al. 2024's GRPO loop):
  1. draw P prompts, sample G completions each (one jit: prefill once, then the decode loop);
  2. score them on the host (reward functions are arbitrary Python: one that raises or hangs
     gives 0 and is counted, `rljax.rewards.score`), or with a learned reward model;
  3. DAPO dynamic sampling (optional): keep the groups whose rewards differ and refill from new
     prompts, up to `max_sampling_rounds`;
  4. ReMax's baseline when the advantage needs one: the reward of each prompt's greedy response.
Decoding and scoring run on the host; the arrays go to the learner as one typed batch.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np
from jax.sharding import Mesh

from rljax import generate, sharding
from rljax.generate import Generation
from rljax.data.batching import pad_left
from rljax.data.sampler import PromptSampler
from rljax.losses import registry
from rljax.models.config import ModelConfig
from rljax.rewards import score
from rljax.sharding import to_host
from rljax.train.config import RLConfig
from rljax.train.sharded import on_mesh, place_rows
from rljax.train.trajectories import TrajectoryBatch


def decode_completions(tokenizer, tokens: np.ndarray, mask: np.ndarray) -> list[str]:
    """Text of each completion row: its masked tokens, without EOS ids."""
    eos = set(tokenizer.eos_ids)
    return [tokenizer.decode([int(t) for t, m in zip(row, row_mask) if m and int(t) not in eos])
            for row, row_mask in zip(np.asarray(tokens), np.asarray(mask))]


def informative_groups(rewards: np.ndarray) -> np.ndarray:
    """DAPO's dynamic-sampling filter (Yu et al. 2025): groups [P, G] whose rewards are not all
    equal, since a group with zero reward variance gives zero group-relative advantage."""
    return np.ptp(rewards, axis=1) > 0


def pairwise_agreement(true_rewards: np.ndarray, learned_rewards: np.ndarray) -> float:
    """How often a learned reward ranks two samples of one prompt as the true reward does: over
    the pairs (i, j) of a group [P, G] with true_i > true_j, the fraction with learned_i >
    learned_j (a tie counts one half). It is the reward model's pairwise accuracy on the policy's
    own samples, so a fall during RL marks over-optimisation (Gao et al. 2023). NaN when no
    group has two different true rewards."""
    t, s = np.asarray(true_rewards, np.float64), np.asarray(learned_rewards, np.float64)
    ordered = t[:, :, None] > t[:, None, :]  # [P, G, G]: pairs the true reward ranks
    won = np.sign(s[:, :, None] - s[:, None, :]) * 0.5 + 0.5  # 1, 0.5 on a tie, 0
    n = ordered.sum()
    return float((won * ordered).sum() / n) if n else float("nan")


def group_examples(examples: Sequence[Mapping[str, Any]], num_samples: int) -> list[Mapping[str, Any]]:
    """Repeats each example for its G samples, in generation order (sample i·G+j of prompt i)."""
    return [ex for ex in examples for _ in range(num_samples)]


def sampling_kwargs(sampling, temperature: float) -> dict:
    """The sampling controls of `sampling` (`SamplingConfig`) at `temperature`, as `generate` and
    `rljax.envs.rollout` take them: 0 is greedy, without truncation."""
    return dict(max_new_tokens=sampling.max_new_tokens, temperature=temperature,
                top_k=sampling.top_k if temperature else 0, top_p=sampling.top_p if temperature else 1.0)


def generation_kwargs(sampling, temperature: float, num_samples: int, eos_ids, pad_id: int) -> dict:
    """`generate`'s keyword arguments for a rollout of `sampling` (`SamplingConfig`) at
    `temperature` (0: greedy, without truncation)."""
    return dict(**sampling_kwargs(sampling, temperature), eos_ids=tuple(eos_ids), num_samples=num_samples,
                pad_id=pad_id)


class Collector:
    """Samples and scores the rollouts of an RL run (steps 1-4 of the module docstring).

    cfg/tokenizer: the policy's model config and tokenizer; reward_fns/reward_weights: as
      `rljax.rewards.score` takes them (e.g. `rljax.rewards.task_rewards(task)`);
    prompt_len: prompts are left-padded to this many tokens (a longer one is refused);
    rl: the RL section (prompts_per_step, group_size, sampling, dynamic sampling, the advantage);
    reward_model: a learned reward, (tokens [B, T], attention_mask [B, T]) -> [B] (e.g.
      `rljax.train.reward_model.reward_function`): when set, the policy is trained on it, and the
      reward functions' score is only logged (reward/true; reward/learned is the model's;
      reward/agreement its pairwise accuracy on the rollout);
    mesh: the devices to sample on (default: this process's first device). What the host reads
      (completions to decode and score) is gathered whole on every process (`to_host`), so on
      several processes all of them score and decide alike.
    """

    def __init__(self, cfg: ModelConfig, tokenizer, reward_fns: Mapping[str, Callable],
                 reward_weights: Mapping[str, float], prompt_len: int, rl: RLConfig, *,
                 reward_model: Callable | None = None, reward_timeout_s: float = 5.0, mesh: Mesh | None = None):
        self.cfg, self.tokenizer, self.rl = cfg, tokenizer, rl
        self.reward_fns, self.reward_weights = dict(reward_fns), dict(reward_weights)
        self.prompt_len, self.reward_timeout_s, self.reward_model = prompt_len, reward_timeout_s, reward_model
        self.mesh = mesh if mesh is not None else sharding.one_device_mesh()

    def encode_prompts(self, prompts: Sequence[str]):
        ids = [self.tokenizer.encode(p) for p in prompts]
        if (longest := max(len(x) for x in ids)) > self.prompt_len:
            raise ValueError(f"a prompt has {longest} tokens but data.max_prompt_tokens={self.prompt_len}: "
                             "raise it or shorten the prompt template")
        return pad_left(ids, pad_id=self.tokenizer.pad_id, length=self.prompt_len)

    def sample(self, params, prompts: Sequence[str], key, num_samples: int, temperature: float):
        """(prompt tokens [P, L], prompt mask, `Generation` of P·num_samples rows). On a mesh the
        params are first copied into the generation layout (`sharding.to_generation_layout`:
        one all-gather per call instead of one per generated token)."""
        tokens, mask = (place_rows(x, self.mesh) for x in self.encode_prompts(prompts))
        if self.mesh.size > 1:
            params = sharding.to_generation_layout(self.cfg, params, self.mesh)
        with on_mesh(self.mesh, sharding.GENERATION_RULES):
            gen = generate.generate(self.cfg, params, tokens, mask, key,
                                    **generation_kwargs(self.rl.sampling, temperature, num_samples,
                                                        self.tokenizer.eos_ids, self.tokenizer.pad_id))
        return tokens, mask, gen

    def score(self, tokens: np.ndarray, mask: np.ndarray, examples, num_samples: int):
        """(rewards [rows], metrics, completion texts) of generated host tokens and mask [rows, N]."""
        completions = decode_completions(self.tokenizer, tokens, mask)
        rewards, metrics = score(self.reward_fns, completions, group_examples(examples, num_samples),
                                 weights=self.reward_weights, timeout_s=self.reward_timeout_s)
        return rewards, metrics, completions

    def _learned_rewards(self, tokens, attention_mask, rewards):
        """The reward model's rewards in place of the verifier's, and what to log of both."""
        P, G = self.rl.prompts_per_step, self.rl.group_size
        learned = self.reward_model(tokens, attention_mask)
        metrics = {"reward/true": float(np.mean(rewards)), "reward/learned": float(np.mean(learned)),
                   "reward/agreement": pairwise_agreement(rewards.reshape(P, G), learned.reshape(P, G))}
        if self.rl.center_learned_reward and G > 1:  # the advantages compare answers to one prompt
            learned = learned - learned.reshape(P, G).mean(1).repeat(G)
        return learned, metrics

    def collect(self, params, sampler: PromptSampler, prompt_fn: Callable[[Mapping], str], key,
                policy_version: int = 0) -> tuple[TrajectoryBatch, dict]:
        """P groups of G scored samples (informative groups first with dynamic sampling), as a
        host `TrajectoryBatch`, and the rollout's metrics."""
        rl, P, G = self.rl, self.rl.prompts_per_step, self.rl.group_size
        kept, spare, metrics = [], [], {}
        rounds = rl.max_sampling_rounds if rl.dynamic_sampling else 1
        for r in range(rounds):
            examples = sampler.next_batch(P)
            prompts = self.sample(params, [prompt_fn(e) for e in examples], jax.random.fold_in(key, r), G,
                                  rl.sampling.temperature)
            # One host transfer of the rollout (on several processes, gathered whole on each).
            prompt_tokens, prompt_mask, gen = to_host(prompts)
            rewards, round_metrics, completions = self.score(gen.tokens, gen.mask, examples, G)
            if self.reward_model is not None:
                rows = TrajectoryBatch.from_generation(prompt_tokens, prompt_mask, gen, rewards, G)
                rewards, learned_metrics = self._learned_rewards(rows.tokens, rows.attention_mask, rewards)
                round_metrics = {**round_metrics, **learned_metrics}
            informative = informative_groups(rewards.reshape(P, G))
            for i in range(P):
                rows_i = slice(i * G, (i + 1) * G)
                group = {"prompt_tokens": prompt_tokens[i], "prompt_mask": prompt_mask[i], "tokens": gen.tokens[rows_i],
                         "mask": gen.mask[rows_i], "logprobs": gen.logprobs[rows_i], "rewards": rewards[rows_i],
                         "example": examples[i]}
                (kept if informative[i] or not rl.dynamic_sampling else spare).append(group)
            if r == 0:
                metrics = {**round_metrics, "sample_completion": completions[0]}
            if len(kept) >= P:
                break
        metrics["sampling_rounds"] = r + 1
        groups = (kept + spare)[:P]  # a static batch shape: fill up with tied groups (zero advantage)
        stack = lambda key, join=np.concatenate: join([g[key] for g in groups])  # noqa: E731
        rewards = stack("rewards")
        # Measured with or without dynamic sampling: tied groups give no group-relative signal.
        metrics["informative_group_frac"] = float(informative_groups(rewards.reshape(P, G)).mean())
        baseline = None
        if registry.advantage(rl.advantage).needs_baseline:  # ReMax: each prompt's greedy reward
            examples = [g["example"] for g in groups]
            _, _, greedy = to_host(self.sample(params, [prompt_fn(e) for e in examples], key, 1, 0.0))
            baseline = np.repeat(self.score(greedy.tokens, greedy.mask, examples, 1)[0], G)
        joined = Generation(tokens=stack("tokens"), mask=stack("mask"), logprobs=stack("logprobs"),
                            sampling_logprobs=None, num_steps=None)
        batch = TrajectoryBatch.from_generation(stack("prompt_tokens", np.stack), stack("prompt_mask", np.stack), joined,
                                                rewards, G, policy_version, baseline=baseline)
        return batch, metrics


def evaluate(collector: Collector, params, examples: Sequence[Mapping], prompt_fn, batch_size: int,
             accuracy_key: str = "reward/correct") -> dict[str, float]:
    """Greedy evaluation on `examples`: mean reward, accuracy (the `correct` reward) and length."""
    totals: dict[str, float] = {}
    lengths = []
    for start in range(0, len(examples), batch_size):
        chunk = list(examples[start:start + batch_size])
        pad = batch_size - len(chunk)  # one compiled shape: pad the last chunk
        _, _, gen = collector.sample(params, [prompt_fn(e) for e in chunk + chunk[:1] * pad],
                                     jax.random.PRNGKey(0), 1, 0.0)
        tokens, mask = (x[:len(chunk)] for x in to_host((gen.tokens, gen.mask)))
        _, metrics, _ = collector.score(tokens, mask, chunk, 1)
        for k in ("reward/total", accuracy_key):
            totals[k] = totals.get(k, 0.0) + metrics.get(k, 0.0) * len(chunk)
        lengths.extend(mask.sum(axis=1).tolist())
    n = len(examples)
    return {"eval/reward": totals["reward/total"] / n, "eval/accuracy": totals.get(accuracy_key, 0.0) / n,
            "eval/response_length": float(np.mean(lengths))}
