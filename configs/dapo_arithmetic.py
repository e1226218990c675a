"""DAPO (Yu et al. 2025): clip-higher (ε_low 0.2, ε_high 0.28), token-mean aggregation, no KL,
dynamic sampling (groups whose rewards are all equal are dropped and refilled)."""

from configs import grpo_arithmetic


def get_config():
    config = grpo_arithmetic.get_config()
    config.rl.update(estimator="grpo", policy_loss="grpo", clip_eps=0.2, clip_eps_high=0.28,
                     agg="token-mean", beta=0.0, dynamic_sampling=True, max_sampling_rounds=3)
    return config
