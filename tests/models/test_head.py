"""The LM head (`rljax.models.head`): the transformer's logits are `head_logits`; the fused head
(`head_logprobs`) gives the log-probs and entropies, and their gradients, of a float64 NumPy
reference and of the plain path (full logits, then log-softmax), on every head variant, block
size and mask; unscored positions are exactly 0 and get exactly zero gradient."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rljax import models

CFG = models.get_config("tiny", d_model=32, n_layers=1, n_heads=2, n_kv_heads=1, head_dim=16, mlp_dim=64,
                        vocab_size=64)
B, T = 4, 23
VARIANTS = [{}, {"tie_embeddings": False}, {"final_softcap": 3.0}, {"tie_embeddings": False, "final_softcap": 3.0}]
VARIANT_IDS = ["tied", "untied", "softcap", "untied-softcap"]


def _inputs(seed=0, vocab=CFG.vocab_size):
    rng = np.random.default_rng(seed)
    tokens = jnp.asarray(rng.integers(0, vocab, (B, T)), jnp.int32)
    attention = jnp.asarray(rng.random((B, T)) > 0.1)
    where = jnp.asarray(np.arange(T)[None] >= rng.integers(5, T, B)[:, None]) & attention
    weights = jnp.asarray(rng.normal(size=(B, T)), jnp.float32)
    return tokens, attention, where, weights


# ----------------------------------------------------------------------------- NumPy reference


def _reference(hidden, weight, tokens, where, w1, w2, tied, softcap):
    """float64: logp, entropy [B, T] (0 at t = 0 and off `where`) and the gradients of
    L = Σ w1·logp + Σ w2·H with respect to hidden [B, T, D] and weight ([V, D] tied, [D, V] untied).

    z_t = head(h_{t-1}); logp_t = log softmax(z_t)[tokens_t]; H_t = −Σ_v p_v log p_v; with g1, g2
    the weights on the scored positions, dL/dz_t = g1_t·(onehot − p) − g2_t·p ⊙ (log p + H_t)."""
    h, tgt = hidden[:, :-1], tokens[:, 1:]
    u = h @ weight.T if tied else h @ weight  # [B, T-1, V]
    z = softcap * np.tanh(u / softcap) if softcap else u
    zmax = z.max(-1, keepdims=True)
    log_p = z - (zmax + np.log(np.exp(z - zmax).sum(-1, keepdims=True)))
    p = np.exp(log_p)
    logp = np.take_along_axis(log_p, tgt[..., None], -1)[..., 0]
    entropy = -(p * log_p).sum(-1)
    m = where[:, 1:]
    pad = lambda x: np.pad(np.where(m, x, 0.0), ((0, 0), (1, 0))).astype(np.float64)  # noqa: E731
    g1, g2 = (np.where(m, w[:, 1:], 0.0)[..., None] for w in (w1, w2))
    onehot = np.arange(z.shape[-1]) == tgt[..., None]
    dz = g1 * (onehot - p) - g2 * p * (log_p + entropy[..., None])
    du = dz * (1.0 - np.square(z / softcap)) if softcap else dz
    dhidden = np.zeros_like(hidden)
    dhidden[:, :-1] = du @ weight if tied else du @ weight.T
    dweight = np.einsum("BTV,BTD->VD", du, h) if tied else np.einsum("BTD,BTV->DV", h, du)
    return pad(logp), pad(entropy), dhidden, dweight


def _head_case(seed, tied, b=B, t=T, d=CFG.d_model, v=CFG.vocab_size):
    """float64 hidden [B, T, D], weight ([V, D] tied, [D, V] untied), tokens [B, T], and a `where`
    [B, T] with dead blocks (no row scored at 6..15, so blocks of 1 and 2 positions there are
    skipped; row 1 asks for t = 0, which is never scored), and loss weights w1, w2 [B, T]."""
    rng = np.random.default_rng(seed)
    hidden = 2.0 * rng.normal(size=(b, t, d))
    weight = rng.normal(size=(v, d) if tied else (d, v)) * d**-0.5
    tokens = rng.integers(0, v, (b, t))
    where = np.arange(t)[None] >= rng.integers(t - t // 3, t - 2, b)[:, None]
    where[0, 2:6] = True
    where[1, 0] = True
    where[2 % b, -1] = False
    w1, w2 = rng.normal(size=(2, b, t))
    return hidden, weight, tokens, where, w1, w2


def _params(cfg, weight):
    return {"embed": {"embedding": weight}} if cfg.tie_embeddings else {"lm_head": {"kernel": weight}}


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
@pytest.mark.parametrize("softcap", [None, 3.0], ids=["nocap", "softcap"])
def test_reference_gradients_match_finite_differences(tied, softcap):
    """The float64 reference's hand-written gradients are those of its values."""
    hidden, weight, tokens, where, w1, w2 = _head_case(0, tied, b=2, t=9, d=5, v=7)

    def loss(h, w):
        logp, entropy, _, _ = _reference(h, w, tokens, where, w1, w2, tied, softcap)
        return np.sum(w1 * logp) + np.sum(w2 * entropy)

    _, _, dhidden, dweight = _reference(hidden, weight, tokens, where, w1, w2, tied, softcap)
    eps = 1e-6
    for x, grad, other in ((hidden, dhidden, "hidden"), (weight, dweight, "weight")):
        fd = np.zeros_like(x)
        for i in np.ndindex(x.shape):
            orig = x[i]
            x[i] = orig + eps
            up = loss(hidden, weight)
            x[i] = orig - eps
            down = loss(hidden, weight)
            x[i] = orig
            fd[i] = (up - down) / (2 * eps)
        np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-8, err_msg=other)


@pytest.mark.parametrize("chunk_rows", [1, 8, 37, 10_000])
@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
@pytest.mark.parametrize("softcap", [None, 3.0], ids=["nocap", "softcap"])
def test_fused_head_matches_numpy_reference(tied, softcap, chunk_rows):
    cfg = CFG.replace(tie_embeddings=tied, final_softcap=softcap)
    hidden, weight, tokens, where, w1, w2 = _head_case(1, tied)
    assert not where[:, 6:16].any()
    want_logp, want_entropy, want_dh, want_dw = _reference(hidden, weight, tokens, where, w1, w2, tied, softcap)
    f32 = lambda x: jnp.asarray(x, jnp.float32)  # noqa: E731

    def loss(h, w):
        logp, entropy = models.head_logprobs(cfg, _params(cfg, w), h, jnp.asarray(tokens), jnp.asarray(where),
                                             chunk_rows=chunk_rows, with_entropy=True)
        return jnp.sum(f32(w1) * logp) + jnp.sum(f32(w2) * entropy), (logp, entropy)

    with jax.default_matmul_precision("highest"):
        (_, (logp, entropy)), (dh, dw) = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(
            f32(hidden), f32(weight))
        plain_logp = jax.jit(lambda h, w: models.head_logprobs(cfg, _params(cfg, w), h, jnp.asarray(tokens),
                                                               jnp.asarray(where), chunk_rows=chunk_rows))(
            f32(hidden), f32(weight))
    assert logp.dtype == entropy.dtype == jnp.float32 and logp.shape == entropy.shape == (B, T)
    np.testing.assert_allclose(logp, want_logp, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(entropy, want_entropy, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(plain_logp, logp, rtol=1e-6, atol=0)  # the same, up to XLA's fusion
    np.testing.assert_allclose(dh, want_dh, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(dw, want_dw, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
def test_unscored_positions_are_zero_and_get_zero_gradient(variant):
    cfg = CFG.replace(**variant)
    hidden, weight, tokens, where, w1, w2 = _head_case(2, cfg.tie_embeddings)
    scored = where.copy()
    scored[:, 0] = False
    rng = np.random.default_rng(3)
    # Loss weights that differ only off the scored positions, by a lot.
    w1_off, w2_off = (np.where(scored, w, 1e3 * rng.normal(size=w.shape)) for w in (w1, w2))

    @jax.jit
    def grads(h, w, a1, a2):
        def loss(h, w):
            logp, entropy = models.head_logprobs(cfg, _params(cfg, w), h, tokens, where, chunk_rows=8,
                                                 with_entropy=True)
            return jnp.sum(a1 * logp) + jnp.sum(a2 * entropy), (logp, entropy)

        return jax.grad(loss, argnums=(0, 1), has_aux=True)(h, w)

    f32 = lambda x: jnp.asarray(x, jnp.float32)  # noqa: E731
    (dh, dw), (logp, entropy) = grads(f32(hidden), f32(weight), f32(w1), f32(w2))
    (dh_off, dw_off), _ = grads(f32(hidden), f32(weight), f32(w1_off), f32(w2_off))
    assert np.all(np.asarray(logp)[~scored] == 0.0) and np.all(np.asarray(entropy)[~scored] == 0.0)
    assert np.all(np.asarray(logp)[scored] < 0.0) and np.all(np.asarray(entropy)[scored] > 0.0)
    np.testing.assert_array_equal(dh_off, dh)
    np.testing.assert_array_equal(dw_off, dw)
    # The hidden state at t − 1 feeds position t only: where t is unscored, its gradient is 0.
    feeds_unscored = np.pad(~scored[:, 1:], ((0, 0), (0, 1)), constant_values=True)
    assert np.all(np.asarray(dh)[feeds_unscored] == 0.0)


# ----------------------------------------------------------------------------- against the model


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("variant", VARIANTS + [{"final_softcap": 30.0, "norm_plus_one": True, "post_norms": True,
                                                 "scale_embeddings": True}],
                         ids=VARIANT_IDS + ["gemma2"])
def test_transformer_logits_are_head_logits(variant, dtype):
    cfg = CFG.replace(dtype=dtype, **variant)
    params = models.init(cfg, jax.random.PRNGKey(0))
    tokens, attention, _, _ = _inputs(4)
    out = models.forward(cfg, params, tokens, mask=attention)
    got = jax.jit(models.head_logits, static_argnums=0)(cfg, models.head_weight(cfg, params), out.hidden)
    assert out.logits.dtype == got.dtype == jnp.float32 and got.shape == (B, T, cfg.vocab_size)
    np.testing.assert_array_equal(out.logits, got)


@pytest.mark.parametrize("with_entropy", [False, True], ids=["logp", "entropy"])
@pytest.mark.parametrize("chunk_rows", [1, 16, 37, 10_000])
@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
def test_fused_head_matches_full_logits(variant, chunk_rows, with_entropy):
    """Values, and the gradients of Σ w·logp through the whole model (with the entropy computed
    beside, its cotangent zero). The entropy's own gradients are checked against the float64
    reference above: through the trunk, two float32 computations of them differ by about this
    test's tolerance, and so does either from a float64 one."""
    cfg = CFG.replace(**variant)
    params = models.init(cfg, jax.random.PRNGKey(0))
    tokens, attention, where, weights = _inputs()

    def plain(p):
        logits = models.forward(cfg, p, tokens, mask=attention).logits
        logp = jnp.where(where, models.next_token_logprobs(logits, tokens), 0.0)
        entropy = jnp.where(where, models.next_token_entropy(logits), 0.0)
        return jnp.sum(logp * weights), (logp, entropy)

    def fused(p):
        hidden = models.forward(cfg, p, tokens, mask=attention).hidden
        out = models.head_logprobs(cfg, p, hidden, tokens, where, chunk_rows=chunk_rows, with_entropy=with_entropy)
        logp, entropy = out if with_entropy else (out, None)
        return jnp.sum(logp * weights), (logp, entropy)

    with jax.default_matmul_precision("highest"):
        (want, (want_logp, want_entropy)), want_grads = jax.jit(jax.value_and_grad(plain, has_aux=True))(params)
        (got, (got_logp, got_entropy)), got_grads = jax.jit(jax.value_and_grad(fused, has_aux=True))(params)
    np.testing.assert_allclose(got_logp, want_logp, rtol=1e-5, atol=1e-6)
    assert float(jnp.max(jnp.abs(jnp.where(where, 0.0, got_logp)))) == 0.0  # unscored positions are 0
    if with_entropy:
        np.testing.assert_allclose(got_entropy, want_entropy, rtol=1e-5, atol=1e-6)
        assert float(jnp.max(jnp.abs(jnp.where(where, 0.0, got_entropy)))) == 0.0
    np.testing.assert_allclose(got, want, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), got_grads, want_grads)


def test_fused_head_without_mask_scores_every_position():
    params = models.init(CFG, jax.random.PRNGKey(0))
    tokens, attention, _, _ = _inputs(1)
    out = models.forward(CFG, params, tokens, mask=attention)
    with jax.default_matmul_precision("highest"):
        want = models.next_token_logprobs(out.logits, tokens)
        want_entropy = models.next_token_entropy(out.logits)
        got = models.head_logprobs(CFG, params, out.hidden, tokens, chunk_rows=8)
        got_with, got_entropy = models.head_logprobs(CFG, params, out.hidden, tokens, chunk_rows=8, with_entropy=True)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got_entropy, want_entropy, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got_with, got, rtol=1e-6, atol=0)
    assert float(got[0, 0]) == 0.0 and float(got_entropy[0, 0]) == 0.0
