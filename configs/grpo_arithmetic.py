"""The main job: a from-scratch transformer (0.8M parameters) learns 1-digit, 3-operand addition
and subtraction ("What is 7 - 3 + 9?") on a CPU, first by a supervised warm start (SFT), then by
GRPO (Shao et al. 2024) against the exact verifier. About 4 minutes on a 2-core CPU.

    python experiments/train.py --config configs/grpo_arithmetic.py --workdir /tmp/grpo_arithmetic

The RL learning rate decays to 0 by a cosine after a short warmup: at a constant 2e-4 the policy
gradient's noise keeps held-out greedy accuracy below the SFT checkpoint's, and a constant 5e-5
moves it only slowly; annealed from 2e-4 it ends above (the README's training section has the
sweep, experiments/results/grpo_arithmetic_lr_sweep.json).
"""

import ml_collections

from configs import base


def get_config():
    config = base.get_config()
    # 4,000 distinct problems with "+-"; the held-out split shares none with the training split.
    config.task.knobs = ml_collections.ConfigDict(dict(num_operands=3, digits=1, operators="+-", train_size=3000,
                                                       test_size=500))
    config.sft.steps = 250
    config.rl.update(
        algorithm="grpo", estimator="grpo", policy_loss="grpo", steps=200, prompts_per_step=32,
        group_size=8, max_new_tokens=6, temperature=1.0, learning_rate=2e-4, warmup_steps=10, lr_decay="cosine",
        beta=0.0, agg="seq-mean-token-mean", clip_eps=0.2,
    )
    config.eval.update(every=25, num_examples=500, batch_size=250)
    return config
