"""Prompt templates: an example dict -> the text or chat messages a model is given.

Two kinds of model:
- from scratch (a small model trained on these tasks only): plain `Q: <question>\nA:` prompts,
  whose continuation is the bare answer (`plain_target`), so the reward reads it with answer
  format "plain";
- chat (a pretrained instruct model): `chat_messages` asks for the final answer in a marked
  format ("hash" `#### <number>`, "boxed" `\\boxed{}`, "answer_tag" `<answer></answer>`, or
  for the code task "code_block", a ```python block);
  render with the tokenizer's chat template:
  `tokenizer.apply_chat_template(chat_messages(example, "hash"), add_generation_prompt=True)`.
The formats are those of `rljax.rewards.extract`; `rljax.rewards.TASK_ANSWER_FORMATS` gives each
task's default, and the rewards must be built for the same format as the prompt.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rljax.rewards.extract import check_format

INSTRUCTIONS = {
    "hash": "Solve the problem step by step. Then write the final answer on its own last line "
            "in the form `#### <number>`.",
    "boxed": "Solve the problem step by step. Then put the final answer within \\boxed{}.",
    "answer_tag": "Show your work in <think> </think> tags. Then give the final answer in "
                  "<answer> </answer> tags, for example <answer> (1 + 2) / 3 </answer>.",
    "code_block": "Write the function in Python, in one ```python code block.",
}


def plain_prompt(example: Mapping[str, Any]) -> str:
    """`Q: <question>\\nA:` for from-scratch models."""
    return f"Q: {example['question']}\nA:"


def plain_target(example: Mapping[str, Any], *, rationale: bool = False) -> str:
    """The SFT continuation of `plain_prompt`: ` <answer>`, or with `rationale=True` (examples
    that have one, e.g. GSM8K) ` <rationale>\\n#### <answer>`."""
    if rationale and example.get("rationale"):
        return f" {example['rationale']}\n#### {example['answer']}"
    return f" {example['answer']}"


def chat_messages(example: Mapping[str, Any], answer_format: str = "hash", *,
                  system: str | None = None) -> list[dict[str, str]]:
    """Chat messages asking for the answer in `answer_format` ("hash", "boxed", "answer_tag"),
    optionally after a system message."""
    check_format(answer_format, tuple(INSTRUCTIONS))
    messages = [] if system is None else [{"role": "system", "content": system}]
    content = f"{example['question']}\n\n{INSTRUCTIONS[answer_format]}"
    return messages + [{"role": "user", "content": content}]


def task_messages(example: Mapping[str, Any], prompt: str, answer_format: str) -> list[dict[str, str]]:
    """The user turn a chat model gets for `example`: with `prompt="chat"` the question and the
    answer format's instruction (`chat_messages`), with "chat_question" the question alone, as
    the task wrote it (the model's chat template adds its default system prompt)."""
    if prompt == "chat_question":
        return [{"role": "user", "content": example["question"]}]
    if prompt == "chat":
        return chat_messages(example, answer_format)
    raise ValueError(f"prompt {prompt!r} is no chat prompt; expected 'chat' or 'chat_question'")
