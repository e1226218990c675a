import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rljax import losses

MODES = losses.AGG_MODES


def ref_aggregate(x, m, mode, norm_len=None):
    """The four modes of DESIGN.md, written out per sequence."""
    x, m = x.astype(np.float64), m.astype(np.float64)
    b, t = x.shape
    sums = [float(np.dot(x[i], m[i])) for i in range(b)]
    if mode == "token-mean":
        return sum(sums) / m.sum()
    if mode == "seq-mean-token-mean":
        return sum(s / m[i].sum() for i, s in enumerate(sums)) / b
    if mode == "seq-mean-token-sum":
        return sum(sums) / b
    assert mode == "seq-mean-token-sum-norm"
    return sum(sums) / (b * (t if norm_len is None else norm_len))


@pytest.mark.parametrize("mode", MODES)
def test_matches_reference(mode, check_transforms, make_mask):
    rng = np.random.default_rng(0)
    cases, refs = [], []
    for _ in range(2):
        x = rng.standard_normal((4, 7)).astype(np.float32)
        m = make_mask(rng, 4, 7)
        cases.append((x, m))
        refs.append(ref_aggregate(x, m, mode, norm_len=9))
    check_transforms(lambda x, m: losses.aggregate(x, m, mode, norm_len=9), cases, refs)


def test_norm_len_defaults_to_padded_length(make_mask):
    rng = np.random.default_rng(1)
    x, m = rng.standard_normal((3, 5)).astype(np.float32), make_mask(rng, 3, 5)
    got = losses.aggregate(x, m, "seq-mean-token-sum-norm")
    np.testing.assert_allclose(got, ref_aggregate(x, m, "seq-mean-token-sum-norm"), rtol=1e-6)


@settings(max_examples=30, deadline=None)
@given(
    rows=st.lists(st.lists(st.booleans(), min_size=6, max_size=6), min_size=1, max_size=5),
    mode=st.sampled_from(MODES),
    seed=st.integers(0, 2**31 - 1),
)
def test_matches_reference_property(rows, mode, seed):
    m = np.array(rows)
    m[:, 0] = True  # every row has a real token (empty rows: see the next test)
    x = np.random.default_rng(seed).standard_normal(m.shape).astype(np.float32)
    np.testing.assert_allclose(losses.aggregate(x, m, mode), ref_aggregate(x, m, mode), rtol=2e-5, atol=1e-6)


def test_empty_rows_and_batches_give_zero_not_nan():
    x = jnp.ones((2, 3))
    m = np.array([[True, True, False], [False, False, False]])
    assert float(losses.aggregate(x, m, "seq-mean-token-mean")) == 0.5  # (1 + 0) / 2 sequences
    for mode in MODES:
        assert float(losses.aggregate(x, np.zeros((2, 3), bool), mode)) == 0.0


def test_masked_positions_ignored_even_if_not_finite():
    x = np.array([[1.0, np.inf], [2.0, np.nan]], np.float32)
    m = np.array([[True, False], [True, False]])
    for mode in MODES:
        assert np.isfinite(float(losses.aggregate(x, m, mode)))
    grad = jax.jit(jax.grad(lambda x: losses.aggregate(x, m, "token-mean")))(jnp.asarray(x))
    assert np.all(np.asarray(grad)[~m] == 0)


def test_seq_sum_and_seq_mean():
    x = np.array([[1.0, 2.0, 4.0], [3.0, 5.0, 7.0]], np.float32)
    m = np.array([[True, False, True], [False, False, False]])
    np.testing.assert_array_equal(losses.seq_sum(x, m), [5.0, 0.0])
    np.testing.assert_array_equal(losses.seq_mean(x, m), [2.5, 0.0])


@pytest.mark.parametrize("mode", MODES)
def test_masked_tokens_get_exactly_zero_gradient(mode, make_mask):
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.standard_normal((3, 6)), jnp.float32)
    m = make_mask(rng, 3, 6)
    grad = np.asarray(jax.jit(jax.grad(lambda x: losses.aggregate(x, m, mode)))(x))
    assert np.all(grad[~m] == 0)
    assert np.all(grad[m] != 0)


def _micro_batches(n_rows, sizes):
    edges = np.cumsum([0] + list(sizes))
    assert edges[-1] == n_rows
    return [slice(a, b) for a, b in zip(edges[:-1], edges[1:])]


@pytest.mark.parametrize("mode", MODES)
def test_gradient_accumulation_with_global_counts_equals_full_batch(mode):
    """Σ over micro-batches of aggregate(..., global counts) == aggregate(full batch): value and
    gradient. Micro-batches of unequal size and unequal token counts."""
    rng = np.random.default_rng(3)
    b, t = 7, 5
    x = jnp.asarray(rng.standard_normal((b, t)), jnp.float32)
    lengths = np.array([1, 5, 2, 4, 3, 5, 1])
    m = np.arange(t)[None, :] < lengths[:, None]
    agg = functools.partial(losses.aggregate, mode=mode, norm_len=8)
    full_value, full_grad = jax.jit(jax.value_and_grad(lambda x: agg(x, m)))(x)

    counts = losses.global_counts(m)
    value, grad = 0.0, []
    for sl in _micro_batches(b, (3, 1, 3)):
        v, g = jax.jit(jax.value_and_grad(lambda xm: agg(xm, m[sl], **counts)))(x[sl])
        value += v
        grad.append(g)
    np.testing.assert_allclose(value, full_value, rtol=1e-6)
    np.testing.assert_allclose(np.concatenate(grad), full_grad, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean"])
def test_gradient_accumulation_without_global_counts_differs(mode):
    """The check above can fail: local normalisers give a different value."""
    x = jnp.asarray([[1.0, 1.0, 1.0], [4.0, 0.0, 0.0], [2.0, 2.0, 0.0]])
    m = np.array([[1, 1, 1], [1, 0, 0], [1, 1, 0]], bool)
    full = losses.aggregate(x, m, mode)
    parts = losses.aggregate(x[:1], m[:1], mode) + losses.aggregate(x[1:], m[1:], mode)
    assert abs(float(parts) - float(full)) > 0.1


def test_global_counts():
    m = np.array([[1, 1, 0], [1, 0, 0]], bool)
    counts = losses.global_counts(m)
    assert float(counts["num_tokens"]) == 3 and counts["num_seqs"] == 2


def test_bad_input_raises():
    x, m = jnp.ones((2, 3)), np.ones((2, 3), bool)
    with pytest.raises(ValueError, match="unknown aggregation mode"):
        losses.aggregate(x, m, "mean")
    with pytest.raises(ValueError, match="shape mismatch"):
        losses.aggregate(x, m[:, :2])
    with pytest.raises(ValueError, match="2 dimensions"):
        losses.aggregate(x[0], m[0])
