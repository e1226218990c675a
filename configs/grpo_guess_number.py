"""Multi-turn RL: the tiny from-scratch model plays the number-guessing game (`rljax.envs.GuessNumber`).

A secret in [1, 32]; each wrong guess is answered "Higher." or "Lower." with the range that is
left; at most 6 guesses; reward 1 for finding it. First a supervised warm start on a bisecting
expert's games, then multi-turn GRPO, every game one KV cache (`rljax.envs.rollout`). The test
split plays each of the 32 secrets once, in fresh games (held-out seeds; the game has no other
starting state). `--config.task.knobs.hold_out_secrets=True` holds 8 secrets out of training
instead (`rljax.data.guess_number`).

    python experiments/train.py --config configs/grpo_guess_number.py --workdir /tmp/guess_number
"""

import ml_collections

from configs import base
from rljax.train.config import EnvSection


def get_config():
    config = base.multi_turn(EnvSection(name="guess_number", max_turns=6, max_total_tokens=160))
    config.task.name = "guess_number"
    config.task.knobs = ml_collections.ConfigDict(dict(low=1, high=32, hold_out_secrets=False, train_size=4000,
                                                       test_size=8))
    config.task.validation_size = 8
    config.tokenizer.vocab_size = 384
    config.rl.steps = 40
    config.rl.sampling.max_new_tokens = 4
    config.eval.update(every=10, num_examples=32, batch_size=32)
    return config
