"""Checking Countdown answers without `eval`: a small parser over exact rationals.

The Countdown game (as in TinyZero, Pan et al. 2025): given numbers and a target, write an
arithmetic expression over + − × ÷ and parentheses that equals the target, each given number used
at most once (or, with `use_all_numbers=True`, exactly once, TinyZero's rule).

Why not `eval`: a completion is untrusted text; `eval` runs arbitrary code, and even a "digits and
operators only" filter lets `9**9**9**9` through and hangs the trainer. This parser knows only
integers, the four operators (ASCII `+ - * /` or `− × ÷ ∗`) and parentheses; there is no
exponent and no unary minus (neither is a Countdown move), input length and nesting depth are
capped, and arithmetic is exact (`fractions.Fraction`), so `6 / 4 * 2 = 3` exactly and
`1 / 3 * 3` equals 1. Division by zero is an `ExpressionError`: such an answer is simply wrong.

Grammar:  expr := term (('+' | '-') term)* ;  term := factor (('*' | '/') factor)* ;
          factor := INTEGER | '(' expr ')'
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Sequence
from fractions import Fraction

from .extract import check_format, extract_answer

MAX_TOKENS = 512
MAX_DEPTH = 64
MAX_DIGITS = 12
_OPERATORS = {"+": "+", "-": "-", "\u2212": "-", "*": "*", "\u00d7": "*", "\u2217": "*",
              "/": "/", "\u00f7": "/"}


class ExpressionError(ValueError):
    """The text is not a valid expression of the Countdown grammar, or divides by zero."""


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """The exact value of an expression and the integer literals it uses, in order."""

    value: Fraction
    numbers: tuple[int, ...]


def _tokenize(text: str) -> list[str | int]:
    tokens: list[str | int] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char.isspace():
            i += 1
        elif "0" <= char <= "9":
            j = i
            while j < len(text) and "0" <= text[j] <= "9":
                j += 1
            if j - i > MAX_DIGITS:
                raise ExpressionError(f"number at position {i} has more than {MAX_DIGITS} digits")
            tokens.append(int(text[i:j]))
            i = j
        elif char in _OPERATORS or char in "()":
            tokens.append(_OPERATORS.get(char, char))
            i += 1
        else:
            raise ExpressionError(f"unexpected character {char!r} at position {i}")
        if len(tokens) > MAX_TOKENS:
            raise ExpressionError(f"expression longer than {MAX_TOKENS} tokens")
    return tokens


class _Parser:
    """Recursive descent over the token list; `numbers` collects the literals as they are read."""

    def __init__(self, tokens: list[str | int]):
        self.tokens = tokens
        self.pos = 0
        self.numbers: list[int] = []

    def peek(self) -> str | int | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> str | int | None:
        token = self.peek()
        self.pos += 1
        return token

    def expr(self, depth: int) -> Fraction:
        value = self.term(depth)
        while self.peek() in ("+", "-"):
            value = value + self.term(depth) if self.take() == "+" else value - self.term(depth)
        return value

    def term(self, depth: int) -> Fraction:
        value = self.factor(depth)
        while self.peek() in ("*", "/"):
            op = self.take()
            rhs = self.factor(depth)
            if op == "*":
                value *= rhs
            elif rhs == 0:
                raise ExpressionError("division by zero")
            else:
                value /= rhs
        return value

    def factor(self, depth: int) -> Fraction:
        token = self.take()
        if isinstance(token, int):
            self.numbers.append(token)
            return Fraction(token)
        if token == "(":
            if depth >= MAX_DEPTH:
                raise ExpressionError(f"parentheses nested deeper than {MAX_DEPTH}")
            value = self.expr(depth + 1)
            if self.take() != ")":
                raise ExpressionError("unbalanced parentheses")
            return value
        found = "end of input" if token is None else repr(token)
        raise ExpressionError(f"expected a number or '(' but found {found}")


def evaluate_expression(text: str) -> Evaluation:
    """Parses and evaluates `text` exactly. Raises `ExpressionError` (a ValueError) for anything
    outside the grammar, division by zero, or input over the length/depth caps; never anything
    else, whatever the string."""
    parser = _Parser(_tokenize(text))
    if not parser.tokens:
        raise ExpressionError("empty expression")
    value = parser.expr(0)
    if parser.pos != len(parser.tokens):
        raise ExpressionError(f"unexpected {parser.tokens[parser.pos]!r} after a complete "
                              f"expression")
    return Evaluation(value, tuple(parser.numbers))


def check_countdown(expression: str, numbers: Sequence[int], target: int, *,
                    use_all_numbers: bool = False) -> bool:
    """True when `expression` evaluates exactly to `target` using each of `numbers` at most once
    (a multiset: a number given twice may be used twice), or exactly once with
    `use_all_numbers=True`. Malformed expressions and division by zero are False."""
    try:
        evaluation = evaluate_expression(expression)
    except ExpressionError:
        return False
    used, given = collections.Counter(evaluation.numbers), collections.Counter(numbers)
    numbers_ok = used == given if use_all_numbers else not used - given
    return numbers_ok and evaluation.value == target


def extract_expression(completion: str, fmt: str = "answer_tag") -> str | None:
    """The expression of a Countdown answer: the `<answer>` content ("answer_tag"), or the first
    line of the completion ("plain"). Text from the first `=` on (`(3 + 5) * 2 = 16`) is
    dropped: only the expression is checked."""
    check_format(fmt, ("answer_tag", "plain"))
    answer = extract_answer(completion, fmt)
    if answer is None:
        return None
    return answer.split("\n", 1)[0].split("=", 1)[0].strip() or None


def countdown_reward(completion: str, numbers: Sequence[int], target: int, *,
                     fmt: str = "answer_tag", use_all_numbers: bool = False) -> float:
    """1.0 when the completion's expression (see `extract_expression`) solves the game, else 0."""
    expression = extract_expression(completion, fmt)
    return float(expression is not None
                 and check_countdown(expression, numbers, target, use_all_numbers=use_all_numbers))
