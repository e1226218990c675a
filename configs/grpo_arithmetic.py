"""The main job: a from-scratch transformer (0.8M parameters) learns 1-digit, 3-operand addition
and subtraction ("What is 7 - 3 + 9?") on a CPU, first by a supervised warm start (SFT), then by
GRPO (Shao et al. 2024) against the exact verifier. About 6 minutes on a 2-core CPU.

    python experiments/train.py --config configs/grpo_arithmetic.py --workdir /tmp/grpo_arithmetic

Both learning rates decay: GRPO's to 0 by a cosine after a warmup (at a constant rate its noise
keeps held-out accuracy at or below the SFT checkpoint's), SFT's to a tenth (GRPO re-warms it,
and a checkpoint annealed to 0 first loses accuracy to that). The README's training section has
the runs behind both choices (experiments/results/grpo_arithmetic_lr_sweep.json).
"""

import ml_collections

from configs import base


def get_config():
    config = base.get_config()
    # 4,000 distinct problems with "+-"; the test split shares none with the training split, whose
    # last 200 are the validation split (so 3,000 are trained on).
    config.task.knobs = ml_collections.ConfigDict(dict(num_operands=3, digits=1, operators="+-", train_size=3200,
                                                       test_size=500))
    config.data.max_prompt_tokens = 16  # every prompt is 15 tokens: less padding to train on
    config.sft.update(steps=250)
    config.sft.optim.lr_final_fraction = 0.1
    config.rl.update(advantage="grpo", surrogate="ppo", steps=400, prompts_per_step=32, group_size=8,
                     agg="seq-mean-token-mean")
    config.rl.surrogate_hparams = ml_collections.ConfigDict(dict(clip_eps=0.2))
    config.rl.sampling.update(max_new_tokens=6, temperature=1.0)
    config.rl.optim.update(learning_rate=2e-4, warmup_steps=40, lr_decay="cosine")
    config.eval.update(every=50, num_examples=500, batch_size=100)
    return config
