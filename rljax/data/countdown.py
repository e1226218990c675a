"""`countdown`: the Countdown numbers game as TinyZero poses it (Pan et al. 2025).

"Using the numbers [44, 19, 35], create an equation that equals 98 ..." Each problem is made
solvable by construction: numbers are drawn, then combined in a random order with random
operators into one expression that uses every number once, following the game's rules (every
intermediate result a positive integer: subtraction larger minus smaller, division exact). The
problem is kept when that value lands in [min_target, max_target]. The expression is stored as
`answer` (one solution among possibly many) and checked with `rljax.rewards.check_countdown`
(each number exactly once) before it is written.
"""

from __future__ import annotations

import dataclasses
import random

import numpy as np
import tensorflow_datasets as tfds

from rljax.rewards.countdown import check_countdown

from .builder import Example, TaskBuilder, TaskConfig, check_positive, unique_problems

QUESTION = ("Using the numbers {numbers}, create an equation that equals {target}. You can use "
            "basic arithmetic operations (+, -, *, /) and each number can only be used once.")


@dataclasses.dataclass(eq=False)
class CountdownConfig(TaskConfig):
    """num_numbers: numbers per problem (2-6); numbers are drawn from [1, max_number]; targets
    lie in [min_target, max_target]; train_size/test_size: examples per split; seed."""

    num_numbers: int = 4
    max_number: int = 99
    min_target: int = 10
    max_target: int = 100
    train_size: int = 10_000
    test_size: int = 500

    def validate(self):
        check_positive(self, "num_numbers", "max_number", "min_target", "max_target",
                       "train_size", "test_size")
        if not 2 <= self.num_numbers <= 6:
            raise ValueError(f"CountdownConfig.num_numbers must be in [2, 6], "
                             f"got {self.num_numbers}")
        if self.min_target > self.max_target:
            raise ValueError(f"CountdownConfig.min_target={self.min_target} exceeds "
                             f"max_target={self.max_target}")


def _combine(rng: random.Random, a: tuple[int, str], b: tuple[int, str]) -> tuple[int, str]:
    """One game move on two (value, expression) items, the operator drawn among those the rules
    allow for them (− only for a positive difference, ÷ only when exact)."""
    (x, ex), (y, ey) = (a, b) if a[0] >= b[0] else (b, a)  # larger first for - and /
    ops = "+*" + "-" * (x > y) + "/" * (x % y == 0)
    op = rng.choice(ops)
    value = {"+": x + y, "*": x * y, "-": x - y, "/": x // y}[op]
    return value, f"({ex} {op} {ey})"


def sample_problem(rng: random.Random, config: CountdownConfig
                   ) -> tuple[tuple[int, ...], int, str] | None:
    """(numbers, target, solution), or None when the value missed the target range."""
    numbers = tuple(rng.randint(1, config.max_number) for _ in range(config.num_numbers))
    pool = [(n, str(n)) for n in numbers]
    while len(pool) > 1:
        rng.shuffle(pool)
        pool.append(_combine(rng, pool.pop(), pool.pop()))
    target, expression = pool[0]
    if not config.min_target <= target <= config.max_target:
        return None
    return numbers, target, expression[1:-1]  # drop the outermost parentheses


class CountdownBuilder(TaskBuilder):
    """Countdown problems (numbers, target) with a stored solution; the train and test splits
    share no (sorted numbers, target) pair."""

    name = "rljax_countdown"
    CONFIG_CLASS = CountdownConfig

    def task_features(self):
        return {"numbers": tfds.features.Tensor(shape=(None,), dtype=np.int64),
                "target": tfds.features.Scalar(dtype=np.int64)}

    @staticmethod
    def make_splits(config: CountdownConfig) -> dict[str, list[Example]]:
        splits = unique_problems(lambda rng: sample_problem(rng, config),
                                 key=lambda p: (tuple(sorted(p[0])), p[1]),
                                 sizes={"test": config.test_size, "train": config.train_size},
                                 seed=config.seed, what="countdown")
        out = {}
        for split, problems in splits.items():
            out[split] = []
            for i, (numbers, target, solution) in enumerate(problems):
                if not check_countdown(solution, numbers, target, use_all_numbers=True):
                    raise AssertionError(f"generated an invalid solution {solution!r} for "
                                         f"{numbers} -> {target}")
                out[split].append({
                    "id": f"countdown-{split}-{i:06d}",
                    "question": QUESTION.format(numbers=list(numbers), target=target),
                    "answer": solution, "numbers": list(numbers), "target": target})
        return out
