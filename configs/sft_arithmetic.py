"""Supervised fine-tuning only: the warm start of the arithmetic experiments, evaluated greedily."""

from configs import base


def get_config():
    config = base.get_config()
    config.sft.steps = 600
    config.rl.steps = 0
    return config
