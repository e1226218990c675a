"""RLOO (Ahmadian et al. 2024): leave-one-out baseline, REINFORCE loss (no clipping, one update
per batch, so the samples are on-policy)."""

from configs import grpo_arithmetic


def get_config():
    config = grpo_arithmetic.get_config()
    config.rl.update(advantage="rloo", surrogate="reinforce", agg="token-mean")
    config.rl.surrogate_hparams = {}
    return config
