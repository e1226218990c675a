"""The main job: a from-scratch transformer learns 2-digit addition and subtraction on a CPU,
first by supervised warm start (SFT), then by GRPO (Shao et al. 2024) against the verifier.

    python experiments/train.py --config configs/grpo_arithmetic.py --workdir /tmp/grpo_arithmetic
"""

from configs import base


def get_config():
    config = base.get_config()
    config.rl.update(
        algorithm="grpo", estimator="grpo", policy_loss="grpo", steps=40, prompts_per_step=32,
        group_size=8, max_new_tokens=6, temperature=1.0, learning_rate=3e-4, beta=0.0,
        agg="seq-mean-token-mean", clip_eps=0.2,
    )
    return config
