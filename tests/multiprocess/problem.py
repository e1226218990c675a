"""What the sharded tests run on every mesh and in every process layout: the RL learner's call
on a fixed rollout (GRPO with a k3 KL in the loss and two minibatch updates; PPO's one update with
its advantages computed inside it), and the main experiment config at tiny size run by
`experiment.run`.

Everything is built on the host from fixed seeds, so that each process of a multi-process run,
the single-process run and the unsharded reference all start from the same values.
"""

import dataclasses
import os
from typing import Any, Callable, NamedTuple

import jax
import numpy as np
import pytest

from rljax import models
from rljax.train import experiment
from rljax.train.config import KLConfig, RLConfig
from rljax.train.learner import Learner
from rljax.train.metrics import read_jsonl
from rljax.train.networks import Networks
from rljax.train.optim import make_optimizer
from rljax.train.rollout import Collector
from rljax.train.stage import Stage
from rljax.train.state import TrainState
from rljax.train.trajectories import TrajectoryBatch
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


class Problem(NamedTuple):
    step: Callable  # learn(state, batch, key) -> (state, metrics)
    state: TrainState  # host arrays
    batch: TrajectoryBatch  # host arrays
    key: Any
    param_axes: Any
    frozen_axes: Any
    updates: int  # optimiser steps per call


def _rollout(rng) -> TrajectoryBatch:
    """2 prompts x 4 completions of different lengths (group 0 left-padded), random rewards, and
    sampler log-probs near the policy's."""
    prompts = np.repeat(rng.integers(0, CFG.vocab_size, (B // GROUP, P)), GROUP, axis=0)
    tokens = np.concatenate([prompts, rng.integers(0, CFG.vocab_size, (B, T - P))], axis=1).astype(np.int32)
    ends = P + rng.integers(1, T - P + 1, B)
    position = np.arange(T)[None]
    attention = (position < ends[:, None]) & ~((position < 2) & (np.arange(B)[:, None] < GROUP))
    loss_mask = attention & (position >= P)
    sampler_logp = np.where(loss_mask, rng.normal(-4.0, 0.3, (B, T)), 0.0).astype(np.float32)
    return TrajectoryBatch.from_rows(tokens, attention, loss_mask, sampler_logp, rng.normal(size=B), GROUP, 0)


def _problem(cfg, rl: RLConfig, seed: int) -> Problem:
    networks = Networks(cfg)
    learner = Learner(networks, rl, OPTIMIZER, norm_len=T - P)
    params, ref = (models.init(cfg, jax.random.PRNGKey(k)) for k in (1, 4))
    state = networks.init_state(OPTIMIZER, jax.random.PRNGKey(2), params, reference_params=ref)
    return Problem(learner.learn, jax.tree.map(np.asarray, state), _rollout(np.random.default_rng(seed)),
                   np.asarray(jax.random.PRNGKey(3)), networks.param_axes(), networks.frozen_axes(state.frozen),
                   rl.updates_per_rollout)


def grpo_problem() -> Problem:
    """GRPO's learner (group advantages, clipped ratio, k3 KL in the loss) with two shuffled
    minibatch updates per rollout: the reference pass, the old pass, then a scan of updates."""
    rl = RLConfig(advantage="grpo", surrogate="ppo", surrogate_hparams={"clip_eps": 0.2},
                  kl=KLConfig(placement="loss", estimator="k3", coef=0.04), prompts_per_step=B // GROUP,
                  group_size=GROUP, minibatches=2)
    return _problem(CFG, rl, seed=0)


def ppo_problem() -> Problem:
    """PPO's one update of an on-policy rollout: the update computes the advantages itself from
    its own forward pass (the k1 KL-shaped reward, GAE on the value head, whitening over all the
    batch's tokens), then the clipped policy and value losses."""
    rl = RLConfig(advantage="gae", surrogate="ppo", agg="token-mean", prompts_per_step=B // GROUP,
                  group_size=GROUP, kl=KLConfig(placement="reward", estimator="k1", coef=0.1), value_coef=0.5,
                  value_clip=0.2)
    return _problem(PPO_CFG, rl, seed=1)


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
    config.task.validation_size = 4
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
        _spy(patch, Stage, "close", lambda stage, _: final.update({stage.name: stage.state}))
        _spy(patch, Collector, "score", lambda collector, scored: texts.append(scored[2]))
        experiment.run(experiment_config(mesh), workdir)
    return read_jsonl(os.path.join(workdir, "metrics.jsonl")), final["rl"], texts
