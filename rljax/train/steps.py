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


def sequence_logprobs(cfg: ModelConfig, params, tokens: jax.Array, attention_mask: jax.Array) -> jax.Array:
    """log π(tokens[t] | tokens[<t]) for every t, [B, T] float32 (0 at t = 0)."""
    logits, _ = models.apply(cfg, params, tokens, mask=attention_mask)
    return next_token_logprobs(logits, tokens)


def run_networks(cfg: ModelConfig, params, batch: Batch, critic_cfg: ModelConfig | None = None,
                 with_entropy: bool = False) -> Forward:
    """One forward pass of the policy (and the critic, when separate) on a batch.

    With `critic_cfg`, params is {"policy": ..., "critic": ...}; otherwise values come from the
    policy's own value head (shared trunk) when `cfg.value_head` is set.
    """
    policy_params = params["policy"] if critic_cfg is not None else params
    out = models.forward(cfg, policy_params, batch["tokens"], mask=batch["attention_mask"])
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
    metrics = {**metrics, "loss": loss, "grad_norm": optax.tree.norm(grads)}
    return state.apply_gradients(grads, optimizer), metrics


def make_sft_step(cfg: ModelConfig, optimizer: optax.GradientTransformation, micro_batches: int = 1,
                  agg: str = "token-mean") -> Step:
    """Supervised fine-tuning: masked negative log-likelihood of the `loss_mask` tokens."""

    def step(state: TrainState, batch: Batch, key: jax.Array):
        del key  # deterministic
        counts = losses.global_counts(batch["loss_mask"])

        def loss_fn(params, mb):
            logp = sequence_logprobs(cfg, params, mb["tokens"], mb["attention_mask"])
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
            return objective(run_networks(cfg, params, mb, critic_cfg, with_entropy), mb, counts)

        loss, metrics, grads = accumulate_gradients(loss_fn, state.params, batch, micro_batches)
        return _update(state, optimizer, loss, metrics, grads)

    return step
