"""The training state: everything a step reads and writes, as one pytree."""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
    """params, optimiser state, step count and RNG key.

    The optimiser itself (an `optax.GradientTransformation`) is not part of the state: step
    factories close over it, so the state stays a plain pytree of arrays that can be sharded,
    donated and checkpointed as a whole.
    """

    step: jax.Array  # [] int32
    params: Any
    opt_state: Any
    rng: jax.Array

    @classmethod
    def create(cls, params: Any, optimizer: optax.GradientTransformation, key: jax.Array) -> "TrainState":
        return cls(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params), rng=key)

    def apply_gradients(self, grads: Any, optimizer: optax.GradientTransformation) -> "TrainState":
        updates, opt_state = optimizer.update(grads, self.opt_state, self.params)
        return self.replace(step=self.step + 1, params=optax.apply_updates(self.params, updates),
                            opt_state=opt_state)
