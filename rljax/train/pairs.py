"""Preference pairs sampled from a policy on a verifiable task, for the preference stages.

`sample_pairs` makes them (chosen = a correct answer, the model's own when it has one, rejected =
one of its incorrect samples); `sampled_pairs_file` writes them to a preference JSONL file
(`rljax.data.preference`'s format, read back by `load_preferences`), cached under the data dir by
a hash of the model, the tokenizer, the examples and the sampling settings. They live in the train
layer, not with the JSONL parsing in `rljax.data`, because they sample with `rljax.generate`.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from rljax import generate
from rljax.data.batching import pad_left
from rljax.data.builder import Example
from rljax.data.preference import write_preference_jsonl
from rljax.data.tasks import default_data_dir


def sample_pairs(cfg, params, tokenizer, examples: Sequence[Mapping[str, Any]], key: jax.Array, *,
                 prompt_fn: Callable[[Mapping[str, Any]], str], reward_fn: Callable[[str, Mapping], float],
                 samples_per_prompt: int = 8, max_new_tokens: int = 8, temperature: float = 1.0,
                 prompt_len: int | None = None, batch_size: int = 64, pairs_per_prompt: int = 1) -> list[Example]:
    """Preference pairs from a policy's own samples on a verifiable task.

    For each example, `samples_per_prompt` completions are sampled (`rljax.generate`, seeded by
    `key`) and scored by `reward_fn(completion, example)` (1 = correct). Each of the first
    `pairs_per_prompt` distinct incorrect samples is a rejected response, paired with a chosen
    one: the distinct correct samples in turn, or the reference answer (the example's `answer`
    after a space, `plain_target`'s form) when no sample is correct. Examples whose samples are
    all correct give no pair. Several comparisons per prompt, as InstructGPT's reward model
    takes (Ouyang et al. 2022), give a reward model more of the policy's own mistakes to rank
    for the same sampling cost. A response is the text the completion adds to the prompt
    (decode(prompt + completion) minus decode(prompt)), so prompt + response re-encodes as sampled.

    Returns rows with the `rljax.data.preference.FIELDS` (id, question and answer from the
    example); a prompt's first pair has the example's id, its k-th (k >= 1) "<id>/<k>".
    """
    if pairs_per_prompt < 1:
        raise ValueError(f"pairs_per_prompt={pairs_per_prompt}: it must be at least 1")
    eos = set(tokenizer.eos_ids)
    rows = []
    for start in range(0, len(examples), batch_size):
        chunk = list(examples[start:start + batch_size])
        prompts = [prompt_fn(e) for e in chunk]
        ids = [tokenizer.encode(p) for p in prompts]
        tokens, mask = pad_left(ids + ids[:1] * (batch_size - len(chunk)),  # one compiled shape
                                pad_id=tokenizer.pad_id, length=prompt_len)
        gen = generate.generate(cfg, params, tokens, mask, jax.random.fold_in(key, start),
                                max_new_tokens=max_new_tokens, temperature=temperature,
                                eos_ids=tokenizer.eos_ids, num_samples=samples_per_prompt,
                                pad_id=tokenizer.pad_id)
        out, out_mask = np.asarray(gen.tokens), np.asarray(gen.mask)
        for i, (example, prompt, prompt_ids) in enumerate(zip(chunk, prompts, ids)):
            head = tokenizer.decode(prompt_ids)
            correct, wrong = [], []  # distinct responses, in sampling order
            for j in range(i * samples_per_prompt, (i + 1) * samples_per_prompt):
                completion = [int(t) for t, m in zip(out[j], out_mask[j]) if m and int(t) not in eos]
                response = tokenizer.decode(prompt_ids + completion)[len(head):]
                seen = correct if reward_fn(response, example) >= 1.0 else wrong
                if response not in seen:
                    seen.append(response)
            chosen = correct or [f" {example['answer']}"]
            for k, rejected in enumerate(wrong[:pairs_per_prompt]):
                rows.append({"id": example["id"] if k == 0 else f"{example['id']}/{k}",
                             "question": example["question"], "answer": str(example["answer"]), "prompt": prompt,
                             "chosen": chosen[k % len(chosen)], "rejected": rejected})
    return rows


def _describe(value: Any) -> Any:
    """A setting as stable text: a function by its qualified name (a partial with its arguments)."""
    if isinstance(value, functools.partial):
        return [_describe(value.func), [_describe(a) for a in value.args],
                {k: _describe(v) for k, v in value.keywords.items()}]
    if callable(value):
        return f"{getattr(value, '__module__', '')}.{getattr(value, '__qualname__', type(value).__qualname__)}"
    return value


def _fingerprint(*parts: Any) -> str:
    digest = hashlib.sha256()
    for part in parts:
        if isinstance(part, np.ndarray):
            digest.update(part.tobytes())
        else:
            digest.update(json.dumps(part, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:16]


def sampled_pairs_file(cfg, params, tokenizer, examples: Sequence[Mapping[str, Any]], seed: int, *,
                       data_dir: str | os.PathLike | None = None, name: str = "pairs", **sample_kwargs) -> str:
    """The JSONL file of `sample_pairs(cfg, params, tokenizer, examples, PRNGKey(seed), ...)`,
    sampled once and cached as `data_dir/rljax_preference_pairs/<name>-<hash>.jsonl`, the hash
    covering the model config and weights, the tokenizer's vocabulary, the examples, the seed and
    the sampling settings (functions by their qualified names). Returns its path."""
    vocab = [tokenizer.id_to_token(i) for i in range(tokenizer.vocab_size)]
    settings = {k: _describe(v) for k, v in sample_kwargs.items()}
    weights = [np.asarray(x) for x in jax.tree.leaves(params)]
    key = _fingerprint(repr(cfg), str(jax.tree.structure(params)), *weights, vocab, list(examples), seed, settings)
    path = os.path.join(os.fspath(data_dir or default_data_dir()), "rljax_preference_pairs", f"{name}-{key}.jsonl")
    if not os.path.exists(path):
        rows = sample_pairs(cfg, params, tokenizer, examples, jax.random.PRNGKey(seed), **sample_kwargs)
        if not rows:
            raise ValueError("every sample was correct: no preference pairs (raise the temperature or "
                             "use a weaker model)")
        write_preference_jsonl(rows, path)
    return path
