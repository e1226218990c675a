"""Texts for training a from-scratch model's tokenizer (`tokenizers.train_sentencepiece`).

The corpus is what the model will read and write: each example as its plain prompt and answer
(`Q: What is 37 + 48?\nA: 85`), plus the worked solution where the task has one (GSM8K), so the
learned pieces fit the prompt format as well as the problems. The test split is left out by
default, so held-out problems do not shape the vocabulary.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import Any

from .prompts import plain_prompt, plain_target
from .tasks import load_task


def tokenizer_corpus(task: str | Sequence[Any], split: str = "train", *,
                     data_dir: str | os.PathLike | None = None, **knobs: Any) -> Iterator[str]:
    """Yields the corpus texts of `task`: a task name (loaded with `load_task(task, split,
    data_dir, **knobs)`) or an already loaded source of examples.

        texts = itertools.chain(tokenizer_corpus("arithmetic"), tokenizer_corpus("gsm8k"))
        train_sentencepiece(texts, "/tmp/tok", vocab_size=1024)
    """
    source = load_task(task, split, data_dir, **knobs) if isinstance(task, str) else task
    for example in source:
        yield plain_prompt(example) + plain_target(example, rationale=True)
