"""The fused LM head of the train steps (`steps.head_logprobs`): the values and gradients of the
plain path (full logits, then log-softmax), on every head variant, block size and mask."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rljax import models
from rljax.train import steps
from rljax.train.objectives import make_objective
from rljax.train.state import TrainState

CFG = models.get_config("tiny", d_model=32, n_layers=1, n_heads=2, n_kv_heads=1, head_dim=16, mlp_dim=64,
                        vocab_size=64)
B, T = 4, 23


def _inputs(seed=0, vocab=CFG.vocab_size):
    rng = np.random.default_rng(seed)
    tokens = jnp.asarray(rng.integers(0, vocab, (B, T)), jnp.int32)
    attention = jnp.asarray(rng.random((B, T)) > 0.1)
    where = jnp.asarray(np.arange(T)[None] >= rng.integers(5, T, B)[:, None]) & attention
    weights = jnp.asarray(rng.normal(size=(B, T)), jnp.float32)
    return tokens, attention, where, weights


@pytest.mark.parametrize("chunk_rows", [1, 16, 37, 10_000])
@pytest.mark.parametrize("variant", [{}, {"tie_embeddings": False}, {"final_softcap": 3.0},
                                     {"tie_embeddings": False, "final_softcap": 3.0}],
                         ids=["tied", "untied", "softcap", "untied-softcap"])
def test_fused_head_matches_full_logits(variant, chunk_rows):
    cfg = CFG.replace(**variant)
    params = models.init(cfg, jax.random.PRNGKey(0))
    tokens, attention, where, weights = _inputs()

    def plain(p):
        logp = steps.next_token_logprobs(models.forward(cfg, p, tokens, mask=attention).logits, tokens)
        logp = jnp.where(where, logp, 0.0)
        return jnp.sum(logp * weights), logp

    def fused(p):
        hidden = models.forward(cfg, p, tokens, mask=attention).hidden
        logp = steps.head_logprobs(cfg, p, hidden, tokens, where, chunk_rows=chunk_rows)
        return jnp.sum(logp * weights), logp

    with jax.default_matmul_precision("highest"):
        (want, want_logp), want_grads = jax.jit(jax.value_and_grad(plain, has_aux=True))(params)
        (got, got_logp), got_grads = jax.jit(jax.value_and_grad(fused, has_aux=True))(params)
    np.testing.assert_allclose(got_logp, want_logp, rtol=1e-5, atol=1e-6)
    assert float(jnp.max(jnp.abs(jnp.where(where, 0.0, got_logp)))) == 0.0  # unscored positions are 0
    np.testing.assert_allclose(got, want, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), got_grads, want_grads)


def test_fused_head_without_mask_scores_every_position():
    params = models.init(CFG, jax.random.PRNGKey(0))
    tokens, attention, _, _ = _inputs(1)
    out = models.forward(CFG, params, tokens, mask=attention)
    with jax.default_matmul_precision("highest"):
        want = steps.next_token_logprobs(out.logits, tokens)
        got = steps.head_logprobs(CFG, params, out.hidden, tokens, chunk_rows=8)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert float(got[0, 0]) == 0.0


def test_policy_step_equals_the_full_logits_step():
    """make_policy_step (fused head over the loss mask) makes the update that the plain path makes."""
    params = models.init(CFG, jax.random.PRNGKey(1))
    tokens, attention, where, _ = _inputs(2)
    rng = np.random.default_rng(3)
    batch = {"tokens": tokens, "attention_mask": attention, "loss_mask": where,
             "old_logp": jnp.asarray(rng.normal(-4.0, 0.3, (B, T)), jnp.float32) * where,
             "ref_logp": jnp.asarray(rng.normal(-4.0, 0.3, (B, T)), jnp.float32) * where,
             "advantages": jnp.asarray(rng.normal(size=B), jnp.float32)}
    objective = make_objective("grpo", agg="seq-mean-token-mean", beta=0.04, clip_eps=0.2)
    optimizer = optax.sgd(1.0)

    def plain_step(state, b, key):
        counts = {"num_tokens": jnp.sum(b["loss_mask"].astype(jnp.float32)), "num_seqs": B}
        loss_fn = lambda p, mb: objective(steps.run_networks(CFG, p, mb), mb, counts)  # noqa: E731
        loss, metrics, grads = steps.accumulate_gradients(loss_fn, state.params, b, 1)
        return steps._update(state, optimizer, loss, metrics, grads)

    key = jax.random.PRNGKey(0)
    state = TrainState.create(params, optimizer, key)
    with jax.default_matmul_precision("highest"):
        want, want_metrics = jax.jit(plain_step)(state, batch, key)
        got, got_metrics = jax.jit(steps.make_policy_step(CFG, optimizer, objective))(state, batch, key)
    np.testing.assert_allclose(got_metrics["loss"], want_metrics["loss"], rtol=1e-5)
    np.testing.assert_allclose(got_metrics["grad_norm"], want_metrics["grad_norm"], rtol=1e-4)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), got.params, want.params)
