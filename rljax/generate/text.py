"""Text in, text out: `generate` behind a tokenizer and its chat template, for notebooks."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np

from rljax.generate.loop import generate
from rljax.models.config import ModelConfig
from rljax.sharding import to_host

# Prompts are left-padded to a multiple of this, so that prompts of similar lengths share one
# compiled program instead of compiling once per exact length.
PROMPT_BUCKET = 64


def complete(cfg: ModelConfig, params: dict, tokenizer, prompts: Sequence[str], *,
             chat: bool = True, key: jax.Array | None = None, max_new_tokens: int = 256,
             num_samples: int = 1, **sampling) -> list[str]:
    """Completes each prompt; returns len(prompts) * num_samples strings, sample j of prompt i
    at index i * num_samples + j, without the EOS token.

    Args:
      tokenizer: an `rljax.data.tokenizers.Tokenizer` (`encode`, `decode`, `eos_ids`, `pad_id`,
        `apply_chat_template`), e.g. the one `models.load_gguf` returns.
      prompts: strings; with `chat`, each is one user turn rendered by the chat template with the
        assistant header appended, otherwise it is encoded as is.
      key: PRNG key (default PRNGKey(0)); irrelevant for greedy decoding (temperature=0).
      **sampling: `temperature`, `top_k`, `top_p`, `min_p` of `generate`. Generation stops at
        the tokenizer's `eos_ids`.
    """
    if isinstance(prompts, str):
        raise TypeError("prompts must be a list of strings, not one string")
    if chat:
        prompts = [tokenizer.apply_chat_template([{"role": "user", "content": p}]) for p in prompts]
    ids = [tokenizer.encode(p) for p in prompts]
    if not all(ids):
        raise ValueError("every prompt must encode to at least one token")
    longest = max(map(len, ids))
    # Round up to the bucket, unless that alone would exceed the model's context (generate
    # reports a prompt that does not fit even unpadded).
    length = min(-(-longest // PROMPT_BUCKET) * PROMPT_BUCKET,
                 max(longest, cfg.max_seq_len - max_new_tokens))
    tokens = np.full((len(ids), length), tokenizer.pad_id, np.int32)
    mask = np.zeros((len(ids), length), bool)
    for row, seq in enumerate(ids):
        tokens[row, length - len(seq):] = seq
        mask[row, length - len(seq):] = True
    out = generate(cfg, params, tokens, mask, jax.random.PRNGKey(0) if key is None else key,
                   max_new_tokens, eos_ids=tokenizer.eos_ids, num_samples=num_samples,
                   pad_id=tokenizer.pad_id, **sampling)
    out_tokens, out_mask = to_host((out.tokens, out.mask))
    eos = set(tokenizer.eos_ids)
    return [tokenizer.decode([t for t in row[keep] if t not in eos])
            for row, keep in zip(out_tokens, out_mask)]
