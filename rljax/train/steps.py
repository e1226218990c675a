"""The gradient machinery every train step shares, and the SFT step.

A step is a pure `step(state, batch, key) -> (state, metrics)`. Batches are pytrees (dicts, or
the learner's typed batches) of arrays with a leading batch axis B; per-token arrays are [B, T]
and aligned with `tokens`: entry t belongs to token t (its log-prob is
log π(tokens[t] | tokens[<t]), 0 at t = 0). The keys of a supervised batch:
  tokens          [B, T] int32   prompt followed by the answer
  attention_mask  [B, T] bool    True on real tokens
  loss_mask       [B, T] bool    True on the tokens the loss is taken over (the answer)

Gradient accumulation (`accumulate_gradients`) splits the batch into `micro_batches` along B and
sums the gradients of losses normalised by the full batch's counts (`rljax.losses.global_counts`),
so the result equals one step on the full batch in every aggregation mode. `apply_update`
applies them unless they are not finite. The RL learner (`rljax.train.learner`), the preference
and the reward-model steps are built from the same two pieces.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import optax

from rljax import losses, models
from rljax.models.config import ModelConfig
from rljax.models.head import head_logprobs
from rljax.train.state import TrainState

Batch = Mapping[str, jax.Array]
Step = Callable[[TrainState, Any, jax.Array], tuple[TrainState, dict]]


def split_micro_batches(batch: Any, micro_batches: int) -> Any:
    """Every [B, ...] leaf of `batch` as [micro_batches, B / micro_batches, ...]."""
    def split(x):
        if x.shape[0] % micro_batches:
            raise ValueError(f"batch size {x.shape[0]} is not divisible by micro_batches={micro_batches}")
        return x.reshape(micro_batches, x.shape[0] // micro_batches, *x.shape[1:])

    return jax.tree.map(split, batch)


def accumulate_gradients(loss_fn, params, batch: Any, micro_batches: int):
    """Sums `jax.grad(loss_fn)` over micro-batches with `lax.scan` (one compiled body).

    loss_fn(params, micro_batch) -> (loss, metrics) must already be normalised by the global
    counts, so that summing over micro-batches gives the full-batch loss and gradient. Metrics are
    averaged over micro-batches. `batch` is any pytree of [B, ...] arrays.
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
    (loss, grads), metrics = jax.lax.scan(body, (jnp.zeros((), jnp.float32), zeros),
                                          split_micro_batches(batch, micro_batches))
    return loss, jax.tree.map(lambda m: jnp.mean(m, axis=0), metrics), grads


def apply_update(state: TrainState, optimizer, loss, metrics, grads) -> tuple[TrainState, dict]:
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
        return apply_update(state, optimizer, loss, metrics, grads)

    return step
