"""Optimiser factory: AdamW behind global-norm clipping, with a warmup + decay schedule."""

from __future__ import annotations

from typing import Literal

import optax

LR_DECAYS = ("constant", "cosine", "linear")


def learning_rate_schedule(
    learning_rate: float,
    total_steps: int,
    warmup_steps: int = 0,
    decay: Literal["constant", "cosine", "linear"] = "constant",
    final_fraction: float = 0.0,
) -> optax.Schedule:
    """Linear warmup from 0 over `warmup_steps`, then constant, cosine or linear decay to
    `final_fraction * learning_rate` at `total_steps`."""
    if decay not in LR_DECAYS:
        raise ValueError(f"unknown decay {decay!r}; choose constant, cosine or linear")
    decay_steps = max(total_steps - warmup_steps, 1)
    if decay == "constant":
        after = optax.constant_schedule(learning_rate)
    elif decay == "cosine":
        after = optax.cosine_decay_schedule(learning_rate, decay_steps, alpha=final_fraction)
    else:
        after = optax.linear_schedule(learning_rate, learning_rate * final_fraction, decay_steps)
    if warmup_steps <= 0:
        return after
    warmup = optax.linear_schedule(0.0, learning_rate, warmup_steps)
    return optax.join_schedules([warmup, after], [warmup_steps])


def make_optimizer(
    learning_rate: float = 1e-5,
    total_steps: int = 1000,
    warmup_steps: int = 0,
    decay: Literal["constant", "cosine", "linear"] = "constant",
    final_fraction: float = 0.0,
    weight_decay: float = 0.0,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    clip_norm: float | None = 1.0,
) -> optax.GradientTransformation:
    """clip_by_global_norm(clip_norm) followed by AdamW (Loshchilov & Hutter 2019), its learning
    rate `learning_rate_schedule`'s."""
    schedule = learning_rate_schedule(learning_rate, total_steps, warmup_steps, decay, final_fraction)
    adamw = optax.adamw(schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)
    if clip_norm is None:
        return adamw
    return optax.chain(optax.clip_by_global_norm(clip_norm), adamw)
