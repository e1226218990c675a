import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from rljax import losses

f64 = lambda x: np.asarray(x, np.float64)


def log_sigmoid(z):
    return -math.log1p(math.exp(-z)) if z > 0 else z - math.log1p(math.exp(z))


def sigmoid(z):
    return math.exp(log_sigmoid(z))


def reward_metrics(chosen, rejected):
    return {
        "rewards_chosen": np.mean(chosen),
        "rewards_rejected": np.mean(rejected),
        "reward_margin": np.mean(f64(chosen) - rejected),
        "reward_accuracy": np.mean(f64(chosen) > rejected),
    }


def ref_dpo(c, r, rc, rr, beta, loss_type, ls):
    """Per pair, DESIGN.md's four DPO losses, and ∂loss/∂(chosen logp)."""
    out, grad = [], []
    for h in f64(c) - rc - (f64(r) - rr):
        z = beta * h
        if loss_type == "sigmoid":
            out.append(-(1 - ls) * log_sigmoid(z) - ls * log_sigmoid(-z))
            grad.append(beta * (-(1 - ls) * sigmoid(-z) + ls * sigmoid(z)))
        elif loss_type == "robust":
            out.append((-(1 - ls) * log_sigmoid(z) + ls * log_sigmoid(-z)) / (1 - 2 * ls))
            grad.append(beta * (-(1 - ls) * sigmoid(-z) - ls * sigmoid(z)) / (1 - 2 * ls))
        elif loss_type == "ipo":
            out.append((h - 1 / (2 * beta)) ** 2)
            grad.append(2 * (h - 1 / (2 * beta)))
        else:
            out.append(max(0.0, 1 - z))
            grad.append(-beta if 1 - z > 0 else 0.0)
    n = len(out)
    metrics = reward_metrics(beta * (f64(c) - rc), beta * (f64(r) - rr))
    return np.mean(out), metrics, np.array(grad) / n


def _pairs(seed, n=5, scale=2.0):
    rng = np.random.default_rng(seed)
    return tuple((-rng.uniform(5, 20, n) + scale * rng.standard_normal(n)).astype(np.float32) for _ in range(4))


@pytest.mark.parametrize(
    "loss_type,ls",
    [("sigmoid", 0.0), ("sigmoid", 0.1), ("robust", 0.0), ("robust", 0.2), ("ipo", 0.0), ("hinge", 0.0)],
)
def test_dpo_matches_reference(loss_type, ls, check_transforms):
    beta = 0.5
    cases = [_pairs(0), _pairs(1)]
    refs = [ref_dpo(*c, beta, loss_type, ls)[:2] for c in cases]
    fn = lambda *a: losses.dpo_loss(*a, beta=beta, loss_type=loss_type, label_smoothing=ls)
    check_transforms(fn, cases, refs)


@pytest.mark.parametrize("loss_type,ls", [("sigmoid", 0.1), ("robust", 0.2), ("ipo", 0.0), ("hinge", 0.0)])
def test_dpo_gradient(loss_type, ls):
    beta = 0.5
    c, r, rc, rr = _pairs(2)
    _, _, grad = ref_dpo(c, r, rc, rr, beta, loss_type, ls)
    if loss_type == "hinge":
        assert 0 < np.count_nonzero(grad) < len(grad)  # both sides of the hinge
    g = jax.jit(jax.grad(
        lambda c, r, rc, rr: losses.dpo_loss(c, r, rc, rr, beta, loss_type, ls)[0], argnums=(0, 1, 2, 3)
    ))(c, r, rc, rr)
    np.testing.assert_allclose(g[0], grad, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(g[1], -grad, rtol=1e-5, atol=1e-7)
    assert np.all(np.asarray(g[2]) == 0) and np.all(np.asarray(g[3]) == 0)  # frozen reference


dpo_jit = jax.jit(losses.dpo_loss, static_argnames=("loss_type",))


@settings(max_examples=40, deadline=None)
@given(h=hnp.arrays(np.float32, (4,), elements=st.floats(-30, 30, width=32)), ls=st.floats(0.0, 0.49))
def test_robust_dpo_is_unbiased_under_label_flips(h, ls):
    """rDPO's defining property (Chowdhury et al. 2024): with preferences flipped with
    probability ls, its expected loss equals the clean sigmoid loss:
    (1 − ls)·ℓ_rob(h) + ls·ℓ_rob(−h) = −log σ(βh)."""
    zero = np.zeros(4, np.float32)
    kw = dict(beta=0.5, loss_type="robust", label_smoothing=ls)
    mixed = (1 - ls) * dpo_jit(h, zero, zero, zero, **kw)[0] + ls * dpo_jit(-h, zero, zero, zero, **kw)[0]
    clean = np.mean([-log_sigmoid(0.5 * float(x)) for x in h])
    # The float32 loss divides terms as large as |βh| by 1 − 2·ls before they cancel, so its
    # rounding error grows by that factor as ls nears 1/2 (e.g. ls = 0.49, βh = 6.5: 1.3e-5).
    rounding = 8 * np.finfo(np.float32).eps * (1 + 0.5 * float(np.abs(h).max())) / (1 - 2 * ls)
    np.testing.assert_allclose(mixed, clean, rtol=1e-4, atol=max(1e-5, rounding))


def ref_kto(logp, ref_logp, desirable, z0, beta, wd, wu):
    losses_ = []
    for lp, rp, d in zip(f64(logp), f64(ref_logp), desirable):
        r = lp - rp
        if d:
            losses_.append(wd - wd * sigmoid(beta * (r - z0)))
        else:
            losses_.append(wu - wu * sigmoid(beta * (z0 - r)))
    r = f64(logp) - ref_logp
    return np.mean(losses_), {
        "kl": z0,
        "rewards_chosen": np.mean(beta * r[desirable]),
        "rewards_rejected": np.mean(beta * r[~desirable]),
    }


@pytest.mark.parametrize("kl_shift", [0.5, -3.0])  # a positive batch KL, and a negative one clamped to 0
def test_kto_matches_reference_with_mismatched_pairs(kl_shift, check_transforms):
    desirable = np.array([True, False, True, True, False])
    cases, refs = [], []
    for seed in range(2):
        lp, rp, kl_lp, kl_rp = _pairs(seed)
        kl_rp = kl_lp - np.float32(kl_shift) + 0.1 * np.arange(5, dtype=np.float32)
        z0 = max(0.0, float(np.mean(f64(kl_lp) - kl_rp)))
        cases.append((lp, rp, desirable, kl_lp, kl_rp))
        refs.append(ref_kto(lp, rp, desirable, z0, 0.2, 1.0, 1.5))
    fn = lambda lp, rp, d, kl, klr: losses.kto_loss(lp, rp, d, kl, klr, beta=0.2, undesirable_weight=1.5)
    check_transforms(fn, cases, refs)


def test_kto_reference_point_has_no_gradient_and_can_be_passed_in():
    lp, rp, kl_lp, kl_rp = _pairs(3)
    desirable = np.array([True, False, False, True, False])
    z0 = float(np.mean(f64(kl_lp) - kl_rp))
    assert z0 > 0
    g = jax.jit(jax.grad(lambda kl: losses.kto_loss(lp, rp, desirable, kl, kl_rp)[0]))(kl_lp)
    assert np.all(np.asarray(g) == 0)
    a, _ = losses.kto_loss(lp, rp, desirable, kl_lp, kl_rp)
    b, metrics = losses.kto_loss(lp, rp, desirable, z0=z0)
    np.testing.assert_allclose(a, b, rtol=1e-6)
    np.testing.assert_allclose(a, ref_kto(lp, rp, desirable, z0, 0.1, 1.0, 1.0)[0], rtol=1e-5)
    assert float(losses.kto_loss(lp, rp, desirable, z0=-2.0)[1]["kl"]) == 0.0  # clamped


def test_simpo_matches_reference(check_transforms):
    beta, gamma = 2.0, 1.0
    cases, refs = [], []
    for seed in range(2):
        c, r, _, _ = _pairs(seed, scale=0.5)
        c, r = c / 10, r / 10  # length-normalised log-probs
        loss = np.mean([-log_sigmoid(beta * float(x) - beta * float(y) - gamma) for x, y in zip(c, r)])
        cases.append((c, r))
        refs.append((loss, reward_metrics(beta * f64(c), beta * f64(r))))
    check_transforms(lambda c, r: losses.simpo_loss(c, r, beta=beta, gamma=gamma), cases, refs)


def test_orpo_matches_reference(check_transforms):
    lam = 0.1
    cases, refs = [], []
    for seed in range(2):
        c, r, _, _ = _pairs(seed, scale=0.5)
        c, r = c / 10, r / 10  # average log-probs in (−2.5, −0.3): probabilities not near 0 or 1
        odds = lambda lp: math.log(math.exp(lp) / (1 - math.exp(lp)))
        ratios = [odds(float(x)) - odds(float(y)) for x, y in zip(c, r)]
        nll = -np.mean(f64(c))
        loss = nll + lam * np.mean([-log_sigmoid(z) for z in ratios])
        metrics = {"nll": nll, "log_odds_ratio": np.mean(ratios)}
        metrics.update(reward_metrics(lam * f64(c), lam * f64(r)))
        cases.append((c, r))
        refs.append((loss, metrics))
    check_transforms(lambda c, r: losses.orpo_loss(c, r, lam=lam), cases, refs)


def test_orpo_log_odds_are_stable_near_probability_one():
    c = jnp.array([-1e-6, -0.5], jnp.float32)
    r = jnp.array([-1e-3, -2.0], jnp.float32)
    loss, metrics = losses.orpo_loss(c, r)
    expected = [math.log(math.expm1(-float(x)) ** -1) for x in c]  # log(p/(1−p)) = −log(e^{−lp} − 1)
    expected = np.mean([e - math.log(math.expm1(-float(y)) ** -1) for e, y in zip(expected, r)])
    np.testing.assert_allclose(metrics["log_odds_ratio"], expected, rtol=1e-3)
    assert np.isfinite(float(loss))


@pytest.mark.parametrize("margin", [0.0, "array"])
def test_bradley_terry_matches_reference(margin, check_transforms):
    eta = 0.01
    cases, refs = [], []
    for seed in range(2):
        c, r, m, _ = _pairs(seed, scale=1.0)
        c, r = c / 5, r / 5
        m = np.abs(m / 10) if margin == "array" else np.zeros(5, np.float32)
        loss = np.mean([-log_sigmoid(float(x) - float(y) - float(z)) for x, y, z in zip(c, r, m)])
        loss += eta * np.mean((f64(c) + r) ** 2)
        cases.append((c, r, m))
        refs.append((loss, reward_metrics(f64(c), f64(r))))
    check_transforms(lambda c, r, m: losses.bradley_terry_loss(c, r, margin=m, center_coef=eta), cases, refs)


def test_bad_input_raises():
    c, r, rc, rr = _pairs(4)
    with pytest.raises(ValueError, match="unknown DPO loss_type"):
        losses.dpo_loss(c, r, rc, rr, loss_type="exo")
    with pytest.raises(ValueError, match="label_smoothing applies"):
        losses.dpo_loss(c, r, rc, rr, loss_type="ipo", label_smoothing=0.1)
    with pytest.raises(ValueError, match="label_smoothing < 0.5"):
        losses.dpo_loss(c, r, rc, rr, loss_type="robust", label_smoothing=0.5)
    with pytest.raises(ValueError, match="shape mismatch"):
        losses.dpo_loss(c, r[:3], rc, rr)
    with pytest.raises(ValueError, match="1 dimensions"):
        losses.simpo_loss(c[None], r[None])
    with pytest.raises(ValueError, match="either kl_logp and kl_ref_logp, or z0"):
        losses.kto_loss(c, r, c > r)
    with pytest.raises(ValueError, match="either kl_logp and kl_ref_logp, or z0"):
        losses.kto_loss(c, r, c > r, rc, rr, z0=0.1)
    with pytest.raises(ValueError, match="shape mismatch"):
        losses.bradley_terry_loss(c, r, margin=np.ones(2))
