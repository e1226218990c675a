"""Data for RL on language models: task datasets (tfds builders), prompts, sampling, batching.

  tasks       load_task(name, split, data_dir=None, **knobs) -> TaskSource; TASKS; hold_out
  arithmetic, two_operand, countdown, gsm8k, code   the tfds builders and their configs (knobs)
  builder     TaskConfig / TaskBuilder, the machinery the builders share
  sampler     PromptSampler: seeded per-epoch order, resumable from one integer
  prompts     plain_prompt, plain_target, chat_messages, task_messages
  corpus      tokenizer_corpus (texts for tokenizers.train_sentencepiece)
  batching    pad_left (generation), pad_sft (SFT with a loss mask)
  tokenizers  the Tokenizer interface, SentencePiece and BPE

The names below are imported on first use, so `rljax.data.tokenizers` alone does not pay for
tensorflow-datasets.
"""

import importlib

_EXPORTS = {
    "load_task": "tasks", "TaskSource": "tasks", "TASKS": "tasks", "default_data_dir": "tasks",
    "hold_out": "tasks",
    "PromptSampler": "sampler",
    "plain_prompt": "prompts", "plain_target": "prompts", "chat_messages": "prompts", "task_messages": "prompts",
    "tokenizer_corpus": "corpus",
    "pad_left": "batching", "pad_sft": "batching",
}


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
