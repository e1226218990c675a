"""Numbers as models write them, parsed to exact rationals and compared with a tolerance.

A model's final answer to "how many dollars" can read `1,250`, `$1250.00`, `-3/4`, `\\frac{3}{4}`
or `0.75`. Parsing to `fractions.Fraction` (never float) keeps `0.1 + 0.2`-style rounding out of
the comparison, so the only slack is the explicit tolerance of `numbers_close`.

Grammar of one number token (after LaTeX clean-up, see `clean_latex`):
  integer   `12`, `1,234,567` (commas only in groups of three)
  decimal   `3.25`, `.5`
  sign      a leading `-` (or U+2212 `−`) that does not follow a word character, `)` or `.`,
            so `5-3` reads as 5 and 3, `x=-3` as -3
  fraction  `num/den` with spaces allowed around `/`; `1/0` is no number
Tokens longer than `MAX_TOKEN_CHARS` are ignored: no real answer is that long, and converting a
100,000-digit string would cost time (and trips Python's int-string limit).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from fractions import Fraction

MAX_TOKEN_CHARS = 64

_UNSIGNED = r"(?:(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+)"
NUMBER_RE = re.compile(
    rf"(?P<num>(?:(?<![\w).])-)?{_UNSIGNED})(?:\s*/\s*(?P<den>{_UNSIGNED}))?", re.ASCII)

_FRAC_RE = re.compile(r"\\[dt]?frac\s*\{\s*([^{}]*?)\s*\}\s*\{\s*([^{}]*?)\s*\}")
_FRAC_SHORT_RE = re.compile(r"\\[dt]?frac\s*(\d)\s*(\d)")
_TEXT_RE = re.compile(r"\\(?:text|textbf|mathrm|mbox)\s*\{([^{}]*)\}")


def clean_latex(text: str) -> str:
    """Rewrites the LaTeX that wraps numbers into plain text: `\\frac{a}{b}` (and `\\dfrac`,
    `\\tfrac`, `\\frac34`) to `a/b`, `\\text{..}` to its content, `{,}` to `,`, drops `\\$`, `\\%`,
    `\\!`, `\\,` and `\\left`/`\\right`; the Unicode minus becomes `-`."""
    text = text.replace("\u2212", "-").replace("{,}", ",")
    for token in ("\\left", "\\right", "\\!", "\\,", "\\;", "\\$", "\\%", "$"):
        text = text.replace(token, "")
    text = _TEXT_RE.sub(r"\1", text)
    text = _FRAC_RE.sub(r"\1/\2", text)
    return _FRAC_SHORT_RE.sub(r"\1/\2", text)


def _to_fraction(token: str) -> Fraction | None:
    if len(token) > MAX_TOKEN_CHARS:
        return None
    return Fraction(token.replace(",", ""))


def _match_value(match: re.Match) -> Fraction | None:
    num = _to_fraction(match["num"])
    if num is None or match["den"] is None:
        return num
    den = _to_fraction(match["den"])
    if not den:  # None (too long) or zero
        return None
    return num / den


def iter_numbers(text: str) -> Iterator[Fraction | None]:
    """Values of the number tokens of `text` in order; None for a token that is no valid number
    (a zero denominator, an over-long digit run)."""
    for match in NUMBER_RE.finditer(clean_latex(text)):
        yield _match_value(match)


def first_number(text: str) -> Fraction | None:
    """The first number in `text` (e.g. the `18` of `$18.00 per day`), or None."""
    return next(iter_numbers(text), None)


def _last_match(text: str) -> re.Match | None:
    """The last number token of `text`. Only it is converted by the callers: a completion of
    many thousand numbers costs one regex scan, not a Fraction per number."""
    last = None
    for last in NUMBER_RE.finditer(clean_latex(text)):
        pass
    return last


def last_number(text: str) -> Fraction | None:
    """The last number in `text` (the usual fallback answer of a free-form solution), or None."""
    last = _last_match(text)
    return None if last is None else _match_value(last)


def last_integer(text: str) -> int | None:
    """The last number token of `text` when it is an integer literal (`85`, `-35`, `1,280`), else
    None (also when it is a decimal or a fraction: `85.5`, `170/2`)."""
    last = _last_match(text)
    if last is None or last["den"] is not None or "." in last["num"] or len(last["num"]) > MAX_TOKEN_CHARS:
        return None
    return int(last["num"].replace(",", ""))


def parse_number(text: str) -> Fraction | None:
    """`text` as one number if it is exactly one number token (surrounding whitespace, `$`, `%`
    and a trailing `.` allowed), else None. For canonical answers, where extra text is an error."""
    cleaned = clean_latex(text).strip().rstrip(".%").strip()
    match = NUMBER_RE.fullmatch(cleaned)
    return None if match is None else _match_value(match)


def numbers_close(value: Fraction, reference: Fraction, tol: float = 1e-6) -> bool:
    """|value − reference| ≤ tol · max(1, |reference|): absolute for small answers, relative for
    large ones. Exact in rational arithmetic, so `0.75` and `3/4` match at tol=0."""
    return abs(value - reference) <= Fraction(tol) * max(1, abs(reference))
