"""Batched autoregressive generation: one prefill, then a decode loop, all in one jit.

    out = generate(cfg, params, prompt_tokens, prompt_mask, key, max_new_tokens=64,
                   temperature=1.0, num_samples=4, eos_ids=tokenizer.eos_ids)

Shapes: B prompts, P prompt length (left-padded), n = num_samples, N = max_new_tokens,
S = P + N - 1 cache slots, V vocab.

How it runs. The prompts are prefilled once, into a cache of S slots allocated inside the jit;
for GRPO-style groups the filled cache (not the computation) is repeated n times along the batch,
so sample i*n + j continues prompt i. A `lax.while_loop` then feeds the last sampled token,
samples the next one and records it; it stops after N tokens or as soon as every row has emitted
an EOS. The cache is loop state, so XLA updates it in place: no copy and no host round-trip per
token. (It is created inside the jit rather than passed in, so there is no input buffer to
donate: the loop owns it from the start.)

`extend` is the same decode loop on a cache that is passed in (and donated) and returned: the
multi-turn step, which appends each row's new tokens to its conversation and samples the reply.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Iterable
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from rljax.generate.sampling import Sampling, sample
from rljax.models.api import default_positions, per_layer_layout, variables
from rljax.models.cache import CACHE_AXES, Cache, init_cache, map_arrays
from rljax.models.config import ModelConfig
from rljax.models.transformer import Transformer
from rljax.sharding import to_host


# XLA:CPU's default copy insertion cannot tell that every read of the cache in a decoding step
# precedes the step's write (the last layer's read and the write are not ordered by data), so it
# copies the whole cache twice per step; its region analysis sees that the in-place update is
# safe. (Other backends ignore the option.)
_COMPILER_OPTIONS = {"xla_cpu_copy_insertion_use_region_analysis": True}


class Generation(NamedTuple):
    """What `generate` returns; row r = i*n + j is sample j of prompt i.

    tokens: [B*n, N] int32, the sampled tokens; after a row's first EOS (and after an early exit)
      they are `pad_id`.
    mask: [B*n, N] bool, True on generated tokens up to and including the first EOS.
    logprobs: [B*n, N] float32, log-prob of each token under the raw policy (temperature 1, no
      truncation); 0 where `mask` is False.
    sampling_logprobs: [B*n, N] float32, log-prob under the distribution actually sampled
      (tempered and truncated; 0 for greedy decoding, a point mass), or None when that
      distribution is the raw policy. The ratio of the two is the importance weight that
      corrects for the sampler/trainer mismatch.
    num_steps: [] int32, the number of tokens generated per row before the loop stopped: N, or
      fewer when every row had emitted an EOS (columns from num_steps on are padding).
    """

    tokens: jax.Array
    mask: jax.Array
    logprobs: jax.Array
    sampling_logprobs: jax.Array | None
    num_steps: jax.Array


def generate(cfg: ModelConfig, params: dict, prompt_tokens: jax.Array, prompt_mask: jax.Array,
             key: jax.Array, max_new_tokens: int, temperature: float = 1.0, top_k: int = 0,
             top_p: float = 1.0, eos_ids: Iterable[int] = (), num_samples: int = 1, *,
             min_p: float = 0.0, pad_id: int = 0) -> Generation:
    """Samples `num_samples` continuations of each prompt.

    Args:
      cfg, params: the policy (any layout: per-layer or scanned, sharded or not).
      prompt_tokens: [B, P] int, left-padded.
      prompt_mask: [B, P] bool, False on padding; the last column must be True in every row
        (left padding), since the next token is predicted from each row's last position.
      key: PRNG key; the same key (and arguments) gives the same output.
      max_new_tokens: N, the number of tokens to generate at most.
      temperature: 0 is greedy decoding; see `rljax.generate.sampling` for every control.
      top_k, top_p, min_p: truncation filters (0, 1 and 0 disable them).
      eos_ids: ids that end a row (e.g. `tokenizer.eos_ids`); empty: never stop early.
      num_samples: n, samples per prompt; the prompt is prefilled once and its cache repeated.
      pad_id: the id written after a row's EOS.
    Returns:
      A `Generation` with [B*n, N] arrays.

    Under `rljax.sharding.use_mesh(mesh)`, with sharded params and batch-sharded prompts, the
    cache follows the rules of `CACHE_AXES` (batch over data/fsdp, kv heads over tensor).
    """
    tokens, mask, static = _arguments(cfg, prompt_tokens, prompt_mask, max_new_tokens, temperature, top_k, top_p,
                                      eos_ids, num_samples, min_p, pad_id)
    return _generate(params, tokens, mask, key, **static)


def lower(cfg: ModelConfig, params: dict, prompt_tokens, prompt_mask, key, max_new_tokens: int,
          temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, eos_ids: Iterable[int] = (),
          num_samples: int = 1, *, min_p: float = 0.0, pad_id: int = 0) -> jax.stages.Lowered:
    """`generate` lowered ahead of time, for the same arguments: `params`, the prompts and `key`
    may be `jax.ShapeDtypeStruct`s (with the shardings to compile for; e.g. from `jax.eval_shape`
    and `rljax.sharding.param_shardings` on a mesh of `jax.experimental.topologies` devices), so
    nothing is allocated or run. Call it under `rljax.sharding.use_mesh(mesh)`, as `generate`.
    The arguments are checked as `generate` checks them, except the prompt mask's values (left
    padding), which abstract prompts do not have."""
    tokens, mask, static = _arguments(cfg, prompt_tokens, prompt_mask, max_new_tokens, temperature, top_k, top_p,
                                      eos_ids, num_samples, min_p, pad_id)
    return _generate.lower(params, tokens, mask, key, **static)


def extend(cfg: ModelConfig, params: dict, cache: Cache, tokens: jax.Array, mask: jax.Array, key: jax.Array,
           max_new_tokens: int, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
           eos_ids: Iterable[int] = (), *, active: jax.Array | None = None, max_steps=None,
           min_p: float = 0.0, pad_id: int = 0) -> tuple[Generation, Cache]:
    """Continues a cached conversation: appends tokens to each row, then samples a reply.

    The multi-turn step (`rljax.envs.rollout`): the cache already holds every row's conversation
    so far; each row's new tokens (its environment's answer and the template's glue) are written
    at that row's own next positions in one forward pass, and decoding continues from there, with
    nothing before them computed again. All in one jit; the cache is donated, so it is updated in
    place and the `cache` passed in may not be used again.

    Args:
      cache: from `new_cache` or a previous `extend`, for these B rows.
      tokens: [B, A] int, each row's new tokens, left-padded (`mask` False on padding); the
        last column must be real in every active row. On an empty cache this is the prompt.
      mask: [B, A] bool.
      active: [B] bool, the rows that take part (default: all); the others append padding and
        their outputs are padding, as rows whose conversation has ended.
      max_steps: [B] int (or one int for all rows), each row's budget: it stops after this many
        tokens, at most `max_new_tokens` (the default). Values, not shapes, so that budgets
        that shrink as conversations grow compile nothing new.
      the rest: as `generate` (num_samples is 1: a conversation is one row).
    Returns:
      (the reply as a `Generation` of [B, N] arrays, the cache). The cache then holds the
      appended tokens and the sampled ones, except the last token of each row that was still
      sampling when the loop ended (its n tokens = num_steps): the caller appends that one with
      the next turn's tokens.
    """
    rows, slots = cache["mask"].shape
    active = np.ones((rows,), bool) if active is None else active
    max_steps = np.full((rows,), max_new_tokens, np.int32) if max_steps is None else max_steps
    if not _is_count(max_new_tokens, 1):
        raise ValueError(f"max_new_tokens must be an integer >= 1, got {max_new_tokens!r}")
    # Checked on host copies (whole on every process, for arrays placed on a mesh).
    host_mask, host_active, budget = (np.asarray(to_host(x)) for x in (mask, active, max_steps))
    budget = np.broadcast_to(budget, (rows,))
    if (np.ndim(tokens) != 2 or np.shape(tokens)[0] != rows or host_mask.shape != np.shape(tokens)
            or host_active.shape != (rows,)):
        raise ValueError(f"tokens and mask must be [B, A] and active [B] for the cache's B={rows} rows; got "
                         f"{np.shape(tokens)}, {host_mask.shape} and {host_active.shape}")
    if not np.issubdtype(budget.dtype, np.integer) or budget.min() < 1 or budget.max() > max_new_tokens:
        raise ValueError(f"max_steps must be integers in [1, max_new_tokens={max_new_tokens}], got {max_steps!r}")
    if not np.all(host_mask[:, -1] | ~host_active.astype(bool)):
        raise ValueError("the new tokens must be left-padded: mask[:, -1] is False in an active row")
    if np.ndim(max_steps) == 0:
        max_steps = budget
    sampling = Sampling(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p)
    return _extend(params, cache, *(_as_input(x, dtype) for x, dtype in ((tokens, jnp.int32), (mask, bool),
                                                                          (active, bool))),
                   key, _as_input(max_steps, jnp.int32), cfg=cfg, max_new_tokens=max_new_tokens, sampling=sampling,
                   eos_ids=tuple(eos_ids), pad_id=pad_id)


def new_cache(cfg: ModelConfig, batch_size: int, slots: int) -> Cache:
    """An empty cache of `slots` slots for `extend`. The B rows share slot indices: a turn takes
    as many slots as its longest row appends, plus its decoding steps, so rows of different
    lengths leave padding slots. (Slots are not positions: RoPE reads each row's own count of
    real tokens, which `cfg.max_seq_len` bounds.)"""
    if not (_is_count(batch_size, 1) and _is_count(slots, 1)):
        raise ValueError(f"batch_size and slots must be integers >= 1, got {batch_size!r} and {slots!r}")
    return _new_cache(batch_size, slots, cfg=cfg)


@functools.partial(jax.jit, static_argnames=("batch_size", "slots", "cfg"))
def _new_cache(batch_size, slots, *, cfg):
    return _constrain_cache(init_cache(cfg, batch_size, slots))


def grow_cache(cache: Cache, slots: int) -> Cache:
    """The cache with `slots` slots, its contents kept and empty slots appended (a copy: the old
    buffers are freed with the last reference to them). Every decoding step attends over every
    slot, so a conversation's cache is best grown as it lengthens than allocated at its final
    size."""
    extra = slots - cache["mask"].shape[1]
    if not isinstance(slots, (int, np.integer)) or extra < 0:
        raise ValueError(f"cannot grow a cache of {cache['mask'].shape[1]} slots to {slots!r}")
    return _grow_cache(cache, extra=int(extra)) if extra else cache


@functools.partial(jax.jit, static_argnames=("extra",))
def _grow_cache(cache, *, extra):
    def pad(name, x):
        if "cache_length" not in CACHE_AXES[name]:
            return x
        axis = CACHE_AXES[name].index("cache_length")
        return jnp.pad(x, [(0, extra) if a == axis else (0, 0) for a in range(x.ndim)])

    return _constrain_cache(map_arrays(pad, cache))


@functools.partial(jax.jit, static_argnames=("cfg", "max_new_tokens", "sampling", "eos_ids", "pad_id"),
                   donate_argnames=("cache",), compiler_options=_COMPILER_OPTIONS)
def _extend(params, cache, tokens, mask, active, key, max_steps, *, cfg: ModelConfig, max_new_tokens: int,
            sampling: Sampling, eos_ids: tuple[int, ...], pad_id: int) -> tuple[Generation, Cache]:
    cfg, params = per_layer_layout(cfg, params)
    model = Transformer(cfg)
    mask = mask & active[:, None]
    positions = default_positions(mask, cache)
    outputs, cache = model.apply(variables(params), tokens, positions, mask, cache, last_only=True)
    return _decode(model, params, _constrain_cache(cache), outputs["logits"][:, 0], positions[:, -1] + 1, ~active,
                   key, max_new_tokens, max_steps, sampling=sampling, eos_ids=eos_ids, pad_id=pad_id)


def _arguments(cfg, prompt_tokens, prompt_mask, max_new_tokens, temperature, top_k, top_p, eos_ids, num_samples,
               min_p, pad_id):
    """(tokens, mask, the static arguments of `_generate`) of `generate`'s arguments, checked."""
    eos_ids = tuple(eos_ids)
    _validate(cfg, prompt_tokens, prompt_mask, max_new_tokens, eos_ids, num_samples, pad_id)
    static = dict(cfg=cfg, max_new_tokens=max_new_tokens, eos_ids=eos_ids, num_samples=num_samples, pad_id=pad_id,
                  sampling=Sampling(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p))
    return _as_input(prompt_tokens, jnp.int32), _as_input(prompt_mask, bool), static


def _as_input(x, dtype):
    """x as a jit argument of `dtype`: an array, or, for an abstract value, its shape and sharding."""
    if isinstance(x, jax.ShapeDtypeStruct):
        return jax.ShapeDtypeStruct(x.shape, dtype, sharding=x.sharding)
    return jnp.asarray(x, dtype)


def _is_count(x, minimum: int) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool) and x >= minimum


def _validate(cfg, prompt_tokens, prompt_mask, max_new_tokens, eos_ids, num_samples, pad_id):
    """Raises ValueError on arguments that would otherwise fail deep inside XLA or silently."""
    if not cfg.lm_head:
        raise ValueError("generate needs a config with an LM head (lm_head=True)")
    tokens_shape, mask_shape = np.shape(prompt_tokens), np.shape(prompt_mask)
    if len(tokens_shape) != 2 or tokens_shape[0] == 0 or tokens_shape[1] == 0:
        raise ValueError(f"prompt_tokens must be [B, P] with B, P >= 1, got shape {tokens_shape}")
    if mask_shape != tokens_shape:
        raise ValueError(f"prompt_mask shape {mask_shape} differs from prompt_tokens shape "
                         f"{tokens_shape}")
    if not jnp.issubdtype(jnp.result_type(prompt_tokens), jnp.integer):
        raise ValueError(f"prompt_tokens must be integers, got {jnp.result_type(prompt_tokens)}")
    if not _is_count(max_new_tokens, 1):
        raise ValueError(f"max_new_tokens must be an integer >= 1, got {max_new_tokens!r}")
    if not _is_count(num_samples, 1):
        raise ValueError(f"num_samples must be an integer >= 1, got {num_samples!r}")
    prompt_len = tokens_shape[1]
    if prompt_len > cfg.max_seq_len:
        raise ValueError(f"prompts of length {prompt_len} are longer than the model's "
                         f"max_seq_len={cfg.max_seq_len}")
    if prompt_len + max_new_tokens > cfg.max_seq_len:
        raise ValueError(f"prompt length {prompt_len} + max_new_tokens {max_new_tokens} exceeds "
                         f"the model's max_seq_len={cfg.max_seq_len}")
    bad = [e for e in eos_ids if not _is_count(e, 0) or e >= cfg.vocab_size]
    if bad:
        raise ValueError(f"eos_ids must be token ids in [0, {cfg.vocab_size}), got {bad}")
    if not _is_count(pad_id, 0):
        raise ValueError(f"pad_id must be an integer >= 0, got {pad_id!r}")
    # The values are read on the host (a copy, also of a multi-process array), so only those of a
    # concrete mask: a traced or abstract one (`lower`) has none to read.
    if not isinstance(prompt_mask, (jax.core.Tracer, jax.ShapeDtypeStruct)):
        last_column = np.asarray(to_host(prompt_mask))[:, -1]
        if not last_column.all():
            raise ValueError(
                f"prompts must be left-padded: prompt_mask[:, -1] is False in rows "
                f"{np.flatnonzero(~last_column).tolist()} (an empty prompt, or right padding)")


class _Loop(NamedTuple):
    """The decode loop's state; row r of every [R, ...] array is sample r (R = B*n)."""

    token: jax.Array  # [R] int32: the token sampled last, fed to the model next
    live: jax.Array  # [R] bool: that token is real (sampled before the row's EOS), so its cache slot counts
    position: jax.Array  # [R] int32: its RoPE position
    done: jax.Array  # [R] bool: the row has emitted an EOS (or takes no part in this call)
    cache: Cache
    out: Generation  # [R, N] buffers, filled column by column; out.num_steps columns so far


def _constrain_cache(cache: Cache) -> Cache:
    """Shards the cache by its logical axes (a no-op outside `sharding.use_mesh`)."""
    return map_arrays(lambda name, x: nn.with_logical_constraint(x, CACHE_AXES[name]), cache)


def _repeat_rows(cache: Cache, n: int) -> Cache:
    """Each batch row of the cache repeated n times in place (row i -> rows i*n .. i*n+n-1)."""
    if n == 1:
        return cache
    return map_arrays(lambda name, x: jnp.repeat(x, n, axis=CACHE_AXES[name].index("batch"))
                      if "batch" in CACHE_AXES[name] else x, cache)


@functools.partial(jax.jit, static_argnames=("cfg", "max_new_tokens", "sampling", "eos_ids",
                                             "num_samples", "pad_id"),
                   compiler_options=_COMPILER_OPTIONS)
def _generate(params, prompt_tokens, prompt_mask, key, *, cfg: ModelConfig, max_new_tokens: int,
              sampling: Sampling, eos_ids: tuple[int, ...], num_samples: int,
              pad_id: int) -> Generation:
    cfg, params = per_layer_layout(cfg, params)
    model = Transformer(cfg)
    batch, prompt_len = prompt_tokens.shape
    rows, n_new = batch * num_samples, max_new_tokens

    # Prefill: every prompt once, logits at its last position only. The last sampled token is
    # never fed back, so N - 1 slots for generated tokens suffice.
    cache = _constrain_cache(init_cache(cfg, batch, prompt_len + n_new - 1))
    positions = default_positions(prompt_mask)
    outputs, cache = model.apply(variables(params), prompt_tokens, positions, prompt_mask, cache,
                                 last_only=True)
    logits = jnp.repeat(outputs["logits"][:, 0], num_samples, axis=0)  # [R, V]
    cache = _constrain_cache(_repeat_rows(cache, num_samples))
    position = jnp.repeat(positions[:, -1] + 1, num_samples)

    return _decode(model, params, cache, logits, position, jnp.zeros((rows,), bool), key, max_new_tokens,
                   max_new_tokens, sampling=sampling, eos_ids=eos_ids, pad_id=pad_id)[0]


def _decode(model: Transformer, params, cache: Cache, logits, position, done, key, max_new_tokens: int,
            max_steps, *, sampling: Sampling, eos_ids: tuple[int, ...], pad_id: int) -> tuple[Generation, Cache]:
    """The decode loop: samples from `logits` [R, V] (the next-token logits of every row, with
    `position` [R] the next RoPE position), then feeds each sampled token back through the cached
    model; a row stops at an EOS or after `max_steps` tokens (an int, or a traced [R] budget per
    row, each <= `max_new_tokens`), and the loop when every row is `done` ([R] bool at the start:
    rows that take no part, whose outputs are padding). Returns the `Generation` and the cache,
    which holds every fed token; a token sampled after its row's EOS is fed as padding (cache
    mask False), so the cache can be continued (`extend`). The last sampled token of each row is
    fed only if the loop ran on after it."""
    rows, n_new = logits.shape[0], max_new_tokens

    def record(out: Generation, logits, done):
        """Samples the next token from logits [R, V] and writes it into column out.num_steps."""
        step = out.num_steps
        token, logprob, sampling_logprob = sample(logits, jax.random.fold_in(key, step), sampling)
        live = ~done  # rows that have not ended before this token

        def put(buffer, values, fill):
            column = jnp.where(live, values, fill).astype(buffer.dtype)[:, None]
            return jax.lax.dynamic_update_slice(buffer, column, (0, step))

        out = Generation(
            tokens=put(out.tokens, token, pad_id),
            mask=put(out.mask, live, False),
            logprobs=put(out.logprobs, logprob, 0.0),
            sampling_logprobs=(None if sampling_logprob is None
                               else put(out.sampling_logprobs, sampling_logprob, 0.0)),
            num_steps=step + 1,
        )
        ended = functools.reduce(operator.or_, (token == e for e in eos_ids), done | (step + 1 >= max_steps))
        return token, out, ended

    zeros = jnp.zeros((rows, n_new), jnp.float32)
    buffers = Generation(tokens=jnp.full((rows, n_new), pad_id, jnp.int32),
                         mask=jnp.zeros((rows, n_new), bool), logprobs=zeros,
                         sampling_logprobs=None if sampling.is_raw else zeros,
                         num_steps=jnp.zeros((), jnp.int32))
    # Rows are split like the cache's batch (a no-op outside `sharding.use_mesh`).
    buffers = jax.tree.map(lambda x: nn.with_logical_constraint(x, ("batch", "length"))
                           if x.ndim == 2 else x, buffers)
    token, buffers, ended = record(buffers, logits, done)

    def cond(s: _Loop):
        return (s.out.num_steps < n_new) & ~jnp.all(s.done)

    def body(s: _Loop) -> _Loop:
        outputs, cache = model.apply(variables(params), s.token[:, None], s.position[:, None],
                                     s.live[:, None], s.cache)
        token, out, done = record(s.out, outputs["logits"][:, 0], s.done)
        return _Loop(token, ~s.done, s.position + 1, done, cache, out)

    final = jax.lax.while_loop(cond, body, _Loop(token, ~done, position, ended, cache, buffers))
    return final.out, final.cache
