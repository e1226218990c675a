import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from rljax import losses


def ref_log_softmax(logits):
    x = np.asarray(logits, np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def ref_token_logprobs(logits, targets):
    return np.take_along_axis(ref_log_softmax(logits), targets[..., None], -1)[..., 0]


def ref_entropy(logits):
    logp = ref_log_softmax(logits)
    return -(np.exp(logp) * logp).sum(-1)


def _inputs(seed, b=3, t=5, v=11, scale=3.0):
    rng = np.random.default_rng(seed)
    logits = (scale * rng.standard_normal((b, t, v))).astype(np.float32)
    return logits, rng.integers(0, v, size=(b, t)).astype(np.int32)


# B·T = 15 rows: chunks of 1, 4 (3 rows a chunk, 15 = 5·3), 7 (15 has no divisor in [4, 7]:
# a remainder), 15 (one chunk), 100 (more than the rows) and None.
CHUNKS = [1, 4, 7, 15, 100, None]


@pytest.mark.parametrize("chunk_size", CHUNKS)
def test_token_logprobs_match_reference(chunk_size, check_transforms):
    cases = [_inputs(0), _inputs(1)]
    refs = [ref_token_logprobs(*c) for c in cases]
    check_transforms(lambda x, y: losses.token_logprobs(x, y, chunk_size=chunk_size), cases, refs)


@pytest.mark.parametrize("chunk_size", CHUNKS)
def test_entropy_matches_reference(chunk_size, check_transforms):
    cases = [_inputs(2)[:1], _inputs(3)[:1]]
    refs = [ref_entropy(*c) for c in cases]
    check_transforms(lambda x: losses.entropy(x, chunk_size=chunk_size), cases, refs)


@pytest.mark.parametrize("chunk_size", [4, 7, None])
def test_gradients_match_reference(chunk_size):
    """∂ log π(y)/∂x_v = [v = y] − π_v;  ∂H/∂x_v = −π_v (log π_v + H)."""
    logits, targets = _inputs(4)
    w = np.random.default_rng(5).standard_normal(targets.shape).astype(np.float32)
    p = np.exp(ref_log_softmax(logits))
    onehot = np.eye(logits.shape[-1])[targets]
    g = jax.jit(jax.grad(lambda x: jnp.sum(w * losses.token_logprobs(x, targets, chunk_size=chunk_size))))(logits)
    np.testing.assert_allclose(g, w[..., None] * (onehot - p), rtol=1e-5, atol=1e-6)
    h = ref_entropy(logits)[..., None]
    g = jax.jit(jax.grad(lambda x: jnp.sum(w * losses.entropy(x, chunk_size=chunk_size))))(logits)
    np.testing.assert_allclose(g, w[..., None] * (-p * (np.log(p) + h)), rtol=1e-4, atol=1e-6)


def test_bfloat16_logits_are_computed_in_float32():
    logits, targets = _inputs(6)
    low = logits.astype(ml_dtypes.bfloat16)
    got = losses.token_logprobs(jnp.asarray(low), targets, chunk_size=4)
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(got, ref_token_logprobs(low.astype(np.float32), targets), rtol=1e-5, atol=1e-5)


def test_chunking_keeps_float32_temporaries_to_a_chunk():
    """Compiled temp memory of value-and-grad: the unchunked log-softmax needs a full float32
    [B·T, V] array (at least); the chunked one a few chunks' worth."""
    b, t, v, chunk = 4, 128, 8192, 32
    full = b * t * v * 4
    x = jax.ShapeDtypeStruct((b, t, v), jnp.float32)
    y = jax.ShapeDtypeStruct((b, t), jnp.int32)

    def temp_bytes(chunk_size):
        f = jax.jit(jax.value_and_grad(lambda x, y: jnp.sum(losses.token_logprobs(x, y, chunk_size=chunk_size))))
        analysis = jax.jit(f).lower(x, y).compile().memory_analysis()
        if analysis is None:
            pytest.skip("no memory analysis on this backend")
        return analysis.temp_size_in_bytes

    def naive(x, y):
        return jnp.sum(jnp.take_along_axis(jax.nn.log_softmax(x), y[..., None], -1))

    naive_temp = jax.jit(jax.value_and_grad(naive)).lower(x, y).compile().memory_analysis().temp_size_in_bytes
    assert naive_temp >= full  # the measurement sees the full array where there is one
    assert temp_bytes(chunk) <= 4 * chunk * v * 4 < full / 2


def test_bad_input_raises():
    logits, targets = _inputs(7)
    with pytest.raises(ValueError, match=r"\[B, T, V\]"):
        losses.token_logprobs(logits[0], targets[0])
    with pytest.raises(ValueError, match="targets must have shape"):
        losses.token_logprobs(logits, targets[:, :2])
    with pytest.raises(ValueError, match="chunk_size"):
        losses.entropy(logits, chunk_size=0)
