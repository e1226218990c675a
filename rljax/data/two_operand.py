"""`two_operand`: "What is 37 + 48?", for a pretrained chat model to learn to answer plainly.

One operation per question, the three equally likely in the training split: `+` and `-` on
operands in [10, 99], `*` on operands in [2, 9] (knobs `pm_range`, `times_range`). Every operand
triple (a, op, b) belongs to exactly one split: a seeded shuffle of each operation's triples
sends `test_fraction` of them to the test pool and as many to the validation pool
(`times_test_fraction` each for `*`, whose 64 triples are few), the rest to training. The test
and validation splits are `test_size` and `validation_size` distinct triples of their pools, as
evenly over the three operations as the pools allow (every `*` triple of a pool once when it is
smaller than a third); the training split is `train_size` draws of an operation, then of one of
its training triples, repeats allowed (a prompt stream, as RL draws it).
"""

from __future__ import annotations

import dataclasses
import random

from .builder import Example, TaskBuilder, TaskConfig, check_positive

OPERATIONS = ("+", "-", "*")
_APPLY = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


@dataclasses.dataclass(eq=False)
class TwoOperandConfig(TaskConfig):
    """pm_range/times_range: inclusive operand ranges of `+`/`-` and of `*`; test_fraction /
    times_test_fraction: the share of each operation's triples held out; train_size/test_size:
    rows per split; seed."""

    pm_range: tuple[int, int] = (10, 99)
    times_range: tuple[int, int] = (2, 9)
    test_fraction: float = 0.1
    times_test_fraction: float = 0.25
    train_size: int = 20_000
    test_size: int = 200
    validation_size: int = 100

    def validate(self):
        check_positive(self, "train_size", "test_size", "validation_size")
        for name in ("pm_range", "times_range"):
            low, high = getattr(self, name)
            if not (isinstance(low, int) and isinstance(high, int) and 0 <= low <= high):
                raise ValueError(f"TwoOperandConfig.{name} must be (low, high) integers with 0 <= low <= high, "
                                 f"got {getattr(self, name)!r}")
        for name in ("test_fraction", "times_test_fraction"):
            if not 0 < getattr(self, name) < 0.5:
                raise ValueError(f"TwoOperandConfig.{name} must lie in (0, 0.5), got {getattr(self, name)!r}")


def _pools(config: TwoOperandConfig) -> dict[str, dict[str, list]]:
    """Per operation, its seeded-shuffled triples by split: {"test", "validation", "train"}."""
    rng = random.Random(config.seed)
    pools = {}
    for op in OPERATIONS:
        low, high = config.times_range if op == "*" else config.pm_range
        triples = [(a, op, b) for a in range(low, high + 1) for b in range(low, high + 1)]
        rng.shuffle(triples)
        held = max(1, round((config.times_test_fraction if op == "*" else config.test_fraction) * len(triples)))
        pools[op] = {"test": triples[:held], "validation": triples[held:2 * held], "train": triples[2 * held:]}
    return pools


def _even(pools: dict, split: str, size: int) -> list:
    """`size` distinct triples of `split`'s pools, as evenly over the operations as they allow."""
    sizes, left = {}, size
    for i, op in enumerate(sorted(OPERATIONS, key=lambda o: len(pools[o][split]))):
        sizes[op] = min(len(pools[op][split]), left // (len(OPERATIONS) - i))
        left -= sizes[op]
    if left:
        raise ValueError(f"{split}_size={size} exceeds the {sum(len(p[split]) for p in pools.values())} triples of "
                         f"the {split} pool: lower it or raise the held-out fractions")
    return [t for op in OPERATIONS for t in pools[op][split][:sizes[op]]]


def _example(split: str, i: int, triple) -> Example:
    a, op, b = triple
    return {"id": f"two_operand-{split}-{i:06d}", "question": f"What is {a} {op} {b}?",
            "answer": str(_APPLY[op](a, b))}


class TwoOperandBuilder(TaskBuilder):
    """One-operation questions ("What is 37 + 48?"); no operand triple is in two splits."""

    name = "rljax_two_operand"
    CONFIG_CLASS = TwoOperandConfig
    HAS_VALIDATION = True

    @staticmethod
    def make_splits(config: TwoOperandConfig) -> dict[str, list[Example]]:
        pools = _pools(config)
        rng = random.Random(config.seed + 1)
        train = [rng.choice(pools[rng.choice(OPERATIONS)]["train"]) for _ in range(config.train_size)]
        splits = {"test": _even(pools, "test", config.test_size),
                  "validation": _even(pools, "validation", config.validation_size), "train": train}
        return {split: [_example(split, i, t) for i, t in enumerate(triples)] for split, triples in splits.items()}
