"""REINFORCE++ (Hu 2025) with its group-mean baseline: batch-normalised advantages, PPO-clip loss,
KL to the reference in the reward."""

from configs import grpo_arithmetic


def get_config():
    config = grpo_arithmetic.get_config()
    config.rl.update(estimator="reinforce_pp_baseline", policy_loss="ppo", agg="token-mean",
                     beta=0.01, kl_in_reward=True, kl_estimator="k1")
    return config
