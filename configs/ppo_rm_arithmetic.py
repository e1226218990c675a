"""Classic RLHF: PPO (Schulman et al. 2017) against the learned reward model of
`reward_model_arithmetic`, with a per-token KL penalty toward the SFT policy in the reward
(Ziegler et al. 2019), GAE and a value-head critic. The verifier's reward is logged
(reward/true) but never given to the policy, so over-optimisation of the learned reward shows.

The KL coefficient is β = 1 because the learned reward is not on a unit scale: centred per
prompt, it starts with a standard deviation of 4-5 over a rollout, beside which β = 0.05's
penalty (0.3 nats per token by the end) is negligible. From the same SFT and reward-model
checkpoints, β = 1 gains more held-out true reward than 0.05, 0.3 or 3 on each of three seeds
(experiments/results/ppo_rm_arithmetic_variants.json).

As in the main job, SFT ends at a tenth of its learning rate and PPO's decays to 0 by a cosine;
each rollout gets one update (several, like fewer iterations, first cost held-out accuracy under
the learned reward: experiments/results/ppo_rm_arithmetic_variants.json). About 8-9 minutes on
a 2-core CPU. `--config.preference.reward_model.init_critic=True --config.rl.center_learned_reward=False`
gives PPO a critic initialised from the reward model instead (InstructGPT's), at about 0.4 s more
per iteration.
"""

import ml_collections

from configs import reward_model_arithmetic


def get_config():
    config = reward_model_arithmetic.get_config()
    config.model.overrides.value_head = True
    config.data.max_prompt_tokens = 16  # every prompt is 15 tokens
    config.sft.optim.lr_final_fraction = 0.1
    config.preference.reward_model.use_in_rl = True
    config.rl.update(advantage="gae", surrogate="ppo", agg="token-mean", steps=250, prompts_per_step=32,
                     group_size=8, epochs=1, minibatches=1, value_coef=0.1, value_clip=0.2)
    config.rl.advantage_hparams = ml_collections.ConfigDict(dict(gamma=1.0, lam=0.95))
    config.rl.surrogate_hparams = ml_collections.ConfigDict(dict(clip_eps=0.2))
    config.rl.kl.update(placement="reward", estimator="k1", coef=1.0)
    config.rl.sampling.update(max_new_tokens=6, temperature=1.0)
    config.rl.optim.update(learning_rate=2e-4, warmup_steps=25, lr_decay="cosine")
    config.eval.update(every=50, num_examples=500, batch_size=100)
    return config
