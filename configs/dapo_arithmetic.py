"""DAPO (Yu et al. 2025): clip-higher (ε_low 0.2, ε_high 0.28), token-mean aggregation, no KL,
dynamic sampling (groups whose rewards are all equal are dropped and refilled)."""

import ml_collections

from configs import grpo_arithmetic


def get_config():
    config = grpo_arithmetic.get_config()
    config.rl.update(advantage="grpo", surrogate="ppo", agg="token-mean", dynamic_sampling=True,
                     max_sampling_rounds=3)
    config.rl.surrogate_hparams = ml_collections.ConfigDict(dict(clip_eps=0.2, clip_eps_high=0.28))
    return config
