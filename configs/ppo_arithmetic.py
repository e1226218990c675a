"""PPO (Schulman et al. 2017) with a critic on the policy's trunk (value head), GAE (λ=0.95) on
token rewards shaped by a KL penalty toward the reference (Ziegler et al. 2019), two epochs of
two mini-batches per rollout."""

import ml_collections

from configs import grpo_arithmetic


def get_config():
    config = grpo_arithmetic.get_config()
    config.model.overrides.value_head = True
    config.rl.update(advantage="gae", surrogate="ppo", agg="token-mean", epochs=2, minibatches=2, value_coef=0.5,
                     value_clip=0.2)
    config.rl.advantage_hparams = ml_collections.ConfigDict(dict(gamma=1.0, lam=0.95))
    config.rl.kl.update(placement="reward", estimator="k1", coef=0.01)
    return config
