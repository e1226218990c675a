"""Preference pairs (prompt, chosen, rejected): JSONL files, a tfds builder, and the unpaired (KTO)
view.

One tfds builder, `rljax_preferences`, prepares any preference JSONL file into ArrayRecord
splits "train" and "test" (a seeded split of the prompts), cached under the data dir by a hash of
the file's content, like the task builders. Two kinds of file feed it:

- a user's file in the HH-RLHF / UltraFeedback style (`load_preferences(path, split)`); each
  line is one of
    {"prompt": str, "chosen": str, "rejected": str}                  (responses as text)
    {"prompt": str?, "chosen": [messages], "rejected": [messages]}   (UltraFeedback-binarized:
        message lists {"role", "content"} ending with the assistant's response; the prompt is
        the shared earlier messages, rendered in the HH transcript form when "prompt" is absent)
    {"chosen": "\\n\\nHuman: ...\\n\\nAssistant: A", "rejected": "...\\n\\nAssistant: B"}   (HH-RLHF:
        full transcripts; the prompt is everything up to and including the last
        "\\n\\nAssistant:", which must be the same in both)
  with an optional "id" (else `L<line>`) and "answer" (a verifiable reference answer). A
  malformed row raises ValueError naming the file, the line and the row id;
- pairs sampled from a model on a verifiable task, written by `write_preference_jsonl`
  (`rljax.train.pairs`: sampling from a policy lies above the data layer).

Rows are dicts of text: id, question (the task's question, or the prompt), answer (the
reference answer, "" when there is none), prompt (the text the model is conditioned on),
chosen, rejected (the responses that continue the prompt). `unpaired(pairs)` is the KTO view:
two rows per pair, {..., "completion", "desirable"}.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
from collections.abc import Mapping, Sequence
from typing import Any

import tensorflow_datasets as tfds

from .builder import Example, TaskBuilder, TaskConfig, check_positive
from .tasks import TaskSource, open_split

HH_ASSISTANT = "\n\nAssistant:"
_HH_ROLES = {"user": "Human", "assistant": "Assistant", "system": "System"}
FIELDS = ("id", "question", "answer", "prompt", "chosen", "rejected")


# -- parsing --------------------------------------------------------------------------------------
def _render_hh(messages: Sequence[Mapping[str, str]]) -> str:
    """Messages in the HH-RLHF transcript form, ending with the assistant's turn marker."""
    turns = "".join(f"\n\n{_HH_ROLES.get(m['role'], m['role'].title())}: {m['content']}" for m in messages)
    return turns + HH_ASSISTANT


def _split_messages(messages: Any, field: str, where: str) -> tuple[list, str]:
    """(earlier messages, final assistant response) of a message list."""
    ok = isinstance(messages, list) and messages and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
        for m in messages)
    if not ok:
        raise ValueError(f"{where}: {field!r} must be text or a list of {{'role', 'content'}} messages")
    if messages[-1]["role"] != "assistant":
        raise ValueError(f"{where}: the last message of {field!r} must be the assistant's response, "
                         f"got role {messages[-1]['role']!r}")
    return messages[:-1], messages[-1]["content"]


def _split_transcript(text: str, field: str, where: str) -> tuple[str, str]:
    """(prompt up to and including the last assistant marker, response) of an HH transcript."""
    cut = text.rfind(HH_ASSISTANT)
    if cut < 0:
        raise ValueError(f"{where}: no 'prompt' field, and {field!r} is not an HH transcript "
                         f"(no {HH_ASSISTANT!r} turn)")
    cut += len(HH_ASSISTANT)
    return text[:cut], text[cut:]


def parse_preference_row(line: str, line_no: int, source: str = "<jsonl>") -> Example:
    """One JSONL line (any of the forms in the module docstring) -> a preference row."""
    where = f"{source} line {line_no}"
    try:
        row = json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f"{where}: not valid JSON ({e})") from None
    if not isinstance(row, dict):
        raise ValueError(f"{where}: a row must be a JSON object, got {type(row).__name__}")
    row_id = row.get("id", f"L{line_no}")
    if not isinstance(row_id, (str, int)) or isinstance(row_id, bool):
        raise ValueError(f"{where}: 'id' must be a string or an integer")
    where = f"{where} (id {row_id})"
    missing = [k for k in ("chosen", "rejected") if k not in row]
    if missing:
        raise ValueError(f"{where}: missing field(s) {missing}; a row needs 'chosen' and 'rejected' "
                         "(and 'prompt' unless they are full HH transcripts)")
    prompt = row.get("prompt")
    if prompt is not None and not isinstance(prompt, str):
        raise ValueError(f"{where}: 'prompt' must be text, got {type(prompt).__name__}")
    chosen, rejected = row["chosen"], row["rejected"]
    if isinstance(chosen, list) and isinstance(rejected, list):
        (context, chosen), (context_r, rejected) = (_split_messages(row[k], k, where) for k in ("chosen", "rejected"))
        if context != context_r:
            raise ValueError(f"{where}: 'chosen' and 'rejected' differ before their final responses")
        if prompt is None:
            if not context:
                raise ValueError(f"{where}: no 'prompt' field and no messages before the responses")
            prompt = _render_hh(context)
    elif not (isinstance(chosen, str) and isinstance(rejected, str)):
        raise ValueError(f"{where}: 'chosen' and 'rejected' must both be text or both message lists")
    elif prompt is None:
        (prompt, chosen), (prompt_r, rejected) = (_split_transcript(row[k], k, where) for k in ("chosen", "rejected"))
        if prompt != prompt_r:
            raise ValueError(f"{where}: the HH transcripts of 'chosen' and 'rejected' differ before the last "
                             "assistant turn")
    answer = row.get("answer", "")
    if not isinstance(answer, (str, int, float)) or isinstance(answer, bool):
        raise ValueError(f"{where}: 'answer' must be text or a number")
    question = row.get("question", prompt)
    if not isinstance(question, str):
        raise ValueError(f"{where}: 'question' must be text")
    return {"id": str(row_id), "question": question, "answer": str(answer), "prompt": prompt,
            "chosen": chosen, "rejected": rejected}


def read_preference_jsonl(path: str | os.PathLike) -> list[Example]:
    """Every row of a preference JSONL file, in file order (blank lines skipped); ids must be unique."""
    rows, seen = [], {}
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if line.strip():
                row = parse_preference_row(line, line_no, os.fspath(path))
                if row["id"] in seen:
                    raise ValueError(f"{os.fspath(path)} line {line_no}: id {row['id']!r} repeats line "
                                     f"{seen[row['id']]}")
                seen[row["id"]] = line_no
                rows.append(row)
    if not rows:
        raise ValueError(f"{os.fspath(path)}: no preference rows")
    return rows


def write_preference_jsonl(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike) -> None:
    """Writes rows (the `FIELDS` of each) as JSONL, atomically (a temporary file, then a rename)."""
    tmp = f"{os.fspath(path)}.tmp{os.getpid()}"
    os.makedirs(os.path.dirname(os.path.abspath(tmp)), exist_ok=True)
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps({k: row[k] for k in FIELDS}) + "\n")
    os.replace(tmp, path)


# -- the tfds builder -------------------------------------------------------------------------------
@dataclasses.dataclass(eq=False)
class PreferenceConfig(TaskConfig):
    """path: a preference JSONL file; test_size: prompts held out as "test" with all their pairs (a
    seeded split of the distinct prompts; with one pair per prompt, test_size rows)."""

    path: str = ""
    test_size: int = 200

    def validate(self):
        check_positive(self, "test_size")

    def fingerprint(self):
        if not self.path:
            return self.knobs()
        with open(self.path, "rb") as f:
            return {**self.knobs(), "source": hashlib.sha256(f.read()).hexdigest()}


class PreferenceBuilder(TaskBuilder):
    """Preference pairs from a JSONL file, split into train and held-out test."""

    name = "rljax_preferences"
    VERSION = tfds.core.Version("1.1.0")  # 1.1.0: the test split holds test_size whole prompts
    CONFIG_CLASS = PreferenceConfig

    def task_features(self):
        text = tfds.features.Text()
        return {"prompt": text, "chosen": text, "rejected": text}

    @staticmethod
    def make_splits(config: PreferenceConfig) -> dict[str, list[Example]]:
        if not config.path:
            raise ValueError("the preference builder needs path=<a preference JSONL file>")
        rows = read_preference_jsonl(config.path)
        # Split by prompt: a held-out pair whose prompt was also trained on (with another response)
        # would overstate held-out accuracy.
        groups: dict[str, list[Example]] = {}
        for row in rows:
            groups.setdefault(row["prompt"], []).append(row)
        if config.test_size >= len(groups):
            raise ValueError(f"test_size={config.test_size} leaves no training pairs: the file has "
                             f"{len(groups)} distinct prompts ({len(rows)} pairs)")
        order = list(groups.values())
        random.Random(config.seed).shuffle(order)
        flat = lambda gs: [row for group in gs for row in group]  # noqa: E731
        return {"test": flat(order[:config.test_size]), "train": flat(order[config.test_size:])}


def load_preferences(path: str | os.PathLike, split: str, data_dir: str | os.PathLike | None = None,
                     test_size: int = 200, seed: int = 0) -> TaskSource:
    """Split "train" or "test" of the preference JSONL file at `path` (prepared into `data_dir` on
    first use; a changed file is a new dataset): "test" holds `test_size` of its distinct prompts,
    with all their pairs. Rows as in the module docstring."""
    return open_split(PreferenceBuilder, "preferences", split, data_dir, path=os.fspath(path),
                      test_size=test_size, seed=seed)


# -- the unpaired (KTO) view ------------------------------------------------------------------------
class UnpairedView(Sequence):
    """Pairs as unpaired examples (Ethayarajh et al. 2024): row 2i is pair i's chosen response
    (desirable), row 2i+1 its rejected one (undesirable); each row keeps the pair's other fields
    (prompt, question, answer...), with `completion` and `desirable` in place of chosen/rejected
    and `<id>/chosen` or `<id>/rejected` as its id."""

    def __init__(self, pairs: Sequence[Mapping[str, Any]]):
        self.pairs = pairs

    def __len__(self) -> int:
        return 2 * len(self.pairs)

    def __getitem__(self, index: int) -> Example:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} unpaired rows")
        i, desirable = index % len(self) // 2, index % 2 == 0
        pair = self.pairs[i]
        row = {k: v for k, v in pair.items() if k not in ("id", "chosen", "rejected")}
        return {"id": f"{pair.get('id', i)}/{'chosen' if desirable else 'rejected'}", **row,
                "completion": pair["chosen" if desirable else "rejected"], "desirable": desirable}


def unpaired(pairs: Sequence[Mapping[str, Any]]) -> UnpairedView:
    """The KTO view of `pairs` (see `UnpairedView`)."""
    return UnpairedView(pairs)
