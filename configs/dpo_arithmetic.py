"""DPO (Rafailov et al. 2023) on arithmetic: a weak SFT warm start samples answers to training
prompts; each pair is a correct answer (chosen) and one of its wrong samples (rejected); DPO then
trains the policy against the frozen SFT policy. Measured: held-out greedy accuracy before/after.

    python experiments/train.py --config configs/dpo_arithmetic.py --workdir /tmp/dpo_arithmetic

Other losses: --config.preference.policy.loss=ipo|kto|simpo|orpo (with their hparams), and
--config.preference.policy.hparams.loss_type=hinge|robust|ipo for the DPO variants.
"""

import ml_collections

from configs import base
from rljax.train.config import PreferenceConfig, as_config_dict


def get_config():
    config = base.get_config()
    # 1-digit, 3-operand problems (4,000 distinct with "+-"); a short SFT leaves room to improve.
    # The last 200 training problems are the validation split: 3,000 are trained on.
    config.task.knobs = ml_collections.ConfigDict(dict(num_operands=3, digits=1, operators="+-", train_size=3200,
                                                       test_size=500))
    config.sft.steps = 150
    config.rl.steps = 0
    config.preference = as_config_dict(PreferenceConfig())
    # source "task": sampled from the SFT policy on training prompts (up to pairs_per_prompt pairs
    # each, one per distinct wrong sample); "jsonl": pairs from `path`.
    config.preference.pairs.update(source="task", prompts=3000, samples_per_prompt=8, pairs_per_prompt=1,
                                   max_new_tokens=6, temperature=1.0, test_size=200)
    config.preference.policy.update(loss="dpo", steps=300, batch_size=64)
    config.preference.policy.hparams = ml_collections.ConfigDict(dict(beta=0.1, loss_type="sigmoid",
                                                                      label_smoothing=0.0))
    # use_in_rl: the trained reward model is RL's reward; init_critic: PPO's critic starts as a
    # copy of it (InstructGPT's), instead of the policy's value head.
    config.preference.reward_model.hparams = ml_collections.ConfigDict(dict(margin=0.0, center_coef=0.0,
                                                                            sft_coef=0.0))
    return config
