"""Defaults shared by every experiment config: a tiny from-scratch model on 2-digit arithmetic.

The defaults and the schema are the typed sections of `rljax.train.config` (every key with its
range); this is them as an ml_collections ConfigDict, which a config file edits. Any key can be
overridden on the command line, e.g. `--config.rl.steps=10 --config.model.overrides.d_model=64`.
"""

from rljax.train.config import ExperimentConfig, as_config_dict


def get_config():
    config = as_config_dict(ExperimentConfig())
    del config["preference"], config["env"]  # sections of only the configs that have those stages
    return config


def multi_turn(env):
    """The defaults of a multi-turn config for `env` (an `EnvSection`): the tiny model's context
    fits a whole conversation, a warm start on the expert's conversations, then multi-turn GRPO
    on 8 examples × 8 conversations per iteration."""
    from rljax.train.config import as_config_dict

    config = get_config()
    config.env = as_config_dict(env)
    config.model.overrides.max_seq_len = env.max_total_tokens
    config.sft.update(steps=300, batch_size=32)
    config.rl.update(advantage="grpo", surrogate="ppo", prompts_per_step=8, group_size=8)
    config.rl.optim.update(learning_rate=1e-4, warmup_steps=5, lr_decay="cosine")
    return config
