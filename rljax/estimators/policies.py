"""Small autoregressive policies π_θ(y|x) = Π_t π_θ(y_t | x, y_<t) over the testbed's responses.

A `Policy` is a pair of pure functions of a parameter pytree: `init(key) -> params` and
`logits(params, prompts [B], tokens [B, L]) -> [B, L, V]`, where logits[b, t] are the logits of
token t given prompt b and tokens[b, :t] (teacher forcing; the logits at t never depend on
tokens at or after t). Two kinds:

  tabular      a free logit vector for every (prompt, prefix): the softmax policy of the
               tabular experiments of Tang & Munos 2025; exact gradients are cheap and every
               parameter is reachable.
  transformer  `rljax.models`' tiny decoder, reading [prompt token, y_1, ..., y_{L-1}] over a
               vocabulary of V response tokens + P prompt tokens; only the V response logits
               form the policy (a prompt token is never generated).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rljax import models


class Policy(NamedTuple):
    """An autoregressive policy over responses of up to `max_len` tokens to `num_prompts` prompts."""

    name: str
    num_prompts: int
    vocab_size: int
    max_len: int
    init: Callable  # key -> params
    logits: Callable  # (params, prompts [B] int, tokens [B, L] int) -> [B, L, V] float32


def tabular_policy(num_prompts, vocab_size, max_len, init_scale=1.0):
    """A logits table θ[x, prefix, v], one row per prompt and reachable prefix.

    Prefixes are sequences of non-EOS tokens of length 0..L−1, numbered by length and then in
    base V−1, so the table has P · Σ_{t<L} (V−1)^t rows (P=4, V=4, L=4: 160 rows, 640 logits).
    Initialised N(0, init_scale²), so prompts start with different response distributions.
    """
    words = vocab_size - 1
    sizes = words ** np.arange(max_len)
    offsets = jnp.asarray(np.concatenate([[0], np.cumsum(sizes)[:-1]]), jnp.int32)  # [L]

    def prefix_ids(tokens):
        # Row of tokens[:, :t] for every t. Tokens after an EOS are padding (masked downstream),
        # so clipping EOS to digit 0 only renames rows nobody trains on.
        digits = jnp.clip(tokens - 1, 0, words - 1)
        codes = [jnp.zeros(tokens.shape[:1], jnp.int32)]
        for t in range(1, max_len):
            codes.append(codes[-1] * words + digits[:, t - 1])
        return jnp.stack(codes, axis=1) + offsets

    def init(key):
        return {"logits": init_scale * jax.random.normal(key, (num_prompts, int(sizes.sum()), vocab_size))}

    def logits(params, prompts, tokens):
        return params["logits"][prompts[:, None], prefix_ids(tokens)]

    return Policy("tabular", num_prompts, vocab_size, max_len, init, logits)


def transformer_policy(num_prompts, vocab_size, max_len, **config_overrides):
    """The "tiny" `rljax.models` transformer as a policy.

    The model's vocabulary is the V response tokens followed by one token per prompt (V + P ≤ 8
    for the study's sizes); its input is [prompt token, y_1, ..., y_{L−1}], so the logits at
    position t are those of y_{t+1} given the prompt and y_≤t. `config_overrides` go to
    `models.get_config("tiny", ...)` (e.g. d_model, n_layers).
    """
    cfg = models.get_config(
        "tiny", vocab_size=vocab_size + num_prompts, max_seq_len=max_len, **config_overrides
    )

    def init(key):
        return models.init(cfg, key)

    def logits(params, prompts, tokens):
        inputs = jnp.concatenate([vocab_size + prompts[:, None], tokens[:, :-1]], axis=1)
        out, _ = models.apply(cfg, params, inputs)
        return out[..., :vocab_size]

    return Policy("transformer", num_prompts, vocab_size, max_len, init, logits)


def perturb(params, key, scale):
    """A perturbed copy θ' = θ + scale·rms(θ_leaf)·ε, ε ~ N(0, I), leaf by leaf.

    The scale is relative to each leaf's size, so one number perturbs a logits table and a
    transformer's weights alike (leaves that are all zero, or constant like norm scales, move by
    scale·|value|). Used for the reference policy π_ref and the stale sampler π_old.
    """
    leaves, treedef = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(key, len(leaves))
    noisy = [
        x + scale * jnp.sqrt(jnp.mean(jnp.square(x))) * jax.random.normal(k, x.shape, x.dtype)
        for x, k in zip(leaves, keys)
    ]
    return jax.tree_util.tree_unflatten(treedef, noisy)
