"""The training state: everything a step reads and writes, as one pytree."""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
    """Step count, trainable params, optimiser state, RNG key, and frozen params.

    `params` are what the optimiser updates (a model's params; an RL learner's policy and
    critic; adapters); `frozen` is what a step reads but never changes (an RL learner's reference
    policy, an adapter's base model), or None. Only `params` get gradients and optimiser state.
    The frozen part rides in the state so that a jitted step takes it as an argument (not as a
    baked-in constant) and passes it through donated, without a copy; checkpoints leave it out
    (`trainable_part`), since it is rebuilt from where it came from.

    The optimiser itself (an `optax.GradientTransformation`) is not part of the state: step
    factories close over it, so the state stays a plain pytree of arrays that can be sharded,
    donated and checkpointed as a whole.
    """

    step: jax.Array  # [] int32: optimiser steps taken
    params: Any
    opt_state: Any
    rng: jax.Array
    frozen: Any = None

    @classmethod
    def create(cls, params: Any, optimizer: optax.GradientTransformation, key: jax.Array,
               frozen: Any = None) -> "TrainState":
        return cls(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params), rng=key,
                   frozen=frozen)

    def apply_gradients(self, grads: Any, optimizer: optax.GradientTransformation) -> "TrainState":
        updates, opt_state = optimizer.update(grads, self.opt_state, self.params)
        return self.replace(step=self.step + 1, params=optax.apply_updates(self.params, updates),
                            opt_state=opt_state)

    def trainable_part(self) -> "TrainState":
        """The state without its frozen params: what a checkpoint holds."""
        return self.replace(frozen=None)
