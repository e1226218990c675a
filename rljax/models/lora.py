"""LoRA: low-rank adapters on the transformer's projections, as plain pytrees.

Hu et al. 2021, "LoRA: low-rank adaptation of large language models": a frozen weight W of a
projection y = x·W is adapted as

    y = x·W + (α/r)·(x·A)·B,      A [in..., r],  B [r, out...],  B = 0 at the start,

so the adapted model starts exactly as the base, and only A and B (r·(in + out) numbers per
projection) get gradients and optimiser state. The adapters of a model are one pytree that
mirrors the module paths of the projections they adapt ({"layers_0": {"attn": {"q": {"a", "b"}}}}
and so on; stacked over layers under `scan_layers`). A policy's params carry them under the
`models.ADAPTERS` key, beside the base params, so every function that takes params (`apply`,
`forward`, `generate`) runs the adapted model; `merge` folds them into the base weights (one
product per projection) for generation at full speed and for export.

    cfg = lora.with_lora(base_cfg, rank=8, alpha=16)              # which projections, which rank
    policy = {**base_params, models.ADAPTERS: lora.init_adapters(cfg, key)}
    logits, _ = models.apply(cfg, policy, tokens)                 # = the base's at the start
    merged = lora.merge(cfg, policy)                              # plain params, same logits

Why not qwix (Google's quantisation and LoRA library, which Tunix uses): its LoRA intercepts the
einsums inside a Flax module's call and adds `<name>_lora_a/_lora_b` parameters next to each
kernel, in the same "params" collection. rljax's trainer keeps trainable and frozen parameters in
separate trees (the adapters train, the base rides frozen in the state), and its generation,
fused LM head and checkpoints take plain pytrees; a Linen variable collection of our own gives
that split directly, with the low-rank path written out in `transformer.Linear`.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from rljax.models.api import ADAPTERS, _init_variables
from rljax.models.config import LORA_TARGETS, ModelConfig


def with_lora(cfg: ModelConfig, rank: int, alpha: float = 16.0, targets=LORA_TARGETS) -> ModelConfig:
    """`cfg` with adapters of rank `rank` and scale α/r on the projections `targets` (of
    q, k, v, o, gate, up, down); ValueError naming the problem for a rank < 1 or an unknown target."""
    if not isinstance(rank, int) or rank < 1:
        raise ValueError(f"LoRA rank={rank!r}: a rank is an integer >= 1")
    targets = tuple(targets)
    if not targets:
        raise ValueError(f"LoRA needs at least one target projection; choose from {LORA_TARGETS}")
    return cfg.replace(lora_rank=rank, lora_alpha=float(alpha), lora_targets=targets)


def _check(cfg: ModelConfig) -> None:
    if not cfg.lora_rank:
        raise ValueError("this config has no adapters: make it with lora.with_lora(cfg, rank, ...)")


@functools.partial(jax.jit, static_argnums=0)
def init_adapters(cfg: ModelConfig, key: jax.Array) -> dict:
    """Fresh adapters of `cfg` (A ~ N(0, 1/fan_in), B = 0), float32."""
    _check(cfg)
    return nn.meta.unbox(_init_variables(cfg, key)[ADAPTERS])


def adapter_axes(cfg: ModelConfig) -> dict:
    """The adapters' logical axes (A: its projection's input axes, then the rank; B: the rank,
    then the output axes), a pytree like `init_adapters`'s."""
    _check(cfg)
    boxed = jax.eval_shape(functools.partial(_init_variables, cfg), jax.random.PRNGKey(0))
    return nn.get_partition_spec(boxed)[ADAPTERS]


def split(params: dict) -> tuple[dict, dict | None]:
    """(base params, adapters or None) of a policy's params."""
    return {k: v for k, v in params.items() if k != ADAPTERS}, params.get(ADAPTERS)


def _delta(a: jax.Array, b: jax.Array, stacked: bool) -> jax.Array:
    """A [(L,) in..., r] · B [(L,) r, out...] -> [(L,) in..., out...]."""
    product = functools.partial(jnp.tensordot, axes=([-1], [0]))
    return jax.vmap(product)(a, b) if stacked else product(a, b)


def merge(cfg: ModelConfig, params: dict) -> dict:
    """The base params with each adapted kernel replaced by W + (α/r)·A·B, in W's dtype, and no
    adapters: a plain model with the adapted model's outputs (exact up to float rounding)."""
    base, adapters = split(params)
    if adapters is None:
        return base
    scale = cfg.lora_alpha / cfg.lora_rank

    def fold(base_node: dict, adapter_node: dict) -> dict:
        if set(adapter_node) == {"a", "b"}:  # a projection: {"kernel", ...} and its A, B
            kernel = base_node["kernel"]
            delta = _delta(adapter_node["a"].astype(jnp.float32), adapter_node["b"].astype(jnp.float32),
                           cfg.scan_layers)
            return {**base_node, "kernel": (kernel.astype(jnp.float32) + scale * delta).astype(kernel.dtype)}
        return {k: fold(v, adapter_node[k]) if k in adapter_node else v for k, v in base_node.items()}

    return fold(base, adapters)
