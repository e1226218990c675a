"""Classic RLHF: PPO (Schulman et al. 2017) against the learned reward model of
`reward_model_arithmetic`, with a per-token KL penalty toward the SFT policy in the reward
(Ziegler et al. 2019), GAE and a value-head critic. The verifier's reward is logged
(reward/true) but never given to the policy, so over-optimisation of the learned reward shows."""

from configs import reward_model_arithmetic


def get_config():
    config = reward_model_arithmetic.get_config()
    config.model.overrides.value_head = True
    config.preference.reward_model.update(steps=400, use_in_rl=True)  # 400 steps: RM + PPO fit in 10 minutes
    config.rl.update(algorithm="ppo", policy_loss="ppo", agg="token-mean", steps=30, prompts_per_step=32,
                     group_size=8, max_new_tokens=6, temperature=1.0, learning_rate=2e-4, warmup_steps=10,
                     beta=0.05, kl_in_reward=True, kl_estimator="k1", epochs=2, minibatches=2, value_coef=0.5,
                     value_clip=0.2, gamma=1.0, lam=0.95)
    return config
