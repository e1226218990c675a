"""Correctness of a final answer against a reference: numeric with a tolerance, else symbolic.

Numbers are compared here, exactly (`rewards.numbers`). Other references ("x^2+1", "\\sqrt{2}",
"(1, 2)") go to `math-verify` (Hugging Face's LaTeX-to-SymPy equivalence checker), which knows
that `1+x^2` and `x^2+1` are the same answer; a plain text match is tried first, so letter
answers ("B") never load SymPy.
"""

from __future__ import annotations

import functools
import threading

from .extract import extract_answer, extract_number
from .numbers import last_integer, numbers_close, parse_number


def _normalize_text(text: str) -> str:
    return " ".join(text.casefold().replace("$", "").split()).rstrip(".")


MATH_VERIFY_TIMEOUT_S = 5
# Symbolic comparison costs ~0.1 s a call; a final answer longer than this is prose, not an
# expression, and is compared as text only.
MAX_SYMBOLIC_CHARS = 64


def _timeout() -> int | None:
    """math-verify's timeout is a SIGALRM, which Python allows only on the main thread; in a
    reward worker thread the worker's own deadline bounds the call instead."""
    return MATH_VERIFY_TIMEOUT_S if threading.current_thread() is threading.main_thread() else None


@functools.lru_cache(maxsize=4096)  # a reference is parsed once for its whole group of samples
def _parse_latex(answer: str) -> tuple:
    from math_verify import parse  # SymPy takes a second to import: only when needed

    return tuple(parse(f"${answer}$", parsing_timeout=_timeout()))


def _symbolically_equal(predicted: str, reference: str) -> bool:
    """`math_verify.verify` of the two answers read as LaTeX expressions."""
    if max(len(predicted), len(reference)) > MAX_SYMBOLIC_CHARS:
        return False
    from math_verify import verify

    gold, target = _parse_latex(reference), _parse_latex(predicted)
    return bool(gold and target and verify(list(gold), list(target), timeout_seconds=_timeout()))


def math_reward(completion: str, answer: str, *, fmt: str = "auto", tol: float = 1e-6) -> float:
    """1.0 when the final answer of `completion` equals the reference `answer`, else 0.0.

    The final answer is found with `extract_number(completion, fmt)` (see `rewards.extract` for
    the formats). A numeric reference ("18", "1,250", "-3/4", "0.75") matches when
    |pred − ref| ≤ tol · max(1, |ref|), in exact rational arithmetic. A non-numeric reference
    (e.g. "B", "x^2+1") matches the extracted answer text up to case, whitespace, `$` and a
    final period, or when `math-verify` finds the two expressions equal ("1 + x^2").
    """
    reference = parse_number(answer)
    if reference is None:
        predicted_text = extract_answer(completion, fmt)
        if predicted_text is None:
            return 0.0
        return float(_normalize_text(predicted_text) == _normalize_text(answer)
                     or _symbolically_equal(predicted_text, answer))
    predicted = extract_number(completion, fmt)
    return float(predicted is not None and numbers_close(predicted, reference, tol))


def last_integer_reward(completion: str, answer: str) -> float:
    """1.0 when the last number of `completion` is an integer literal equal to `answer`
    ("37 + 48 = 85." and "So the answer is 85" score 1 for 85; "85.0" and "170/2" do not)."""
    value, reference = last_integer(completion), parse_number(answer)
    return float(value is not None and reference is not None and value == reference)
