import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rljax import losses


def ref_kl(logp, ref_logp, kind):
    """Schulman (2020), d = log π − log π_ref on samples from π."""
    d = logp.astype(np.float64) - ref_logp.astype(np.float64)
    return {"k1": d, "k2": d**2 / 2, "k3": np.exp(-d) + d - 1}[kind.rstrip("+")]


@pytest.mark.parametrize("kind", losses.KL_KINDS)
def test_matches_reference(kind, check_transforms, make_batch):
    cases, refs = [], []
    for seed in range(2):
        b = make_batch(seed)
        cases.append((b["logp"], b["ref_logp"]))
        refs.append(ref_kl(b["logp"], b["ref_logp"], kind))
    check_transforms(lambda lp, rp: losses.kl_estimate(lp, rp, kind), cases, refs)


@pytest.mark.parametrize("kind", ["k1+", "k3+"])
def test_straight_through_has_value_of_kind_and_gradient_of_k2(kind, make_batch):
    b = make_batch(3)
    lp, rp = jnp.asarray(b["logp"]), jnp.asarray(b["ref_logp"])
    d = b["logp"].astype(np.float64) - b["ref_logp"]
    total = lambda lp, rp: jnp.sum(losses.kl_estimate(lp, rp, kind))
    g_lp, g_rp = jax.jit(jax.grad(total, argnums=(0, 1)))(lp, rp)
    np.testing.assert_allclose(g_lp, d, rtol=1e-5, atol=1e-6)  # ∂(d²/2)/∂logp = d
    np.testing.assert_allclose(g_rp, -d, rtol=1e-5, atol=1e-6)
    # ... whereas the plain kind's gradient differs
    g_plain = jax.jit(jax.grad(lambda lp: jnp.sum(losses.kl_estimate(lp, rp, kind[:-1]))))(lp)
    assert not np.allclose(g_plain, d, atol=1e-3)


@settings(max_examples=50, deadline=None)
@given(d=st.floats(-20.0, 20.0, allow_nan=False))
def test_k2_and_k3_are_nonnegative(d):
    lp = jnp.full((1, 1), d, jnp.float32)
    for kind in ("k2", "k3", "k3+"):
        assert float(losses.kl_estimate(lp, jnp.zeros((1, 1)), kind)[0, 0]) >= 0.0


def _categorical_pair(seed, scale):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal(6)
    log_p = a - np.log(np.sum(np.exp(a)))
    b = a + scale * rng.standard_normal(6)
    log_q = b - np.log(np.sum(np.exp(b)))
    return rng, log_p, log_q


def _estimates(seed, scale, n=200_000):
    """Samples of each estimator on tokens drawn from π; the exact KL(π‖π_ref)."""
    rng, log_p, log_q = _categorical_pair(seed, scale)
    exact = float(np.sum(np.exp(log_p) * (log_p - log_q)))
    idx = rng.choice(6, size=n, p=np.exp(log_p))
    lp = log_p[idx].astype(np.float32).reshape(400, -1)
    rp = log_q[idx].astype(np.float32).reshape(400, -1)
    samples = {k: np.asarray(losses.kl_estimate(lp, rp, k), np.float64).ravel() for k in ("k1", "k2", "k3")}
    return samples, exact, log_p, log_q


def _ci(x):
    """Half-width of a 4-sigma confidence interval for the mean of x."""
    return 4.0 * np.std(x, ddof=1) / np.sqrt(x.size)


@pytest.mark.parametrize("kind", ["k1", "k3"])
def test_k1_and_k3_are_unbiased_estimates_of_kl(kind):
    samples, exact, _, _ = _estimates(seed=0, scale=0.5)
    x = samples[kind]
    assert _ci(x) < 0.1 * exact  # the test has power: the interval is tight
    assert abs(x.mean() - exact) < _ci(x)


def test_k3_has_lower_variance_than_k1_for_nearby_distributions():
    samples, _, _, _ = _estimates(seed=1, scale=0.1)
    assert np.var(samples["k3"]) < 0.2 * np.var(samples["k1"])


def test_k2_is_biased_but_close_for_nearby_distributions():
    # Nearby: E[k2] = E[d²]/2 agrees with KL to second order (a relative error of order |d|).
    samples, exact, log_p, log_q = _estimates(seed=2, scale=0.1)
    expect_k2 = float(np.sum(np.exp(log_p) * (log_p - log_q) ** 2 / 2))
    assert abs(samples["k2"].mean() - expect_k2) < _ci(samples["k2"])  # it estimates E_π[d²/2]...
    assert abs(expect_k2 - exact) < 0.15 * exact  # ...which is close to KL here
    # Far apart: the bias is large and the samples detect it.
    samples, exact, log_p, log_q = _estimates(seed=2, scale=2.0)
    expect_k2 = float(np.sum(np.exp(log_p) * (log_p - log_q) ** 2 / 2))
    assert abs(expect_k2 - exact) > 0.2 * exact
    assert abs(samples["k2"].mean() - exact) > 10 * _ci(samples["k2"])


def test_bad_input_raises():
    x = jnp.zeros((2, 3))
    with pytest.raises(ValueError, match="unknown KL kind"):
        losses.kl_estimate(x, x, "k4")
    with pytest.raises(ValueError, match="shape mismatch"):
        losses.kl_estimate(x, x[:, :2])
