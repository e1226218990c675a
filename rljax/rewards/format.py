"""Format rewards: did the completion write its final answer the way the prompt asked?

A small format reward (e.g. weight 0.1 next to correctness 1.0, as TinyZero does) teaches a
policy to end with a parseable answer early in training, before it is often right.
"""

from __future__ import annotations

import re

from .extract import check_format, extract_answer_tag, extract_boxed
from .numbers import NUMBER_RE, clean_latex, first_number

_HASH_LINE = re.compile(rf"####[ \t]*(?:{NUMBER_RE.pattern})[ \t]*\.?", re.ASCII)


def format_reward(completion: str, fmt: str) -> float:
    """1.0 when `completion` follows answer format `fmt`, else 0.0.

      "hash"        the last non-empty line is `#### <number>` (e.g. `#### 1,250`).
      "boxed"       there is a `\\boxed{...}` whose content contains a number.
      "answer_tag"  exactly one `<answer>` and one `</answer>`, in that order, around
                    non-empty content.
    ("plain" asks for no format, so it has no format reward.)
    """
    check_format(fmt, ("hash", "boxed", "answer_tag"))
    if fmt == "hash":
        lines = completion.strip().splitlines()
        return float(bool(lines) and _HASH_LINE.fullmatch(clean_latex(lines[-1].strip()))
                     is not None)
    if fmt == "boxed":
        content = extract_boxed(completion)
        return float(content is not None and first_number(content) is not None)
    single = completion.count("<answer>") == 1 and completion.count("</answer>") == 1
    return float(single and extract_answer_tag(completion) is not None)
