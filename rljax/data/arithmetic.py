"""`arithmetic`: seeded synthetic problems such as "What is 37 + 48 * 5?" (answer "277").

A curriculum-friendly task for from-scratch models: difficulty is set by the number of operands,
the digits per operand and the operators. Answers follow the usual precedence (× and ÷ before
+ and −, left to right) and are always integers: for a `/`, a divisor with the asked number of
digits is drawn until it divides the running product (32 tries, else the problem is redrawn), so
division problems favour divisible pairs and a division-only setting has few distinct problems.
Answers may be negative when `-` is among the operators.
"""

from __future__ import annotations

import dataclasses
import random

from .builder import Example, TaskBuilder, TaskConfig, check_positive, unique_problems

OPERATORS = "+-*/"
_DIVISOR_TRIES = 32


@dataclasses.dataclass(eq=False)
class ArithmeticConfig(TaskConfig):
    """num_operands: operands per problem (≥ 2); digits: digits per operand (1 allows 0-9), or a
    tuple of one count per operand (e.g. (3, 2): "What is 347 * 28?"); operators: a subset of "+-*/"; train_size/test_size: examples per split; seed."""

    num_operands: int = 2
    digits: int | tuple[int, ...] = 2
    operators: str = "+-*"
    train_size: int = 10_000
    test_size: int = 500

    def validate(self):
        check_positive(self, "num_operands", "train_size", "test_size")
        if self.num_operands < 2:
            raise ValueError(f"ArithmeticConfig.num_operands must be >= 2, got {self.num_operands}")
        digits = operand_digits(self)
        if len(digits) != self.num_operands or not all(
                isinstance(d, int) and not isinstance(d, bool) and 1 <= d <= 9 for d in digits):
            raise ValueError(f"ArithmeticConfig.digits must be an int in [1, 9] or {self.num_operands} of them (one "
                             f"per operand), got {self.digits!r}")
        ops = self.operators
        if not ops or not set(ops) <= set(OPERATORS) or len(set(ops)) != len(ops):
            raise ValueError(f"ArithmeticConfig.operators must be distinct characters of "
                             f"{OPERATORS!r}, got {self.operators!r}")


def operand_digits(config: ArithmeticConfig) -> tuple:
    """The digit count of each operand."""
    if isinstance(config.digits, (tuple, list)):
        return tuple(config.digits)
    return (config.digits,) * config.num_operands


def sample_problem(rng: random.Random, config: ArithmeticConfig) -> tuple[str, int] | None:
    """One problem as (expression, value), or None when no divisor was found for a `/`.

    The value is the sum of signed multiplicative terms, each evaluated left to right.
    """
    ranges = [((0 if d == 1 else 10 ** (d - 1)), 10 ** d - 1) for d in operand_digits(config)]
    first = rng.randint(*ranges[0])
    parts, total, sign, term = [str(first)], 0, 1, first
    for lo, hi in ranges[1:]:
        op = rng.choice(config.operators)
        if op == "/":
            divisors = (rng.randint(max(lo, 1), hi) for _ in range(_DIVISOR_TRIES))
            operand = next((d for d in divisors if term % d == 0), None)
            if operand is None:
                return None
            term //= operand
        else:
            operand = rng.randint(lo, hi)
            if op == "*":
                term *= operand
            else:  # + or - closes the current term
                total += sign * term
                sign, term = (1 if op == "+" else -1), operand
        parts += [op, str(operand)]
    return " ".join(parts), total + sign * term


class ArithmeticBuilder(TaskBuilder):
    """Synthetic arithmetic problems ("What is 37 + 48 * 5?"), deterministic for a seed; the
    train and test splits share no expression."""

    name = "rljax_arithmetic"
    CONFIG_CLASS = ArithmeticConfig

    @staticmethod
    def make_splits(config: ArithmeticConfig) -> dict[str, list[Example]]:
        splits = unique_problems(lambda rng: sample_problem(rng, config), key=lambda p: p[0],
                                 sizes={"test": config.test_size, "train": config.train_size},
                                 seed=config.seed, what="arithmetic")
        return {split: [{"id": f"arithmetic-{split}-{i:06d}", "question": f"What is {expr}?",
                         "answer": str(value)} for i, (expr, value) in enumerate(problems)]
                for split, problems in splits.items()}
