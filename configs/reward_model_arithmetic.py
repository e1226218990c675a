"""A Bradley-Terry reward model (Ouyang et al. 2022) on the arithmetic pairs of `dpo_arithmetic`:
the SFT policy's trunk with a scalar head, read at the last token. Measured: pairwise accuracy on
held-out pairs."""

from configs import dpo_arithmetic


def get_config():
    config = dpo_arithmetic.get_config()
    config.preference.policy.steps = 0
    config.preference.reward_model.steps = 250
    return config
