"""The networks an RL learner trains and reads, and their forward pass on a batch.

A learner's state splits its parameters in two (`TrainState.params`, `TrainState.frozen`):

                 full fine-tuning                       LoRA (`cfg.lora_rank` > 0)
  trainable      {"policy": the policy's params}        {"policy": the adapters}
                 + {"critic": ...} for a separate critic network
  frozen         {"reference": π_ref} with a KL, else {} {"base": the base model, also π_ref}

(a value head on the policy's trunk lives inside the policy's params). `Networks` is the static
description that says how to read them: the policy's params for a forward pass (for LoRA, the
base with the adapters, `rljax.models.lora`), the reference's, the critic's.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from rljax import models
from rljax.models import lora
from rljax.models.config import ModelConfig
from rljax.models.head import head_logprobs
from rljax.train.state import TrainState


class Forward(NamedTuple):
    """What the objective sees of the networks on a batch; all [B, T] float32, aligned with the
    tokens (entry t: log π(tokens[t] | tokens[<t]), its entropy, V(tokens[<t])), 0 at t = 0 and
    wherever the pass was not asked to score."""

    logp: jax.Array
    entropy: jax.Array
    values: jax.Array  # zeros without a critic


def state_values(values: jax.Array) -> jax.Array:
    """Per-token value-head outputs [B, T] (V after reading token t) -> the value of the state in
    which token t is chosen, V(tokens[<t]), [B, T]: what the advantage of token t subtracts."""
    return jnp.pad(values[:, :-1], ((0, 0), (1, 0)))


@dataclasses.dataclass(frozen=True)
class Networks:
    """The policy `cfg` (with `value_head` for a shared-trunk critic; with `lora_rank` > 0 for
    adapters on a frozen base) and an optional separate critic network `critic_cfg` (e.g. one
    initialised from a reward model)."""

    cfg: ModelConfig
    critic_cfg: ModelConfig | None = None

    def __post_init__(self):
        if self.adapters and self.cfg.value_head:
            raise ValueError("LoRA trains adapters only, so a value head on the frozen trunk would not learn: "
                             "give PPO a separate critic network (critic_cfg) instead")

    @property
    def adapters(self) -> bool:
        return self.cfg.lora_rank > 0

    @property
    def has_critic(self) -> bool:
        return self.critic_cfg is not None or self.cfg.value_head

    def init_state(self, optimizer, key: jax.Array, policy_params, critic_params=None,
                   reference_params=None) -> TrainState:
        """The learner's state for `optimizer`: trainable and frozen trees (module docstring) from
        the policy's params (with LoRA, the base and its adapters), the critic's and the KL's
        reference (none without a KL; the base itself with LoRA)."""
        if (critic_params is None) != (self.critic_cfg is None):
            raise ValueError("critic params go with a critic config, and only with one")
        if self.adapters:
            base, adapters = lora.split(policy_params)
            if adapters is None:
                raise ValueError(f"a LoRA policy's params carry their adapters under {models.ADAPTERS!r}: "
                                 "add lora.init_adapters(cfg, key)")
            trainable, frozen = {"policy": adapters}, {"base": base}
        else:
            trainable, frozen = {"policy": policy_params}, {} if reference_params is None else {
                "reference": reference_params}
        if critic_params is not None:
            trainable["critic"] = critic_params
        return TrainState.create(trainable, optimizer, key, frozen)

    def policy_params(self, params, frozen) -> Any:
        """The params of a forward pass of the policy (the adapters with their base)."""
        if self.adapters:
            return {**frozen["base"], models.ADAPTERS: params["policy"]}
        return params["policy"]

    def reference_params(self, frozen) -> Any:
        return frozen["base"] if self.adapters else frozen["reference"]

    def generation_params(self, params, frozen) -> Any:
        """The policy's params for sampling: with LoRA the adapters merged into the base, so that
        decoding runs at the base's speed (once per rollout instead of two products per token)."""
        policy = self.policy_params(params, frozen)
        return lora.merge(self.cfg, policy) if self.adapters else policy

    def param_axes(self) -> dict:
        """Logical axes of the trainable tree (`rljax.train.sharded.state_shardings`)."""
        axes = {"policy": lora.adapter_axes(self.cfg) if self.adapters else models.param_axes(self.cfg)}
        return axes | ({} if self.critic_cfg is None else {"critic": models.param_axes(self.critic_cfg)})

    def frozen_axes(self, frozen) -> dict:
        return {name: models.param_axes(self.cfg) for name in frozen}

    def forward(self, params, frozen, tokens, attention_mask, where) -> Forward:
        """One pass of the policy (and the critic) over tokens [B, T]: log-probs and entropies at
        the positions where `where` [B, T] is True, by the fused LM head (no [B, T, V] array)."""
        policy = self.policy_params(params, frozen)
        out = models.forward(self.cfg, policy, tokens, mask=attention_mask)
        logp, entropy = head_logprobs(self.cfg, policy, out.hidden, tokens, where, with_entropy=True)
        values = out.values
        if self.critic_cfg is not None:
            values = models.forward(self.critic_cfg, params["critic"], tokens, mask=attention_mask).values
        values = jnp.zeros_like(logp) if values is None else state_values(values)
        return Forward(logp, entropy, jnp.where(where, values, 0.0))

    def reference_logp(self, frozen, tokens, attention_mask, where) -> jax.Array:
        """log π_ref(tokens[t] | tokens[<t]) [B, T] where `where` is True (0 elsewhere)."""
        ref = self.reference_params(frozen)
        hidden = models.forward(self.cfg, ref, tokens, mask=attention_mask).hidden
        return head_logprobs(self.cfg, ref, hidden, tokens, where)
