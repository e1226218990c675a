"""SimPO (Meng et al. 2024) on the DPO pairs: length-normalised log-probs, a target margin, no
reference model."""

import ml_collections

from configs import dpo_arithmetic


def get_config():
    config = dpo_arithmetic.get_config()
    config.preference.policy.loss = "simpo"
    config.preference.policy.hparams = ml_collections.ConfigDict(dict(beta=2.0, gamma=1.0))
    return config
