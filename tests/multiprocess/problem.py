"""What the sharded tests run on every mesh and in every process layout: a GRPO train step, PPO's
train step with its advantages computed inside it, and the main experiment config at tiny size
run by `experiment.run`.

Everything is built on the host from fixed seeds, so that each process of a multi-process run,
the single-process run and the unsharded reference all start from the same values.
"""

import dataclasses
import os

import jax
import numpy as np
import pytest

from configs import base
from rljax import losses, models
from rljax.train.objectives import make_objective
from rljax.train.optim import make_optimizer
from rljax.train import experiment
from rljax.train.metrics import read_jsonl
from rljax.train.rl import RLConfig, RLTrainer, make_rl_objective
from rljax.train.state import TrainState
from rljax.train.steps import make_policy_step
from tests.test_configs import ROOT, load_config, shrink

# Heads, kv heads, MLP and vocabulary divisible by tensor=2; the model dimension by fsdp=4.
CFG = models.get_config("tiny", d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8, mlp_dim=64,
                        vocab_size=64)
B, T, P, GROUP = 8, 10, 4, 4  # rows (divisible by data x fsdp = 8), tokens, prompt tokens, group size
PPO_CFG = dataclasses.replace(CFG, value_head=True)  # the critic, on the policy's trunk
# Adam's first update is lr·g/(|g| + eps): with optax's default eps=1e-8, a gradient entry near
# zero moves its parameter by up to lr whatever its size, so the rounding of another reduction
# order shows at the scale of lr (measured on data=2 x fsdp=2 x tensor=2: params 1e-3 from the
# one-device step). eps=1e-4 keeps the update a smooth function of g, so the comparison measures
# the sharding, not that knife edge.
OPTIMIZER = make_optimizer(learning_rate=1e-2, eps=1e-4)


def _initial_state(cfg) -> TrainState:
    """The train state of `cfg`'s model from fixed seeds, as host arrays."""
    params = models.init(cfg, jax.random.PRNGKey(1))
    return jax.tree.map(np.asarray, TrainState.create(params, OPTIMIZER, jax.random.PRNGKey(2)))


def grpo_problem():
    """(step, state, batch, key): a pure GRPO step (clipped ratio, k3 KL in the loss) and its
    inputs, numpy on the host. The batch is 2 prompts x 4 completions of different lengths, with
    group-normalised advantages of random rewards."""
    rng = np.random.default_rng(0)
    prompts = np.repeat(rng.integers(0, CFG.vocab_size, (B // GROUP, P)), GROUP, axis=0)
    tokens = np.concatenate([prompts, rng.integers(0, CFG.vocab_size, (B, T - P))], axis=1).astype(np.int32)
    ends = P + rng.integers(1, T - P + 1, B)
    position = np.arange(T)[None]
    attention = (position < ends[:, None]) & ~((position < 2) & (np.arange(B)[:, None] < GROUP))  # group 0 left-padded
    loss_mask = attention & (position >= P)
    old_logp = np.where(loss_mask, rng.normal(-3.0, 0.3, (B, T)), 0.0).astype(np.float32)
    rewards = rng.integers(0, 2, (B // GROUP, GROUP)).astype(np.float32)
    batch = {"tokens": tokens, "attention_mask": attention, "loss_mask": loss_mask, "old_logp": old_logp,
             "ref_logp": old_logp + np.where(loss_mask, rng.normal(0.0, 0.1, (B, T)), 0.0).astype(np.float32),
             "advantages": np.asarray(losses.group_advantages(rewards)).reshape(B)}
    step = make_policy_step(CFG, OPTIMIZER, make_objective("grpo", beta=0.04, clip_eps=0.2))
    return step, _initial_state(CFG), batch, np.asarray(jax.random.PRNGKey(3))


def ppo_problem():
    """(step, state, batch, key): PPO's one update of an on-policy rollout as `RLTrainer` runs it,
    on grpo_problem's sequences: the step computes the advantages itself (`in_step_advantages`:
    the k1 KL-shaped reward, GAE on the value head, whitening over all the batch's tokens) from the
    sequences' scores and reference log-probs, then the clipped policy and value losses."""
    _, _, grpo_batch, key = grpo_problem()
    batch = {k: v for k, v in grpo_batch.items() if k not in ("advantages", "old_logp")}
    batch["scores"] = np.random.default_rng(1).normal(size=B).astype(np.float32)
    rl = RLConfig(algorithm="ppo", policy_loss="ppo", agg="token-mean", prompts_per_step=B // GROUP,
                  group_size=GROUP, max_new_tokens=T - P, beta=0.1, kl_in_reward=True, kl_estimator="k1",
                  value_coef=0.5, value_clip=0.2)
    step = make_policy_step(PPO_CFG, OPTIMIZER, make_rl_objective(rl))
    return step, _initial_state(PPO_CFG), batch, key


STEPS = 2  # the second step reads the first one's Adam moments, which the first step sharded


def run_steps(step, state, batch, key):
    """STEPS steps on the same batch, each with its own key; returns the state and the metrics."""
    metrics = []
    for i in range(STEPS):
        state, m = step(state, batch, jax.random.fold_in(key, i))
        metrics.append(m)
    return state, metrics


def experiment_config(mesh: dict):
    """grpo_arithmetic at test_configs' tiny size, 2 SFT steps and 2 RL iterations whose batches
    (4 SFT rows, 4 prompts x 2 samples, 4 held-out prompts) split over data x fsdp = 4, on `mesh`
    (data, fsdp, tensor). Two SFT steps teach the model no correct answer, so every reward is 0
    and GRPO's advantages vanish; an entropy bonus gives the RL steps a gradient to compare."""
    config = shrink(load_config(os.path.join(ROOT, "configs", "grpo_arithmetic.py")), real_model=False)
    config.sft.steps = 2
    config.rl.update(steps=2, prompts_per_step=4, entropy_coef=0.01)
    config.eval.update(num_examples=4, batch_size=4)
    config.mesh.update(**mesh)
    return config


def _spy(patch, cls, name, record):
    """Wraps method `name` of `cls` so that record(self, result) sees each call's result."""
    method = getattr(cls, name)

    def wrapper(self, *args):
        result = method(self, *args)
        record(self, result)
        return result

    patch.setattr(cls, name, wrapper)


def run_experiment(mesh: dict, workdir: str):
    """(metrics.jsonl rows, the RL stage's final state, the decoded completions of every sampling
    and evaluation call) of `experiment.run` of `experiment_config(mesh)` in `workdir`."""
    final, texts = {}, []
    with pytest.MonkeyPatch.context() as patch:
        _spy(patch, experiment._Stage, "close", lambda stage, _: final.update({stage.name: stage.state}))
        _spy(patch, RLTrainer, "score", lambda trainer, scored: texts.append(scored[2]))
        experiment.run(experiment_config(mesh), workdir, defaults=base.get_config())
    return read_jsonl(os.path.join(workdir, "metrics.jsonl")), final["rl"], texts
