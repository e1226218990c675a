"""Correctness of a final answer against a reference: numeric with a tolerance, else textual."""

from __future__ import annotations

from .extract import extract_answer, extract_number
from .numbers import numbers_close, parse_number


def _normalize_text(text: str) -> str:
    return " ".join(text.casefold().replace("$", "").split()).rstrip(".")


def math_reward(completion: str, answer: str, *, fmt: str = "auto", tol: float = 1e-6) -> float:
    """1.0 when the final answer of `completion` equals the reference `answer`, else 0.0.

    The final answer is found with `extract_number(completion, fmt)` (see `rewards.extract` for
    the formats). A numeric reference ("18", "1,250", "-3/4", "0.75") matches when
    |pred − ref| ≤ tol · max(1, |ref|), in exact rational arithmetic. A non-numeric reference
    (e.g. "B", "x^2") matches the extracted answer text up to case, whitespace, `$` and a final
    period.
    """
    reference = parse_number(answer)
    if reference is None:
        predicted_text = extract_answer(completion, fmt)
        return float(predicted_text is not None
                     and _normalize_text(predicted_text) == _normalize_text(answer))
    predicted = extract_number(completion, fmt)
    return float(predicted is not None and numbers_close(predicted, reference, tol))
