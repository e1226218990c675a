"""PPO (Schulman et al. 2017) with a critic on the policy's trunk (value head), GAE (λ=0.95) on
token rewards shaped by a KL penalty toward the reference (Ziegler et al. 2019), two epochs of
two mini-batches per rollout."""

from configs import grpo_arithmetic


def get_config():
    config = grpo_arithmetic.get_config()
    config.model.overrides.value_head = True
    config.rl.update(algorithm="ppo", policy_loss="ppo", agg="token-mean", beta=0.01,
                     kl_in_reward=True, kl_estimator="k1", epochs=2, minibatches=2,
                     value_coef=0.5, value_clip=0.2, gamma=1.0, lam=0.95)
    return config
