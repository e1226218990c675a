"""REINFORCE++ (Hu 2025) with its group-mean baseline: batch-normalised advantages, PPO-clip loss,
KL to the reference in the reward."""

from configs import grpo_arithmetic


def get_config():
    config = grpo_arithmetic.get_config()
    config.rl.update(advantage="reinforce_pp_baseline", surrogate="ppo", agg="token-mean")
    config.rl.kl.update(placement="reward", estimator="k1", coef=0.01)
    return config
