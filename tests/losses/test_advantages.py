import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from rljax import losses

f64 = lambda x: np.asarray(x, np.float64)


# ------------------------------------------------------------------------ references


def ref_gae(rewards, values, mask, gamma, lam):
    """Per row, the GAE recursion over the real tokens only, from the last one back."""
    r, v = f64(rewards), f64(values)
    adv, ret = np.zeros_like(r), np.zeros_like(r)
    for b in range(r.shape[0]):
        next_adv = next_value = 0.0
        for t in reversed(np.flatnonzero(mask[b])):
            delta = r[b, t] + gamma * next_value - v[b, t]
            adv[b, t] = delta + gamma * lam * next_adv
            ret[b, t] = adv[b, t] + v[b, t]
            next_adv, next_value = adv[b, t], v[b, t]
    return adv, ret


def ref_whiten(x, mask, shift_mean=True, eps=1e-8):
    vals = f64(x)[mask]
    mean, var = vals.mean(), vals.var(ddof=1)
    out = (f64(x) - mean) / np.sqrt(var + eps) + (0.0 if shift_mean else mean)
    return np.where(mask, out, 0.0)


def ref_group(rewards, normalize_std=True, eps=1e-6):
    out = np.zeros(rewards.shape)
    for b, row in enumerate(f64(rewards)):
        out[b] = row - row.mean()
        if normalize_std:
            out[b] /= row.std(ddof=1) + eps
    return out


def ref_rloo(rewards):
    r = f64(rewards)
    g = r.shape[1]
    out = np.zeros(r.shape)
    for b in range(r.shape[0]):
        for i in range(g):
            out[b, i] = r[b, i] - np.mean([r[b, j] for j in range(g) if j != i])
    return out


def ref_overlong(length, max_len, cache_len):
    if length <= max_len - cache_len:
        return 0.0
    if length <= max_len:
        return (max_len - cache_len - length) / cache_len
    return -1.0


# ----------------------------------------------------------------------------- GAE


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 0.8), (0.99, 1.0), (1.0, 0.0)])
def test_gae_matches_reference(gamma, lam, check_transforms, make_batch):
    cases, refs = [], []
    for seed in range(2):
        b = make_batch(seed)
        cases.append((b["rewards"], b["values"], b["mask"]))
        refs.append(ref_gae(b["rewards"], b["values"], b["mask"], gamma, lam))
    check_transforms(lambda r, v, m: losses.gae(r, v, m, gamma=gamma, lam=lam), cases, refs)


def test_gae_with_lambda_one_gives_monte_carlo_returns(make_batch):
    """λ = 1: R_t = Σ_k γ^k r_{t+k} over the following real tokens, whatever V is."""
    b = make_batch(3)
    gamma = 0.9
    _, returns = losses.gae(b["rewards"], b["values"], b["mask"], gamma=gamma, lam=1.0)
    for row in range(len(b["mask"])):
        idx = np.flatnonzero(b["mask"][row])
        for k, t in enumerate(idx):
            expected = sum(gamma**j * float(b["rewards"][row, s]) for j, s in enumerate(idx[k:]))
            np.testing.assert_allclose(returns[row, t], expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        losses.discounted_returns(b["rewards"], b["mask"], gamma=gamma), np.where(b["mask"], returns, 0), rtol=1e-6
    )


def test_gae_masked_tokens_are_zero_and_do_not_propagate(make_batch):
    b = make_batch(4)
    adv, ret = losses.gae(b["rewards"], b["values"], b["mask"])
    assert np.all(np.asarray(adv)[~b["mask"]] == 0) and np.all(np.asarray(ret)[~b["mask"]] == 0)
    junk_r = np.where(b["mask"], b["rewards"], 1e6).astype(np.float32)
    junk_v = np.where(b["mask"], b["values"], -1e6).astype(np.float32)
    adv2, ret2 = losses.gae(junk_r, junk_v, b["mask"])
    np.testing.assert_array_equal(adv2, adv)
    np.testing.assert_array_equal(ret2, ret)


def test_gae_single_terminal_reward_hand_computed():
    """One sequence, reward 1 on the last of 3 tokens, V = 0.5 everywhere, γ = 1, λ = 0.5:
    δ = (−0.5+0.5, −0.5+0.5, 1−0.5) = (0, 0, 0.5); A = (0.125, 0.25, 0.5)."""
    adv, ret = losses.gae(jnp.array([[0.0, 0.0, 1.0]]), jnp.full((1, 3), 0.5), jnp.ones((1, 3), bool), 1.0, 0.5)
    np.testing.assert_allclose(adv, [[0.125, 0.25, 0.5]], rtol=1e-6)
    np.testing.assert_allclose(ret, [[0.625, 0.75, 1.0]], rtol=1e-6)


# -------------------------------------------------------------------- normalisations


@pytest.mark.parametrize("shift_mean", [True, False])
def test_whiten_matches_reference(shift_mean, check_transforms, make_batch):
    cases = [(make_batch(s)["rewards"], make_batch(s)["mask"]) for s in (5, 6)]
    refs = [ref_whiten(x, m, shift_mean) for x, m in cases]
    check_transforms(lambda x, m: losses.whiten(x, m, shift_mean=shift_mean), cases, refs, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("normalize_std", [True, False])
def test_group_advantages_match_reference(normalize_std, check_transforms):
    rng = np.random.default_rng(7)
    cases = [(rng.standard_normal((3, 4)).astype(np.float32),) for _ in range(2)]
    refs = [ref_group(c[0], normalize_std) for c in cases]
    check_transforms(lambda r: losses.group_advantages(r, normalize_std=normalize_std), cases, refs, atol=1e-5)


# Fixed shapes and jitted functions: each hypothesis example reuses one compiled program.
rewards_bg = hnp.arrays(np.float32, (3, 5), elements=st.floats(-10, 10, width=32))
group_jit = jax.jit(losses.group_advantages, static_argnames="normalize_std")
rloo_jit = jax.jit(losses.rloo_advantages)


@settings(max_examples=40, deadline=None)
@given(r=rewards_bg, shift=st.floats(-100, 100))
def test_group_advantages_invariant_to_reward_shift(r, shift):
    r = r + np.linspace(0, 1, r.shape[1], dtype=np.float32)  # keep groups from being constant
    for normalize_std in (True, False):
        a = group_jit(r, normalize_std=normalize_std)
        b = group_jit(r + np.float32(shift), normalize_std=normalize_std)
        np.testing.assert_allclose(a, b, atol=1e-3)


def test_group_advantages_constant_group_is_zero_and_std_is_sample_std():
    a = losses.group_advantages(np.array([[2.0, 2.0, 2.0], [0.0, 1.0, 2.0]], np.float32))
    np.testing.assert_array_equal(a[0], [0.0, 0.0, 0.0])
    np.testing.assert_allclose(a[1], [-1.0, 0.0, 1.0], rtol=1e-5)  # sample std of (0, 1, 2) is 1


def test_rloo_matches_reference(check_transforms):
    rng = np.random.default_rng(8)
    cases = [(rng.standard_normal((3, 5)).astype(np.float32),) for _ in range(2)]
    check_transforms(losses.rloo_advantages, cases, [ref_rloo(c[0]) for c in cases])


@settings(max_examples=40, deadline=None)
@given(r=rewards_bg)
def test_rloo_advantages_sum_to_zero_per_group(r):
    a = np.asarray(rloo_jit(r), np.float64)
    np.testing.assert_allclose(a.sum(axis=1), 0.0, atol=1e-4 * (1 + np.abs(r).max()))


def test_remax_advantages(check_transforms):
    rng = np.random.default_rng(9)
    r, g = rng.standard_normal((3, 4)).astype(np.float32), rng.standard_normal(3).astype(np.float32)
    refs = [f64(r) - f64(g)[:, None], 2 * f64(r) + f64(g)[:, None]]
    check_transforms(losses.remax_advantages, [(r, g), (2 * r, -g)], refs)
    np.testing.assert_allclose(losses.remax_advantages(r[:, 0], g), f64(r[:, 0]) - g, rtol=1e-6)


@pytest.mark.parametrize("group_baseline", [False, True])
def test_reinforce_pp_matches_reference(group_baseline, check_transforms):
    rng = np.random.default_rng(10)
    cases = [(rng.standard_normal((3, 4)).astype(np.float32) + 2.0,) for _ in range(2)]
    refs = []
    for (r,) in cases:
        a = f64(r) - (f64(r).mean(axis=1, keepdims=True) if group_baseline else 0.0)
        refs.append((a - a.mean()) / np.sqrt(a.var(ddof=1) + 1e-8))
    fn = lambda r: losses.reinforce_pp_advantages(r, group_baseline=group_baseline)
    check_transforms(fn, cases, refs, atol=1e-5)


def test_reinforce_pp_baseline_differs_from_plain():
    r = np.array([[1.0, 1.0], [0.0, 1.0]], np.float32)  # group means differ
    a, b = losses.reinforce_pp_advantages(r), losses.reinforce_pp_advantages(r, group_baseline=True)
    np.testing.assert_array_equal(b[0], [0.0, 0.0])  # a constant group has no signal with the baseline
    assert not np.allclose(a, b)


# ------------------------------------------------------------------- reward shaping


def test_last_token_and_kl_penalized_rewards(make_batch):
    b = make_batch(11)
    scores = np.array([1.0, -2.0, 0.5, 3.0], np.float32)
    beta = 0.1
    expected = np.zeros((4, 6))
    for row in range(4):
        idx = np.flatnonzero(b["mask"][row])
        for t in idx:
            expected[row, t] = -beta * (f64(b["logp"][row, t]) - b["ref_logp"][row, t])
        expected[row, idx[-1]] += scores[row]
    got = losses.kl_penalized_rewards(scores, b["logp"], b["ref_logp"], b["mask"], beta)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    place = losses.last_token_rewards(scores, b["mask"])
    np.testing.assert_allclose(np.asarray(place).sum(axis=1), scores)
    shaped = lambda lp: jnp.sum(losses.kl_penalized_rewards(scores, lp, b["ref_logp"], b["mask"], beta))
    g = jax.jit(jax.grad(shaped))(b["logp"])
    assert np.all(np.asarray(g) == 0)  # rewards are constants


def test_adaptive_kl_update():
    for beta, kl, target in [(0.1, 6.0, 6.0), (0.1, 12.0, 6.0), (0.2, 1.0, 6.0), (0.05, 6.6, 6.0)]:
        error = min(max(kl / target - 1.0, -0.2), 0.2)
        expected = beta * (1 + 0.1 * error)
        np.testing.assert_allclose(losses.adaptive_kl_update(beta, kl, target), expected, rtol=1e-6)
    assert float(jax.jit(losses.adaptive_kl_update)(0.1, 12.0, 6.0)) > 0.1  # KL too high: β grows


overlong_jit = jax.jit(lambda n: losses.overlong_penalty(n, 100, 16))


@settings(max_examples=60, deadline=None)
@given(length=st.integers(0, 130))
def test_overlong_penalty_matches_reference(length):
    got = float(overlong_jit(np.array([length]))[0])
    np.testing.assert_allclose(got, ref_overlong(length, 100, 16), rtol=1e-6, atol=1e-7)


# ------------------------------------------------------------------------ bad inputs


def test_bad_input_raises():
    with pytest.raises(ValueError, match="G ≥ 2"):
        losses.group_advantages(np.ones((3, 1)))
    with pytest.raises(ValueError, match="G ≥ 2"):
        losses.rloo_advantages(np.ones((3, 1)))
    with pytest.raises(ValueError, match="2 dimensions"):
        losses.group_advantages(np.ones(3))
    with pytest.raises(ValueError, match="shape mismatch"):
        losses.gae(np.ones((2, 3)), np.ones((2, 4)), np.ones((2, 3), bool))
    with pytest.raises(ValueError, match="greedy_rewards"):
        losses.remax_advantages(np.ones((3, 2)), np.ones(2))
    with pytest.raises(ValueError, match="cache_len"):
        losses.overlong_penalty(np.ones(2), 10, 0)
    with pytest.raises(ValueError, match="target"):
        losses.adaptive_kl_update(0.1, 1.0, 0.0)
