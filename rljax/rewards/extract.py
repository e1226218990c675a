"""Finding the final answer in a completion, for each answer format rljax's prompts ask for.

Formats (`ANSWER_FORMATS`; `rljax.data.prompts` writes the matching instructions):
  "plain"       no marker: the whole completion is the answer (from-scratch models prompted with
                "Q: ... A:"); numerically, its last number.
  "hash"        GSM8K's `#### <answer>`: the rest of the line after the last `####`.
  "boxed"       `\\boxed{<answer>}` (or `\\fbox{}`), the last one, braces nested to any depth.
  "answer_tag"  `<answer> ... </answer>`, the last complete pair (DeepSeek-R1 / TinyZero style).
`extract_answer(text, "auto")` tries hash, boxed, answer_tag, then a stated answer ("the answer
is 18.", "Final answer: 18"), then falls back to plain: what pretrained models write when asked
in their own words.

The extractors never raise on any string: a missing or malformed marker gives None.
"""

from __future__ import annotations

import re
from fractions import Fraction

from .numbers import first_number, last_number

ANSWER_FORMATS = ("plain", "hash", "boxed", "answer_tag")
_BOX_COMMANDS = ("\\boxed", "\\fbox")


def check_format(fmt: str, allowed=ANSWER_FORMATS) -> None:
    if fmt not in allowed:
        raise ValueError(f"unknown answer format {fmt!r}; expected one of {allowed}")


def extract_hash(text: str) -> str | None:
    """The text after the last `####`, up to the end of its line (stripped), or None."""
    start = text.rfind("####")
    if start < 0:
        return None
    answer = text[start + 4:].split("\n", 1)[0].strip()
    return answer or None


def extract_boxed(text: str) -> str | None:
    """The content of the last `\\boxed{...}` / `\\fbox{...}`, nested braces matched; also
    `\\boxed 5` (no braces: up to the next space or `$`). None when absent or unbalanced."""
    start = max(text.rfind(command) for command in _BOX_COMMANDS)
    if start < 0:
        return None
    i = start + (len("\\boxed") if text.startswith("\\boxed", start) else len("\\fbox"))
    rest = text[i:]
    if rest.startswith(" ") and not rest.lstrip().startswith("{"):
        answer = rest.lstrip().split(" ", 1)[0].split("$", 1)[0]
        return answer or None
    rest = rest.lstrip()
    if not rest.startswith("{"):
        return None
    depth = 0
    for j, char in enumerate(rest):
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return rest[1:j].strip() or None
    return None


def extract_answer_tag(text: str) -> str | None:
    """The stripped content of the last complete `<answer>...</answer>` pair, or None."""
    end = text.rfind("</answer>")
    start = text.rfind("<answer>", 0, max(end, 0))
    if end < 0 or start < 0:
        return None
    return text[start + len("<answer>"):end].strip() or None


_STATED = re.compile(r"(?:final\s+answer|the\s+answer|answer)\s*(?:is|:|=)\s*:?\s*(?P<answer>[^\n]+)",
                     re.IGNORECASE)


def extract_stated(text: str) -> str | None:
    """What follows the last "the answer is" / "final answer:" / "answer =" (to the end of its
    line, a final period dropped), or None."""
    matches = list(_STATED.finditer(text))
    if not matches:
        return None
    answer = matches[-1]["answer"].strip().rstrip(".").strip()
    return answer or None


_EXTRACTORS = {"hash": extract_hash, "boxed": extract_boxed, "answer_tag": extract_answer_tag,
               "stated": extract_stated}


def _marked_answer(text: str, fmt: str) -> str | None:
    """The marked answer for fmt "hash"/"boxed"/"answer_tag", the first present marker for
    "auto", None for "plain"."""
    check_format(fmt, ANSWER_FORMATS + ("auto",))
    if fmt == "plain":
        return None
    for name in tuple(_EXTRACTORS) if fmt == "auto" else (fmt,):  # "stated" is tried by "auto" only
        answer = _EXTRACTORS[name](text)
        if answer is not None:
            return answer
    return None


def extract_answer(text: str, fmt: str = "auto") -> str | None:
    """The answer text of `text` in format `fmt` (one of `ANSWER_FORMATS`, or "auto"), or None.

    "plain" returns the stripped completion; "auto" returns the first of hash, boxed, answer_tag
    that is present, else the stripped completion.
    """
    answer = _marked_answer(text, fmt)
    if answer is None and fmt in ("plain", "auto"):
        return text.strip() or None
    return answer


def extract_number(text: str, fmt: str = "auto") -> Fraction | None:
    """The numeric final answer of `text`: the first number of the marked answer (`#### 18
    dollars` -> 18), or, for "plain" (and "auto" without a marker), the last number."""
    answer = _marked_answer(text, fmt)
    if answer is not None:
        return first_number(answer)
    return last_number(text) if fmt in ("plain", "auto") else None
