"""`guess_number`: the secrets of the number-guessing game (`rljax.envs.GuessNumber`).

Each example's `answer` is one secret in [low, high]. The game has only high - low + 1 starting
states, so two ways to hold out:
- `hold_out_secrets=False` (held-out seeds): the test split plays every secret once; the
  validation split is `validation_size` secrets; training draws `train_size` games from the
  whole range with its own seed. Evaluation games are fresh episodes, not unseen secrets.
- `hold_out_secrets=True`: a seeded shuffle sends `test_size` secrets to the test split and
  `validation_size` to the validation split, and training never plays them.
"""

from __future__ import annotations

import dataclasses
import random

from .builder import Example, TaskBuilder, TaskConfig, check_positive


@dataclasses.dataclass(eq=False)
class GuessNumberConfig(TaskConfig):
    """low/high: the inclusive range; hold_out_secrets (see the module docstring); train_size,
    test_size (with hold_out_secrets), validation_size: rows per split."""

    low: int = 1
    high: int = 32
    hold_out_secrets: bool = False
    train_size: int = 2000
    test_size: int = 8
    validation_size: int = 8

    def validate(self):
        check_positive(self, "train_size", "test_size", "validation_size")
        if not (isinstance(self.low, int) and isinstance(self.high, int) and self.low <= self.high):
            raise ValueError(f"GuessNumberConfig needs integers low <= high, got {self.low!r} and {self.high!r}")
        held = self.validation_size + (self.test_size if self.hold_out_secrets else 0)
        if held >= self.high - self.low + 1:
            raise ValueError(f"{held} held-out secrets leave none of [{self.low}, {self.high}] to train on")


class GuessNumberBuilder(TaskBuilder):
    """Secrets of the guessing game (see the module docstring for the splits)."""

    name = "rljax_guess_number"
    CONFIG_CLASS = GuessNumberConfig
    HAS_VALIDATION = True

    @staticmethod
    def make_splits(config: GuessNumberConfig) -> dict[str, list[Example]]:
        secrets = list(range(config.low, config.high + 1))
        rng = random.Random(config.seed)
        shuffled = rng.sample(secrets, len(secrets))
        if config.hold_out_secrets:
            test, rest = shuffled[:config.test_size], shuffled[config.test_size:]
            validation, pool = rest[:config.validation_size], rest[config.validation_size:]
        else:
            test, validation, pool = secrets, shuffled[:config.validation_size], secrets
        train = [rng.choice(pool) for _ in range(config.train_size)]
        return {split: [{"id": f"guess_number-{split}-{i:06d}", "question": f"Guess a number from {config.low} to "
                                                                           f"{config.high}.", "answer": str(s)}
                        for i, s in enumerate(values)]
                for split, values in (("test", test), ("validation", validation), ("train", train))}
