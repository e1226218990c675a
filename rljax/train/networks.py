"""The networks an RL learner trains and reads, and their forward pass on a batch.

A learner's state splits its parameters in two (`TrainState.params`, `TrainState.frozen`):

  trainable  {"policy": policy params} and, for a separate critic, {"critic": critic params}
             (a value head on the policy's trunk lives inside the policy's params);
  frozen     {"reference": π_ref's params} when a KL penalty needs one, else {}.

`Networks` is the static description (configs) that says how to read them: the policy's params
for a forward pass, the reference's, the critic's. An adapter (LoRA) changes only this mapping:
the trainable part becomes the adapters and the frozen part the base.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from rljax import models
from rljax.models.config import ModelConfig
from rljax.models.head import head_logprobs


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
    """The policy `cfg` (with `value_head` for a shared-trunk critic) and an optional separate
    critic network `critic_cfg` (e.g. one initialised from a reward model)."""

    cfg: ModelConfig
    critic_cfg: ModelConfig | None = None

    @property
    def has_critic(self) -> bool:
        return self.critic_cfg is not None or self.cfg.value_head

    def trainable(self, policy_params, critic_params=None) -> dict:
        """The trainable tree of a learner's state from the networks' params."""
        if (critic_params is None) != (self.critic_cfg is None):
            raise ValueError("critic params go with a critic config, and only with one")
        return {"policy": policy_params} | ({} if critic_params is None else {"critic": critic_params})

    def frozen(self, reference_params=None) -> dict:
        """The frozen tree: the KL's reference policy when there is one."""
        return {} if reference_params is None else {"reference": reference_params}

    def policy_params(self, params) -> Any:
        return params["policy"]

    def reference_params(self, frozen) -> Any:
        return frozen["reference"]

    def param_axes(self) -> dict:
        """Logical axes of the trainable tree (`rljax.train.sharded.state_shardings`)."""
        axes = {"policy": models.param_axes(self.cfg)}
        return axes | ({} if self.critic_cfg is None else {"critic": models.param_axes(self.critic_cfg)})

    def frozen_axes(self, frozen) -> dict:
        return {name: models.param_axes(self.cfg) for name in frozen}

    def forward(self, params, tokens, attention_mask, where, with_values: bool = True) -> Forward:
        """One pass of the policy (and the critic) over tokens [B, T]: log-probs and entropies at
        the positions where `where` [B, T] is True, by the fused LM head (no [B, T, V] array)."""
        out = models.forward(self.cfg, self.policy_params(params), tokens, mask=attention_mask)
        logp, entropy = head_logprobs(self.cfg, self.policy_params(params), out.hidden, tokens, where,
                                      with_entropy=True)
        values = out.values
        if with_values and self.critic_cfg is not None:
            values = models.forward(self.critic_cfg, params["critic"], tokens, mask=attention_mask).values
        values = jnp.zeros_like(logp) if values is None or not with_values else state_values(values)
        return Forward(logp, entropy, jnp.where(where, values, 0.0))

    def reference_logp(self, frozen, tokens, attention_mask, where) -> jax.Array:
        """log π_ref(tokens[t] | tokens[<t]) [B, T] where `where` is True (0 elsewhere)."""
        ref = self.reference_params(frozen)
        hidden = models.forward(self.cfg, ref, tokens, mask=attention_mask).hidden
        return head_logprobs(self.cfg, ref, hidden, tokens, where)
