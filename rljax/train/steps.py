"""Train-step factories: pure `step(state, batch, key) -> (state, metrics)` functions.

Batches are dicts of arrays with a leading batch axis B. Per-token arrays are [B, T] and
aligned with `tokens`: entry t belongs to token t (its log-prob is log π(tokens[t] | tokens[<t]),
0 at t = 0). Keys read by every step:
  tokens          [B, T] int32   prompt (left-padded) followed by the completion
  attention_mask  [B, T] bool    True on real tokens (prompt and completion)
  loss_mask       [B, T] bool    True on the tokens the loss is taken over (the completion)
Policy-gradient steps also read what their objective needs (old_logp, ref_logp, advantages...).

Gradient accumulation splits the batch into `micro_batches` along B and sums the gradients of
losses normalised by the full batch's counts (`rljax.losses.global_counts`), so the result
equals one step on the full batch in every aggregation mode.
"""

from __future__ import annotations

import functools
import math
from typing import Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import optax

from rljax import losses, models
from rljax.models.config import ModelConfig
from rljax.train.state import TrainState

Batch = Mapping[str, jax.Array]
# objective(forward outputs, micro-batch, global counts) -> (scalar loss, metrics)
Objective = Callable[["Forward", Batch, dict], tuple[jax.Array, dict]]
Step = Callable[[TrainState, Batch, jax.Array], tuple[TrainState, dict]]


class Forward(NamedTuple):
    """What an objective sees of the networks on a micro-batch; all [B, T] and float32."""

    logp: jax.Array  # log π(tokens[t] | tokens[<t]), 0 at t = 0
    values: jax.Array | None  # critic values V(tokens[<t]), 0 at t = 0 (value head or separate critic)
    entropy: jax.Array | None  # entropy of π(· | tokens[<t]), 0 at t = 0 (when requested)


def shift_right(x: jax.Array) -> jax.Array:
    """Aligns per-position quantities of next-token prediction with the predicted token."""
    return jnp.pad(x, ((0, 0), (1, 0)))


def next_token_logprobs(logits: jax.Array, tokens: jax.Array) -> jax.Array:
    """logits [B, T, V] of tokens [B, T] -> log π(tokens[t] | tokens[<t]), [B, T] (0 at t = 0)."""
    return shift_right(losses.token_logprobs(logits[:, :-1], tokens[:, 1:]))


# ----------------------------------------------------------------------------- fused LM head
#
# A train step needs log π(tokens[t+1] | tokens[<=t]) only where the loss reads it (the completion
# tokens of an RL batch, the answer tokens of SFT), yet the plain path computes the LM head, a
# float32 [B, T, V] logits array, its log-softmax and, in the backward pass, a [B, T, V] cotangent
# at every position. `head_logprobs` applies the head to the final hidden states a block of
# positions at a time, skips the blocks with no position to score, and recomputes each block's
# logits in the backward pass: no [B, T, V] array exists in either pass, and the head's work
# scales with the span of positions scored instead of T. Blocks run along T for every row (the
# batch axis is never reordered, so a batch-sharded step stays batch-sharded).

DEFAULT_HEAD_CHUNK_ROWS = 512  # token rows (B x block length) per block of the fused LM head


def head_weight(cfg: ModelConfig, params) -> jax.Array:
    """The LM head's weight: the tied embedding [V, D], or the untied head's kernel [D, V]."""
    return params["embed"]["embedding"] if cfg.tie_embeddings else params["lm_head"]["kernel"]


def _head_logits(cfg: ModelConfig, w, h):
    """Rows h [R, D] -> logits [R, V] float32, exactly as the model's head computes them (tied: a
    float32-accumulated dot with the embedding; untied: a dot in the compute dtype, then float32;
    Gemma 2's final soft-cap)."""
    dt = cfg.compute_dtype
    if cfg.tie_embeddings:
        z = jnp.einsum("RD,VD->RV", h.astype(dt), w.astype(dt), preferred_element_type=jnp.float32)
    else:
        z = jnp.einsum("RD,DV->RV", h.astype(dt), w.astype(dt)).astype(jnp.float32)
    if cfg.final_softcap is not None:
        z = cfg.final_softcap * jnp.tanh(z / cfg.final_softcap)
    return z


def _block(x, start, length):
    """x[:, start:start+length] of a [B, T, ...] array, flattened to rows [B*length, ...]."""
    x = jax.lax.dynamic_slice_in_dim(x, start, length, axis=1)
    return x.reshape(-1, *x.shape[2:])


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _blocked_head_logprobs(cfg, block, w, h, targets, block_ids, n_blocks):
    return _blocked_head_logprobs_fwd(cfg, block, w, h, targets, block_ids, n_blocks)[0]


def _blocked_head_logprobs_fwd(cfg, block, w, h, targets, block_ids, n_blocks):
    """log softmax(head(h))[targets] [B, T] over the blocks block_ids[:n_blocks] (0 elsewhere)."""
    B, T = targets.shape

    def body(i, carry):
        logp, lse = carry
        start = block_ids[i] * block
        z = _head_logits(cfg, w, _block(h, start, block))
        z_lse = jax.nn.logsumexp(z, axis=-1)
        z_tgt = jnp.take_along_axis(z, _block(targets, start, block)[:, None], axis=-1)[:, 0]
        put = lambda a, x: jax.lax.dynamic_update_slice_in_dim(a, x.reshape(B, block), start, axis=1)  # noqa: E731
        return put(logp, z_tgt - z_lse), put(lse, z_lse)

    zeros = jnp.zeros((B, T), jnp.float32)
    logp, lse = jax.lax.fori_loop(0, n_blocks, body, (zeros, zeros))
    return logp, (w, h, targets, block_ids, n_blocks, lse)


def _blocked_head_logprobs_bwd(cfg, block, residuals, g):
    """d logp_r / d z_r = onehot(target_r) - softmax(z_r), the logits z recomputed block by block;
    then back through the soft-cap and the head."""
    w, h, targets, block_ids, n_blocks, lse = residuals
    dt = cfg.compute_dtype
    B = targets.shape[0]
    V = w.shape[0] if cfg.tie_embeddings else w.shape[1]

    def body(i, carry):
        dh, dw = carry
        start = block_ids[i] * block
        hb, tb = _block(h, start, block), _block(targets, start, block)
        z = _head_logits(cfg, w, hb)
        p = jnp.exp(z - _block(lse, start, block)[:, None])
        onehot = jnp.arange(V, dtype=tb.dtype)[None, :] == tb[:, None]
        dz = _block(g, start, block)[:, None] * (onehot.astype(jnp.float32) - p)
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
        dw = dw + jnp.einsum("RV,RD->VD", dz, hb.astype(dt), preferred_element_type=jnp.float32)
        dh = jax.lax.dynamic_update_slice_in_dim(dh, dhb.reshape(B, block, -1).astype(dh.dtype), start, axis=1)
        return dh, dw

    dh, dw = jax.lax.fori_loop(0, n_blocks, body, (jnp.zeros_like(h), jnp.zeros((V, h.shape[-1]), jnp.float32)))
    dw = (dw if cfg.tie_embeddings else dw.T).astype(w.dtype)
    return dw, dh, None, None, None


_blocked_head_logprobs.defvjp(_blocked_head_logprobs_fwd, _blocked_head_logprobs_bwd)


def head_logprobs(cfg: ModelConfig, params, hidden: jax.Array, tokens: jax.Array, where: jax.Array | None = None,
                  chunk_rows: int = DEFAULT_HEAD_CHUNK_ROWS) -> jax.Array:
    """log π(tokens[t] | tokens[<t]) [B, T] float32 (0 at t = 0) from the final hidden states
    hidden [B, T, D] (`models.forward(...).hidden`), the LM head applied block by block.

    With `where` [B, T], only the positions where it is True are computed (0 elsewhere), and
    blocks of about `chunk_rows` token rows (B x block length) with no such position are skipped in
    both passes. The values and gradients are those of `next_token_logprobs` on the model's logits.
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
    logp = _blocked_head_logprobs(cfg, block, head_weight(cfg, params), h, targets, block_ids, n_live)
    return jnp.where(scored, logp, 0.0)[:, :T]


def run_networks(cfg: ModelConfig, params, batch: Batch, critic_cfg: ModelConfig | None = None,
                 with_entropy: bool = False, logp_where: jax.Array | None = None) -> Forward:
    """One forward pass of the policy (and the critic, when separate) on a batch.

    With `critic_cfg`, params is {"policy": ..., "critic": ...}; otherwise values come from the
    policy's own value head (shared trunk) when `cfg.value_head` is set.

    With `logp_where` [B, T] (and no entropy), logp is computed only where it is True and is 0
    elsewhere, by the fused LM head (`head_logprobs`), which never forms the [B, T, V] logits:
    what a step whose loss reads logp on its loss mask only needs.
    """
    policy_params = params["policy"] if critic_cfg is not None else params
    out = models.forward(cfg, policy_params, batch["tokens"], mask=batch["attention_mask"])
    if logp_where is not None and not with_entropy:
        logp = head_logprobs(cfg, policy_params, out.hidden, batch["tokens"], logp_where)
    else:
        logp = next_token_logprobs(out.logits, batch["tokens"])
    entropy = shift_right(losses.entropy(out.logits[:, :-1])) if with_entropy else None
    values = out.values
    if critic_cfg is not None:
        values = models.forward(critic_cfg, params["critic"], batch["tokens"], mask=batch["attention_mask"]).values
    return Forward(logp, None if values is None else state_values(values), entropy)


def state_values(values: jax.Array) -> jax.Array:
    """Per-token value-head outputs [B, T] (V after reading token t) -> the value of the state in
    which token t is chosen, V(tokens[<t]), [B, T]: what PPO's advantage of token t subtracts."""
    return shift_right(values[:, :-1])


def _split(batch: Batch, micro_batches: int) -> Batch:
    def split(x):
        if x.shape[0] % micro_batches:
            raise ValueError(f"batch size {x.shape[0]} is not divisible by micro_batches={micro_batches}")
        return x.reshape(micro_batches, x.shape[0] // micro_batches, *x.shape[1:])

    return jax.tree.map(split, dict(batch))


def accumulate_gradients(loss_fn, params, batch: Batch, micro_batches: int):
    """Sums `jax.grad(loss_fn)` over micro-batches with `lax.scan` (one compiled body).

    loss_fn(params, micro_batch) -> (loss, metrics) must already be normalised by the global
    counts, so that summing over micro-batches gives the full-batch loss and gradient. Metrics are
    averaged over micro-batches.
    """
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    if micro_batches == 1:
        (loss, metrics), grads = grad_fn(params, batch)
        return loss, metrics, grads

    def body(carry, micro_batch):
        loss_sum, grad_sum = carry
        (loss, metrics), grads = grad_fn(params, micro_batch)
        return (loss_sum + loss, jax.tree.map(jnp.add, grad_sum, grads)), metrics

    zeros = jax.tree.map(jnp.zeros_like, params)
    (loss, grads), metrics = jax.lax.scan(body, (jnp.zeros((), jnp.float32), zeros), _split(batch, micro_batches))
    return loss, jax.tree.map(lambda m: jnp.mean(m, axis=0), metrics), grads


def _update(state: TrainState, optimizer, loss, metrics, grads) -> tuple[TrainState, dict]:
    """Applies the gradients, unless the loss or a gradient is not finite: then the whole state
    (params, optimiser moments, step) is kept as it was, so one bad batch cannot poison Adam's
    moments, and the step reports `nonfinite` = 1 for the loop to count (`faults.NonFiniteGuard`)."""
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)  # the norm is NaN/inf iff some gradient is
    updated = state.apply_gradients(grads, optimizer)
    state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), updated, state)
    metrics = {**metrics, "loss": loss, "grad_norm": grad_norm, "nonfinite": 1.0 - finite.astype(jnp.float32)}
    return state, metrics


def make_sft_step(cfg: ModelConfig, optimizer: optax.GradientTransformation, micro_batches: int = 1,
                  agg: str = "token-mean") -> Step:
    """Supervised fine-tuning: masked negative log-likelihood of the `loss_mask` tokens."""

    def step(state: TrainState, batch: Batch, key: jax.Array):
        del key  # deterministic
        counts = losses.global_counts(batch["loss_mask"])

        def loss_fn(params, mb):
            hidden = models.forward(cfg, params, mb["tokens"], mask=mb["attention_mask"]).hidden
            logp = head_logprobs(cfg, params, hidden, mb["tokens"], mb["loss_mask"])
            return losses.sft_loss(logp, mb["loss_mask"], agg=agg, **counts)

        loss, metrics, grads = accumulate_gradients(loss_fn, state.params, batch, micro_batches)
        return _update(state, optimizer, loss, metrics, grads)

    return step


def make_policy_step(cfg: ModelConfig, optimizer: optax.GradientTransformation, objective: Objective,
                     micro_batches: int = 1, critic_cfg: ModelConfig | None = None,
                     with_entropy: bool = False) -> Step:
    """A step for any policy-gradient objective built from `rljax.losses` (see `objectives.py`),
    PPO with a critic included: the critic is the policy's value head (shared trunk) or, with
    `critic_cfg`, a separate network whose params sit beside the policy's in `state.params`."""

    def step(state: TrainState, batch: Batch, key: jax.Array):
        del key  # the objectives are deterministic given the batch
        counts = losses.global_counts(batch["loss_mask"])

        def loss_fn(params, mb):
            # The objectives read logp on the loss mask only (see `objectives.py`).
            fwd = run_networks(cfg, params, mb, critic_cfg, with_entropy, logp_where=mb["loss_mask"])
            return objective(fwd, mb, counts)

        loss, metrics, grads = accumulate_gradients(loss_fn, state.params, batch, micro_batches)
        return _update(state, optimizer, loss, metrics, grads)

    return step
