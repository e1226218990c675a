"""The LM head: final hidden states -> next-token logits, and the fused head of the train steps.

`head_logits` is the one definition of the head; the transformer computes its logits with it,
and `head_logprobs` applies it block by block.

A train step needs log π(tokens[t+1] | tokens[<=t]) only where the loss reads it (the completion
tokens of an RL batch, the answer tokens of SFT), yet the plain path computes the LM head, a
float32 [B, T, V] logits array, its log-softmax and, in the backward pass, a [B, T, V] cotangent
at every position. `head_logprobs` applies the head to the final hidden states a block of
positions at a time, skips the blocks with no position to score, and recomputes each block's
logits in the backward pass: no [B, T, V] array exists in either pass, and the head's work
scales with the span of positions scored instead of T. Blocks run along T for every row (the
batch axis is never reordered, so a batch-sharded step stays batch-sharded). The entropy of each
scored position's next-token distribution (a metric, or an entropy bonus) comes from the same
blocks' logits.

Shapes: B batch, T tokens, D model, V vocab, R token rows (a block's B x block length, flattened).
"""

from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from rljax import losses
from rljax.models.config import ModelConfig

DEFAULT_HEAD_CHUNK_ROWS = 512  # token rows (B x block length) per block of the fused LM head


def head_weight(cfg: ModelConfig, params) -> jax.Array:
    """The LM head's weight: the tied embedding [V, D], or the untied head's kernel [D, V]."""
    return params["embed"]["embedding"] if cfg.tie_embeddings else params["lm_head"]["kernel"]


def head_logits(cfg: ModelConfig, weight: jax.Array, hidden: jax.Array) -> jax.Array:
    """hidden h [..., D] -> logits z [..., V] float32:

        u = h·Eᵀ (tied: weight E [V, D], the embedding)  or  u = h·W (untied: weight W [D, V]);
        z = c·tanh(u / c) with c = `cfg.final_softcap` (Gemma 2), z = u without it.

    The product is taken in the compute dtype: tied, accumulated in float32; untied, in the
    compute dtype and then cast to float32 (XLA may skip rounding the dot's result to a bfloat16
    compute dtype before the cast, and does on CPU). The leading axes are flattened into one row axis
    (see `transformer._einsum_rows`: on CPU, the weight's gradient then contracts one row axis).
    """
    dt = cfg.compute_dtype
    lead = hidden.shape[:-1]
    h = hidden.reshape(-1, hidden.shape[-1]).astype(dt)
    if cfg.tie_embeddings:
        z = jnp.einsum("RD,VD->RV", h, weight.astype(dt), preferred_element_type=jnp.float32)
    else:
        z = jnp.einsum("RD,DV->RV", h, weight.astype(dt)).astype(jnp.float32)
    if cfg.final_softcap is not None:
        z = cfg.final_softcap * jnp.tanh(z / cfg.final_softcap)
    return z.reshape(*lead, z.shape[-1])


def _onehot(targets, V: int) -> jax.Array:
    """[R] ids -> [R, V] bool, True at each row's id."""
    return jnp.arange(V, dtype=targets.dtype)[None, :] == targets[:, None]


# Under `rljax.sharding.use_mesh`, the head is vocabulary-parallel (a no-op outside it): a block's
# logits [R, V] are split along V like the weight (`rljax.sharding.RULES`: 'vocab'), the rows
# over what is left of the batch axes, and the float32 accumulator of the weight's gradient
# [V, D] is split along V too, so no device gathers the whole [V, D] weight or holds its whole
# gradient; the per-row reductions over V (log-sum-exp, target logit, entropy) and the hidden
# states' gradient are what cross the devices.
def _constrain_logits(z: jax.Array) -> jax.Array:
    return nn.with_logical_constraint(z, ("batch", "vocab"))


def _constrain_vd(x: jax.Array) -> jax.Array:
    return nn.with_logical_constraint(x, ("vocab", "embed"))


def _block(x, start, length):
    """x[:, start:start+length] of a [B, T, ...] array, flattened to rows [B*length, ...]."""
    x = jax.lax.dynamic_slice_in_dim(x, start, length, axis=1)
    return x.reshape(-1, *x.shape[2:])


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _blocked_head(cfg, block, with_entropy, w, h, targets, block_ids, n_blocks):
    return _blocked_head_fwd(cfg, block, with_entropy, w, h, targets, block_ids, n_blocks)[0]


def _blocked_head_fwd(cfg, block, with_entropy, w, h, targets, block_ids, n_blocks):
    """Over the blocks block_ids[:n_blocks] (0 elsewhere), with z = head(h) [B, T, V]:
    logp = z[targets] − lse(z), [B, T]; with_entropy: also H = −Σ_v p_v log p_v, p = softmax(z).
    Residuals: lse, and H with the entropy."""
    B, T = targets.shape

    def body(i, carry):
        start = block_ids[i] * block
        z = _constrain_logits(head_logits(cfg, w, _block(h, start, block)))
        z_lse = jax.nn.logsumexp(z, axis=-1)
        # The target's logit as a masked sum (exact: one term is not zero), which stays local to
        # a vocabulary shard where a gather along V would collect the whole block of logits.
        z_tgt = jnp.sum(jnp.where(_onehot(_block(targets, start, block), z.shape[-1]), z, 0.0), axis=-1)
        new = (z_tgt - z_lse, z_lse)
        if with_entropy:
            log_p = z - z_lse[:, None]
            new += (-jnp.sum(jnp.exp(log_p) * log_p, axis=-1),)
        put = lambda a, x: jax.lax.dynamic_update_slice_in_dim(a, x.reshape(B, block), start, axis=1)  # noqa: E731
        return tuple(put(a, x) for a, x in zip(carry, new))

    zeros = jnp.zeros((B, T), jnp.float32)
    logp, lse, *entropy = jax.lax.fori_loop(0, n_blocks, body, (zeros,) * (3 if with_entropy else 2))
    entropy = entropy[0] if with_entropy else None
    out = (logp, entropy) if with_entropy else logp
    return out, (w, h, targets, block_ids, n_blocks, lse, entropy)


def _blocked_head_bwd(cfg, block, with_entropy, residuals, g):
    """With g_logp, g_H the cotangents of logp and H, per row, the logits z recomputed block by block:

        d logp / dz = onehot(target) − p,      dH / dz = −p ⊙ (log p + H),

    so dz = g_logp·(onehot − p) − g_H·p ⊙ (log p + H); then back through the soft-cap and the head."""
    w, h, targets, block_ids, n_blocks, lse, entropy = residuals
    g_logp, g_entropy = g if with_entropy else (g, None)
    dt = cfg.compute_dtype
    B = targets.shape[0]
    V = w.shape[0] if cfg.tie_embeddings else w.shape[1]

    def body(i, carry):
        dh, dw = carry
        start = block_ids[i] * block
        hb, tb = _block(h, start, block), _block(targets, start, block)
        z = _constrain_logits(head_logits(cfg, w, hb))
        log_p = z - _block(lse, start, block)[:, None]
        p = jnp.exp(log_p)
        dz = _block(g_logp, start, block)[:, None] * (_onehot(tb, V).astype(jnp.float32) - p)
        if with_entropy:
            dz = dz - _block(g_entropy, start, block)[:, None] * p * (log_p + _block(entropy, start, block)[:, None])
        if cfg.final_softcap is not None:  # z = c·tanh(raw / c): dz/draw = 1 - (z / c)²
            dz = dz * (1.0 - jnp.square(z / cfg.final_softcap))
        dz = dz.astype(dt)
        if cfg.tie_embeddings:
            dhb = jnp.einsum("RV,VD->RD", dz, w.astype(dt), preferred_element_type=jnp.float32)
        else:
            dhb = jnp.einsum("RV,DV->RD", dz, w.astype(dt), preferred_element_type=jnp.float32)
        # The weight's gradient is accumulated as [V, D] with the [R, V] block as the left operand:
        # on CPU, XLA copies the right operand of a dot contracted over its leading axis into a
        # transposed layout, and that copy should be of the [R, D] block, not the [R, V] one.
        dw = _constrain_vd(dw + jnp.einsum("RV,RD->VD", dz, hb.astype(dt), preferred_element_type=jnp.float32))
        dh = jax.lax.dynamic_update_slice_in_dim(dh, dhb.reshape(B, block, -1).astype(dh.dtype), start, axis=1)
        return dh, dw

    dw = _constrain_vd(jnp.zeros((V, h.shape[-1]), jnp.float32))
    dh, dw = jax.lax.fori_loop(0, n_blocks, body, (jnp.zeros_like(h), dw))
    dw = (dw if cfg.tie_embeddings else dw.T).astype(w.dtype)
    return dw, dh, None, None, None


_blocked_head.defvjp(_blocked_head_fwd, _blocked_head_bwd)


def head_logprobs(cfg: ModelConfig, params, hidden: jax.Array, tokens: jax.Array, where: jax.Array | None = None,
                  chunk_rows: int = DEFAULT_HEAD_CHUNK_ROWS, with_entropy: bool = False):
    """log π(tokens[t] | tokens[<t]) [B, T] float32 (0 at t = 0) from the final hidden states
    hidden [B, T, D] (`models.forward(...).hidden`), the LM head applied block by block:

        logp[b, t] = z[b, t−1, tokens[b, t]] − logsumexp_v z[b, t−1, v],   z = head_logits(hidden).

    With `where` [B, T], only the positions where it is True are computed (0 elsewhere), and
    blocks of about `chunk_rows` token rows (B x block length) with no such position are skipped in
    both passes. The values and gradients are those of `next_token_logprobs` on the model's logits.

    With `with_entropy`, returns (logp, entropy): entropy [B, T] float32 is that of π(· | tokens[<t]),
    H[b, t] = −Σ_v p_v log p_v with p = softmax(z[b, t−1]), aligned and masked like logp
    (0 at t = 0 and where `where` is False), differentiable, from the same blocks of logits.
    """
    B, T, _ = hidden.shape
    block = max(1, min(T, chunk_rows // B))
    n_total = math.ceil(T / block)
    pad = n_total * block - T
    # Blocks run over the scored token t, whose log-prob comes from the hidden state at t - 1:
    # the hidden states shifted by one (a zero row at t = 0, which is never scored), so that a
    # block of completion tokens does not reach back into the prompt's last block.
    h = jnp.pad(hidden[:, :-1], ((0, 0), (1, pad), (0, 0)))
    targets = jnp.pad(tokens, ((0, 0), (0, pad)))
    scored = jnp.ones((B, T), bool) if where is None else jnp.asarray(where, bool)
    scored = jnp.pad(scored.at[:, 0].set(False), ((0, 0), (0, pad)))
    live = jnp.any(scored.reshape(B, n_total, block), axis=(0, 2))
    block_ids = jnp.argsort(~live, stable=True).astype(jnp.int32)  # the live blocks first
    n_live = jnp.sum(live, dtype=jnp.int32)
    out = _blocked_head(cfg, block, with_entropy, head_weight(cfg, params), h, targets, block_ids, n_live)
    keep = lambda x: jnp.where(scored, x, 0.0)[:, :T]  # noqa: E731
    return tuple(map(keep, out)) if with_entropy else keep(out)


def next_token_logprobs(logits: jax.Array, tokens: jax.Array) -> jax.Array:
    """The unfused path, from whole logits [B, T, V] of tokens [B, T]: log π(tokens[t] | tokens[<t])
    [B, T] (0 at t = 0), the reference `head_logprobs` equals."""
    return jnp.pad(losses.token_logprobs(logits[:, :-1], tokens[:, 1:]), ((0, 0), (1, 0)))


def next_token_entropy(logits: jax.Array) -> jax.Array:
    """The entropy of π(· | tokens[<t]) [B, T] (0 at t = 0) from whole logits [B, T, V]."""
    return jnp.pad(losses.entropy(logits[:, :-1]), ((0, 0), (1, 0)))
