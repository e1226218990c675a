"""The shared step machinery: gradient accumulation sums exactly to the full batch's gradient
whatever the batch pytree, an indivisible batch is refused, and the SFT step learns."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rljax import losses, models
from rljax.train.state import TrainState
from rljax.train.steps import accumulate_gradients, make_sft_step

CFG = models.get_config("tiny", d_model=32, n_layers=1, n_heads=2, n_kv_heads=1, head_dim=16, mlp_dim=64,
                        vocab_size=64)
B, T, P = 8, 10, 4  # rows, tokens, prompt tokens


def _batch(seed=0):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, CFG.vocab_size, (B, T)).astype(np.int32)
    lengths = rng.integers(1, T - P + 1, B)
    attention = np.arange(T)[None] < (P + lengths)[:, None]
    return {"tokens": tokens, "attention_mask": attention, "loss_mask": attention & (np.arange(T)[None] >= P)}


@pytest.mark.parametrize("agg", losses.AGG_MODES)
def test_accumulated_gradients_equal_the_full_batch_gradients(agg):
    w = jnp.asarray(np.random.default_rng(1).normal(size=(T,)), jnp.float32)
    batch = {"x": jnp.asarray(np.random.default_rng(2).normal(size=(B, T)), jnp.float32),
             "mask": (_batch()["loss_mask"], _batch(3)["loss_mask"])}  # any pytree of [B, ...] leaves
    counts = losses.global_counts(batch["mask"][0])

    def loss_fn(params, mb):
        value = losses.aggregate(jnp.tanh(mb["x"] * params), mb["mask"][0] | mb["mask"][1], agg, T, **counts)
        return value, {"value": value}

    full_loss, _, full = accumulate_gradients(loss_fn, w, batch, 1)
    acc_loss, _, acc = accumulate_gradients(loss_fn, w, batch, 4)
    np.testing.assert_allclose(acc_loss, full_loss, rtol=1e-6)
    np.testing.assert_allclose(acc, full, rtol=1e-5, atol=1e-7)


def test_accumulation_rejects_an_indivisible_batch():
    with pytest.raises(ValueError, match="not divisible by micro_batches=3"):
        accumulate_gradients(lambda p, mb: (jnp.sum(mb["x"]) * p, {}), 1.0, {"x": jnp.ones((8, 2))}, 3)


def test_sft_step_lowers_the_loss_on_its_batch():
    params = models.init(CFG, jax.random.PRNGKey(1))
    optimizer = optax.adam(1e-2)
    step = jax.jit(make_sft_step(CFG, optimizer))
    state = TrainState.create(params, optimizer, jax.random.PRNGKey(0))
    batch = _batch()
    losses_seen = []
    for _ in range(5):
        state, metrics = step(state, batch, jax.random.PRNGKey(0))
        losses_seen.append(float(metrics["loss"]))
    assert losses_seen[-1] < losses_seen[0] - 0.5
    assert int(state.step) == 5
