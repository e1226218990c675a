"""Sampling controls: how one next token is drawn from the policy's logits.

The sampling distribution is the policy's softmax(logits), tempered, then truncated by three
filters applied in this order (the order of transformers' logits processors and of vLLM):

  1. temperature T:  z = logits / T   (T = 0 means greedy: argmax of the raw logits)
  2. top-k (Fan et al. 2018):  keep the k largest z
  3. top-p, nucleus (Holtzman et al. 2020):  of what remains, keep the smallest prefix (by
     descending probability) whose renormalised mass reaches p
  4. min-p (Nguyen et al. 2024):  keep tokens with probability >= min_p * max probability,
     i.e. z >= max(z) + log(min_p); this is unaffected by the renormalisations above.

Ties: a filter that keeps a token keeps every token with the same logit (the threshold is a
value, not a count), so top-k may keep more than k tokens when logits tie at the boundary.
Shapes: B rows, V vocab.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class Sampling:
    """The sampling controls; frozen and hashable, so a compiled sampler is specialised to them
    (a disabled filter costs nothing, and top-p's bisection is only paid when top-p is on)."""

    temperature: float = 1.0
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1: off
    min_p: float = 0.0  # 0: off

    def __post_init__(self):
        if not (isinstance(self.temperature, (int, float)) and math.isfinite(self.temperature)
                and self.temperature >= 0):
            raise ValueError(f"temperature must be a finite number >= 0 (0 is greedy), "
                             f"got {self.temperature!r}")
        if not (isinstance(self.top_k, int) and self.top_k >= 0):
            raise ValueError(f"top_k must be an integer >= 0 (0 disables it), got {self.top_k!r}")
        if not (isinstance(self.top_p, (int, float)) and 0 < self.top_p <= 1):
            raise ValueError(f"top_p must be in (0, 1] (1 disables it), got {self.top_p!r}")
        if not (isinstance(self.min_p, (int, float)) and 0 <= self.min_p < 1):
            raise ValueError(f"min_p must be in [0, 1) (0 disables it), got {self.min_p!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @property
    def is_raw(self) -> bool:
        """True when the sampling distribution is the policy itself (T = 1, no truncation)."""
        return self.temperature == 1 and not self.top_k and self.top_p == 1 and not self.min_p


def sampling_logits(logits: jax.Array, sampling: Sampling) -> jax.Array:
    """The logits of the sampling distribution: logits [B, V] -> [B, V] float32, tempered, with
    -inf on every token a filter drops. Not for greedy sampling (T = 0)."""
    z = logits.astype(jnp.float32)
    if sampling.temperature != 1:
        z = z / sampling.temperature
    vocab = z.shape[-1]
    top_k = sampling.top_k if 0 < sampling.top_k < vocab else 0
    keep = None
    if top_k:
        keep = z >= jax.lax.top_k(z, top_k)[0][..., -1:]
    if sampling.top_p < 1:
        candidates = z if keep is None else jnp.where(keep, z, -jnp.inf)
        nucleus = candidates >= nucleus_threshold(candidates, sampling.top_p)
        keep = nucleus if keep is None else keep & nucleus
    if sampling.min_p > 0:
        floor = jnp.max(z, axis=-1, keepdims=True) + math.log(sampling.min_p)
        keep = z >= floor if keep is None else keep & (z >= floor)
    return z if keep is None else jnp.where(keep, z, -jnp.inf)


def _sortable(z: jax.Array) -> jax.Array:
    """float32 -> uint32, monotone: a < b exactly when _sortable(a) < _sortable(b) (no NaNs)."""
    bits = jax.lax.bitcast_convert_type(z, jnp.uint32)
    return jnp.where(bits >> 31 == 1, ~bits, bits | jnp.uint32(1 << 31))


def nucleus_threshold(z: jax.Array, top_p: float) -> jax.Array:
    """The smallest logit of top-p's nucleus: z [B, V] -> [B, 1], exactly the logit at which the
    descending cumulative mass of softmax(z) first reaches top_p, without sorting V.

    The nucleus is {z >= t} for the largest t whose mass sum(softmax(z)[z >= t]) is still
    >= top_p (the mass only falls as t rises, so it is found by bisection). The bisection runs
    over the 2^32 float32 values in their order (`_sortable`), so 32 halvings pin t to one of
    the logits exactly; each is one masked sum over V, where a sort of V is much slower on CPUs.
    """
    probs = jax.nn.softmax(z, axis=-1)
    keys = _sortable(z)
    low = jnp.min(keys, axis=-1, keepdims=True)  # invariant: mass(keys >= low) >= top_p
    high = jnp.max(keys, axis=-1, keepdims=True)

    def halve(_, bounds):
        low, high = bounds
        gap = high - low
        mid = low + (gap >> 1) + (gap & 1)  # the upper middle, without overflowing uint32
        enough = jnp.sum(jnp.where(keys >= mid, probs, 0.0), axis=-1, keepdims=True) >= top_p
        return jnp.where(enough, mid, low), jnp.where(enough, high, mid - (gap > 0).astype(jnp.uint32))

    low, _ = jax.lax.fori_loop(0, 32, halve, (low, high))
    return jnp.min(jnp.where(keys >= low, z, jnp.inf), axis=-1, keepdims=True)


def sample(logits: jax.Array, key: jax.Array, sampling: Sampling,
           ) -> tuple[jax.Array, jax.Array, jax.Array | None]:
    """Draws one token per row.

    Args:
      logits: [B, V] the policy's next-token logits.
      key: PRNG key (unused when greedy).
      sampling: the controls.
    Returns:
      tokens [B] int32;
      logprobs [B] float32, log-prob of each token under the raw policy (softmax of `logits`:
        temperature 1, no truncation): what a policy-gradient loss compares against;
      sampling_logprobs [B] float32, log-prob under the distribution actually sampled (0 when
        greedy, a point mass), or None when that is the raw policy (`sampling.is_raw`).
    """
    logits = logits.astype(jnp.float32)
    if sampling.greedy:
        tokens = jnp.argmax(logits, axis=-1)
        z = None
    else:
        z = logits if sampling.is_raw else sampling_logits(logits, sampling)
        tokens = categorical(key, z)
    tokens = tokens.astype(jnp.int32)
    logprobs = _log_softmax_at(logits, tokens)
    if sampling.is_raw:
        return tokens, logprobs, None
    sampling_logprobs = jnp.zeros_like(logprobs) if z is None else _log_softmax_at(z, tokens)
    return tokens, logprobs, sampling_logprobs


def categorical(key: jax.Array, logits: jax.Array, block: int = 128) -> jax.Array:
    """One draw per row from softmax(logits [B, V]) (-inf: probability 0), by inverting the CDF.

    `jax.random.categorical` (Gumbel-max) draws V random numbers per row; on a CPU that took about
    a quarter of a small model's decoding step (vocabulary 8192, 16 rows), where inverting the
    CDF needs one uniform per row. The CDF is built in two levels, over blocks of `block` tokens and then
    within the chosen block, which keeps every prefix sum short (accurate in float32) and
    avoids a cumulative sum over all V. Returns [B] int32.
    """
    rows, vocab = logits.shape
    weights = jnp.exp(logits - jnp.max(logits, axis=-1, keepdims=True))  # [B, V], max 1
    weights = jnp.pad(weights, ((0, 0), (0, -vocab % block))).reshape(rows, -1, block)
    block_weights = jnp.sum(weights, axis=-1)  # [B, V/b]
    block_cdf = jnp.cumsum(block_weights, axis=-1)
    target = jax.random.uniform(key, (rows, 1), jnp.float32) * block_cdf[:, -1:]
    chosen = _first_above(block_cdf, target, block_weights)  # [B]
    # The cdf before the chosen block, exactly the entry that `chosen` compared <= target.
    block_start = jnp.take_along_axis(jnp.pad(block_cdf[:, :-1], ((0, 0), (1, 0))),
                                      chosen[:, None], axis=-1)
    within = jnp.take_along_axis(weights, chosen[:, None, None], axis=1)[:, 0]  # [B, b]
    index = _first_above(block_start + jnp.cumsum(within, axis=-1), target, within)
    return (chosen * block + index).astype(jnp.int32)


def _first_above(cdf: jax.Array, target: jax.Array, weights: jax.Array) -> jax.Array:
    """The first index whose cdf [B, M] exceeds target [B, 1]: where inverse-CDF sampling lands.

    Zero-weight entries never are (their cdf equals the previous one). Where float rounding puts
    the target at or past the total, the answer is the last entry of positive weight.
    """
    count = jnp.sum(cdf <= target, axis=-1)
    last_positive = weights.shape[-1] - 1 - jnp.argmax(weights[:, ::-1] > 0, axis=-1)
    return jnp.minimum(count, last_positive)


def _log_softmax_at(logits: jax.Array, tokens: jax.Array) -> jax.Array:
    """log_softmax(logits)[b, tokens[b]] for logits [B, V], tokens [B], without the [B, V] result."""
    picked = jnp.take_along_axis(logits, tokens[:, None], axis=-1)[:, 0]
    return picked - jax.nn.logsumexp(logits, axis=-1)
