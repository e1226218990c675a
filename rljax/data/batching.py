"""Padding token-id lists into NumPy batches with explicit masks (no pad-id inference).

- `pad_left` for generation: prompts end at the same column, so decoding appends on the right
  (`generate(cfg, params, tokens, mask, ...)`); `mask` is False on the padding.
- `pad_sft` for supervised fine-tuning: prompt + answer right-padded, with `loss_mask` True on
  the answer tokens only.
`pad_id` only fills the padded slots; nothing reads it back. `multiple_of` rounds the length up
(e.g. to 64) so that jitted steps see few distinct shapes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _batch_length(lengths: Sequence[int], length: int | None, multiple_of: int) -> int:
    if multiple_of < 1:
        raise ValueError(f"multiple_of must be >= 1, got {multiple_of}")
    longest = max(lengths, default=0)
    if length is None:
        return -(-max(longest, 1) // multiple_of) * multiple_of
    if longest > length:
        row = int(np.argmax(lengths))
        raise ValueError(f"row {row} has {longest} tokens, more than length={length}")
    return length


def pad_left(seqs: Sequence[Sequence[int]], *, pad_id: int = 0, length: int | None = None,
             multiple_of: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Left-pads token-id lists.

    Args:
      seqs: B lists of token ids.
      pad_id: id written into padding.
      length: T; default the longest row rounded up to `multiple_of`. A longer row raises.
    Returns:
      tokens [B, T] int32 and mask [B, T] bool (True on real tokens, which end at column T-1).
    """
    t = _batch_length([len(s) for s in seqs], length, multiple_of)
    tokens = np.full((len(seqs), t), pad_id, np.int32)
    mask = np.zeros((len(seqs), t), bool)
    for b, seq in enumerate(seqs):
        if len(seq):
            tokens[b, t - len(seq):] = seq
            mask[b, t - len(seq):] = True
    return tokens, mask


def pad_sft(prompts: Sequence[Sequence[int]], answers: Sequence[Sequence[int]], *,
            pad_id: int = 0, length: int | None = None, multiple_of: int = 1
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Right-padded prompt+answer rows for SFT.

    Args:
      prompts, answers: B token-id lists each; row b is prompts[b] + answers[b] (append EOS to
        the answer if the model should learn to stop).
      pad_id, length, multiple_of: as in `pad_left`.
    Returns:
      tokens [B, T] int32, mask [B, T] bool (True on prompt and answer tokens), and
      loss_mask [B, T] bool, True where tokens[b, t] is an answer token: the targets. Logits at
      t-1 predict token t, so the next-token loss is
      `sft_loss(token_logprobs(logits[:, :-1], tokens[:, 1:]), loss_mask[:, 1:])`.
    """
    if len(prompts) != len(answers):
        raise ValueError(f"{len(prompts)} prompts but {len(answers)} answers")
    rows = [list(p) + list(a) for p, a in zip(prompts, answers, strict=True)]
    t = _batch_length([len(r) for r in rows], length, multiple_of)
    tokens = np.full((len(rows), t), pad_id, np.int32)
    mask = np.zeros((len(rows), t), bool)
    loss_mask = np.zeros((len(rows), t), bool)
    for b, (row, prompt) in enumerate(zip(rows, prompts, strict=True)):
        tokens[b, :len(row)] = row
        mask[b, :len(row)] = True
        loss_mask[b, len(prompt):len(row)] = True
    return tokens, mask, loss_mask
