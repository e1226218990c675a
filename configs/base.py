"""Defaults shared by every experiment config: a tiny from-scratch model on 2-digit arithmetic.

The defaults and the schema are the typed sections of `rljax.train.config` (every key with its
range); this is them as an ml_collections ConfigDict, which a config file edits. Any key can be
overridden on the command line, e.g. `--config.rl.steps=10 --config.model.overrides.d_model=64`.
"""

from rljax.train.config import ExperimentConfig, as_config_dict


def get_config():
    config = as_config_dict(ExperimentConfig())
    del config["preference"]  # only the configs with preference stages have that section
    return config
