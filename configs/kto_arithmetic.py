"""KTO (Ethayarajh et al. 2024) on the unpaired view of the DPO pairs: each correct answer is a
desirable example, each wrong one undesirable."""

import ml_collections

from configs import dpo_arithmetic


def get_config():
    config = dpo_arithmetic.get_config()
    config.preference.policy.loss = "kto"
    config.preference.policy.hparams = ml_collections.ConfigDict(dict(beta=0.1, desirable_weight=1.0,
                                                                      undesirable_weight=1.0))
    return config
