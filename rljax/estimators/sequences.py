"""The response space of the testbed: every response of a tiny vocabulary, enumerated.

Token 0 is EOS. A response is up to L tokens long and ends at its first EOS (included, as
`generate` marks it) or at L tokens; positions after the EOS are padding (EOS ids, mask False).
With V tokens there are N = Σ_{ℓ=1}^{L} (V−1)^{ℓ−1} + (V−1)^L distinct responses (V=4, L=4: 121),
so expectations over π(·|x) are exact finite sums.
"""

from __future__ import annotations

import itertools

import jax.numpy as jnp
import numpy as np

EOS = 0


def enumerate_responses(vocab_size, max_len):
    """Every distinct response over `vocab_size` tokens (0 = EOS) of at most `max_len` tokens.

    Returns:
      (tokens [N, L] int32, mask [N, L] bool): ordered by length, then lexicographically; the
      mask is True up to and including the first EOS.
    """
    if vocab_size < 2 or max_len < 1:
        raise ValueError(f"need vocab_size >= 2 and max_len >= 1, got {vocab_size}, {max_len}")
    words = range(1, vocab_size)
    rows = [body + (EOS,) for n in range(max_len) for body in itertools.product(words, repeat=n)]
    rows += list(itertools.product(words, repeat=max_len))
    tokens = np.full((len(rows), max_len), EOS, np.int32)
    mask = np.zeros((len(rows), max_len), bool)
    for i, row in enumerate(rows):
        tokens[i, : len(row)] = row
        mask[i, : len(row)] = True
    return tokens, mask


def response_mask(tokens):
    """The mask of a response (True up to and including the first EOS), from its tokens [B, L].

    Used for decoded responses (ReMax's greedy rollout); enumerated and sampled responses carry
    their mask from `enumerate_responses`.
    """
    eos_before = jnp.cumsum(tokens == EOS, axis=-1) - (tokens == EOS)
    return eos_before == 0
