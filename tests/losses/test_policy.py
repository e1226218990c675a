import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rljax import losses

f64 = lambda x: np.asarray(x, np.float64)


# ------------------------------------------------------------------------ references


def agg_weights(mask, mode, norm_len=None):
    """∂ aggregate / ∂ x_bt for each mode, written out."""
    m = f64(mask)
    b, t = m.shape
    if mode == "token-mean":
        return m / m.sum()
    if mode == "seq-mean-token-mean":
        return m / (b * m.sum(axis=1, keepdims=True))
    if mode == "seq-mean-token-sum":
        return m / b
    return m / (b * (t if norm_len is None else norm_len))


def reduce(terms, mask, mode):
    return float(np.sum(terms * agg_weights(mask, mode)))


def masked_stats(x, mask):
    vals = f64(x)[mask]
    return {"ratio_mean": vals.mean(), "ratio_max": vals.max(), "ratio_min": vals.min()}


def ref_ppo(logp, old, adv, mask, eps=0.2, eps_high=None, dual=None):
    """Per-token PPO-clip loss and its derivative in log π, token by token."""
    eps_high = eps if eps_high is None else eps_high
    terms, grads = np.zeros(logp.shape), np.zeros(logp.shape)
    low = high = dual_hit = 0
    for i, j in zip(*np.nonzero(mask)):
        a = float(adv[i, j])
        r = np.exp(float(logp[i, j]) - float(old[i, j]))
        unclipped, clipped = -a * r, -a * min(max(r, 1 - eps), 1 + eps_high)
        term, grad = (unclipped, -a * r) if unclipped >= clipped else (clipped, 0.0)
        low += a < 0 and r < 1 - eps
        high += a > 0 and r > 1 + eps_high
        if dual is not None and a < 0 and -a * dual < term:
            term, grad = -a * dual, 0.0
            dual_hit += 1
        terms[i, j], grads[i, j] = term, grad
    n = mask.sum()
    d = f64(old) - f64(logp)  # k3 of KL(π_old‖π_θ) on samples of π_old
    metrics = {"clipfrac_low": low / n, "clipfrac_high": high / n, "approx_kl": (np.exp(-d) + d - 1)[mask].mean()}
    metrics.update(masked_stats(np.exp(f64(logp) - f64(old)), mask))
    if dual is not None:
        metrics["clipfrac_dual"] = dual_hit / n
    return terms, grads, metrics


def ref_kl_and_grad(logp, ref, kind):
    d = f64(logp) - f64(ref)
    return {
        "k1": (d, np.ones_like(d)),
        "k2": (d**2 / 2, d),
        "k3": (np.exp(-d) + d - 1, 1 - np.exp(-d)),
    }[kind]


def ref_gspo(logp, old, adv, mask, eps, eps_high, variant="sequence"):
    """Sequence ratio s_i, the clipped objective per sequence, and ∂/∂ log π per token for
    the seq-mean-token-mean loss (1/B) Σ_i (1/|y_i|) Σ_t ℓ_it; adv [B] or [B, T].

    GSPO: ∂s_i/∂ log π_it = s_i/|y_i| for every token t of sequence i. GSPO-token:
    s_it = sg(s_i)·π_it/sg(π_it), so ∂s_it/∂ log π_it' = s_i·[t = t']."""
    b = logp.shape[0]
    adv = np.broadcast_to(f64(adv).reshape(b, -1), logp.shape)
    loss, grads = 0.0, np.zeros(logp.shape)
    for i in range(b):
        idx = np.flatnonzero(mask[i])
        s = np.exp(np.mean(f64(logp[i, idx]) - f64(old[i, idx])))
        for t in idx:
            a = adv[i, t]
            unclipped, clipped = -a * s, -a * min(max(s, 1 - eps), 1 + eps_high)
            loss += max(unclipped, clipped) / (b * len(idx))
            if unclipped >= clipped and variant == "sequence":
                grads[i, idx] += -a * s / len(idx) / (b * len(idx))
            elif unclipped >= clipped:
                grads[i, t] += -a * s / (b * len(idx))
    return loss, grads


def ref_importance_weights(logp, sampler, mask, level, mode, high, low):
    lr = f64(logp) - f64(sampler)
    if level == "sequence":
        lr = np.repeat([[np.sum(lr[i][mask[i]])] for i in range(lr.shape[0])], lr.shape[1], axis=1)
    rho = np.exp(lr)
    if mode == "truncate":
        w, hit = np.minimum(rho, high), rho > high
    else:
        keep = (rho <= high) & (rho >= (low or 0.0))
        w, hit = np.where(keep, rho, 0.0), ~keep
    return np.where(mask, w, 0.0), hit[mask].mean()


# ----------------------------------------------------------------------------- PPO

PPO_CASES = [
    dict(agg="token-mean"),
    dict(agg="seq-mean-token-mean", clip_eps_high=0.28),
    dict(agg="seq-mean-token-sum", dual_clip=1.5),
    dict(agg="seq-mean-token-sum-norm", clip_eps=0.1, clip_eps_high=0.3, dual_clip=1.2),
]


@pytest.mark.parametrize("case", PPO_CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
@pytest.mark.parametrize("adv_key", ["seq_adv", "tok_adv"])
def test_ppo_matches_reference(case, adv_key, check_transforms, make_batch):
    case = dict(case)
    agg = case.pop("agg")
    ref_kw = dict(eps=case.get("clip_eps", 0.2), eps_high=case.get("clip_eps_high"), dual=case.get("dual_clip"))
    cases, refs = [], []
    for seed in range(2):
        b = make_batch(seed, spread=0.4)
        adv = b[adv_key] if adv_key == "tok_adv" else np.repeat(b[adv_key][:, None], 6, axis=1)
        terms, _, metrics = ref_ppo(b["logp"], b["old_logp"], adv, b["mask"], **ref_kw)
        assert metrics["clipfrac_low"] + metrics["clipfrac_high"] > 0  # the data exercises the clip
        cases.append((b["logp"], b["old_logp"], b[adv_key], b["mask"]))
        refs.append((reduce(terms, b["mask"], agg), metrics))
    fn = lambda lp, old, adv, m: losses.ppo_policy_loss(lp, old, adv, m, agg=agg, **case)
    check_transforms(fn, cases, refs)


@pytest.mark.parametrize("case", PPO_CASES[1:], ids=["high", "dual", "all"])
def test_ppo_gradient_matches_reference(case, make_batch):
    case = dict(case)
    agg = case.pop("agg")
    b = make_batch(5, spread=0.4)
    _, grads, _ = ref_ppo(
        b["logp"], b["old_logp"], b["tok_adv"], b["mask"],
        eps=case.get("clip_eps", 0.2), eps_high=case.get("clip_eps_high"), dual=case.get("dual_clip"),
    )
    assert np.count_nonzero(grads[b["mask"]] == 0) > 0  # some tokens are clipped
    loss = lambda lp: losses.ppo_policy_loss(lp, b["old_logp"], b["tok_adv"], b["mask"], agg=agg, **case)[0]
    g = jax.jit(jax.grad(loss))(b["logp"])
    np.testing.assert_allclose(g, grads * agg_weights(b["mask"], agg), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("adv_key", ["seq_adv", "tok_adv"])
def test_ppo_gradient_at_ratio_one_equals_reinforce(adv_key, make_batch):
    b = make_batch(6)
    old = b["logp"]  # ratio exactly 1
    ppo = jax.jit(jax.grad(lambda lp: losses.ppo_policy_loss(lp, old, b[adv_key], b["mask"], dual_clip=2.0)[0]))
    reinforce = jax.jit(jax.grad(lambda lp: losses.reinforce_loss(lp, b[adv_key], b["mask"])[0]))
    np.testing.assert_allclose(ppo(b["logp"]), reinforce(b["logp"]), rtol=1e-6, atol=1e-8)
    assert np.abs(np.asarray(reinforce(b["logp"]))).max() > 0


def test_reinforce_matches_reference(check_transforms, make_batch):
    cases, refs = [], []
    for seed in range(2):
        b = make_batch(seed)
        cases.append((b["logp"], b["tok_adv"], b["mask"]))
        refs.append((reduce(-f64(b["tok_adv"]) * b["logp"], b["mask"], "token-mean"),))
    check_transforms(lambda lp, a, m: losses.reinforce_loss(lp, a, m)[:1], cases, refs)


# ----------------------------------------------------------------------------- GRPO


@pytest.mark.parametrize("kind", ["k1", "k2", "k3"])
def test_grpo_matches_reference(kind, check_transforms, make_batch):
    beta, agg = 0.05, "seq-mean-token-mean"
    cases, refs = [], []
    for seed in range(2):
        b = make_batch(seed, spread=0.4)
        terms, _, metrics = ref_ppo(b["logp"], b["old_logp"], b["tok_adv"], b["mask"], eps_high=0.28)
        kl, _ = ref_kl_and_grad(b["logp"], b["ref_logp"], kind)
        metrics["kl"] = kl[b["mask"]].mean()
        cases.append((b["logp"], b["old_logp"], b["ref_logp"], b["tok_adv"], b["mask"]))
        refs.append((reduce(terms + beta * kl, b["mask"], agg), metrics))
    fn = lambda *args: losses.grpo_loss(*args, clip_eps_high=0.28, beta=beta, kl=kind)
    check_transforms(fn, cases, refs)


@pytest.mark.parametrize("kind", ["k1", "k2", "k3"])
def test_grpo_gradient_matches_reference(kind, make_batch):
    beta = 0.1
    b = make_batch(7, spread=0.4)
    _, ppo_grads, _ = ref_ppo(b["logp"], b["old_logp"], b["seq_adv"][:, None].repeat(6, 1), b["mask"])
    _, kl_grads = ref_kl_and_grad(b["logp"], b["ref_logp"], kind)
    expected = (ppo_grads + beta * kl_grads) * agg_weights(b["mask"], "seq-mean-token-mean")
    g, g_ref = jax.jit(jax.grad(
        lambda lp, rp: losses.grpo_loss(lp, b["old_logp"], rp, b["seq_adv"], b["mask"], beta=beta, kl=kind)[0],
        argnums=(0, 1),
    ))(b["logp"], b["ref_logp"])
    np.testing.assert_allclose(g, expected, rtol=1e-5, atol=1e-7)
    assert np.all(np.asarray(g_ref) == 0)  # the reference policy is frozen


def test_grpo_without_kl_is_ppo(make_batch):
    b = make_batch(8)
    args = (b["logp"], b["old_logp"], b["seq_adv"], b["mask"])
    grpo, _ = losses.grpo_loss(b["logp"], b["old_logp"], None, b["seq_adv"], b["mask"], beta=0.0, agg="token-mean")
    ppo, _ = losses.ppo_policy_loss(*args)
    np.testing.assert_allclose(grpo, ppo, rtol=1e-6)


# ----------------------------------------------------------------------------- GSPO


def test_gspo_matches_reference(check_transforms, make_batch):
    eps, eps_high = 0.02, 0.03  # wider than the paper's, so that random data is both clipped and not
    cases, refs = [], []
    for seed in range(2):
        b = make_batch(seed, b=6, t=6, spread=0.05)
        loss, _ = ref_gspo(b["logp"], b["old_logp"], b["seq_adv"], b["mask"], eps, eps_high)
        cases.append((b["logp"], b["old_logp"], b["seq_adv"], b["mask"]))
        refs.append((loss,))
    for variant in ("sequence", "token"):
        fn = lambda lp, old, adv, m: losses.gspo_loss(lp, old, adv, m, eps, eps_high, variant=variant)[:1]
        check_transforms(fn, cases, refs)


@pytest.mark.parametrize("variant,adv_key", [("sequence", "seq_adv"), ("token", "seq_adv"), ("token", "tok_adv")])
def test_gspo_gradient_matches_reference(variant, adv_key, make_batch):
    b = make_batch(9, b=6, t=6, spread=0.05)
    eps, eps_high = 0.02, 0.03
    loss, grads = ref_gspo(b["logp"], b["old_logp"], b[adv_key], b["mask"], eps, eps_high, variant)
    got, g = jax.jit(jax.value_and_grad(
        lambda lp: losses.gspo_loss(lp, b["old_logp"], b[adv_key], b["mask"], eps, eps_high, variant=variant)[0]
    ))(b["logp"])
    np.testing.assert_allclose(got, loss, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(g, grads, rtol=1e-5, atol=1e-7)
    clipped = grads[b["mask"]] == 0
    assert 0 < clipped.sum() < clipped.size  # some tokens' sequences are clipped, some not


# ----------------------------------------------------------------------------- CISPO


@pytest.mark.parametrize("eps_low,eps_high", [(None, 0.28), (0.2, 0.1)])
def test_cispo_matches_reference(eps_low, eps_high, check_transforms, make_batch):
    cases, refs = [], []
    for seed in range(2):
        b = make_batch(seed, spread=0.4)
        r = np.exp(f64(b["logp"]) - b["old_logp"])
        w = np.clip(r, None if eps_low is None else 1 - eps_low, 1 + eps_high)
        metrics = masked_stats(r, b["mask"])
        metrics["clipfrac_high"] = (r > 1 + eps_high)[b["mask"]].mean()
        assert metrics["clipfrac_high"] > 0
        if eps_low is not None:
            metrics["clipfrac_low"] = (r < 1 - eps_low)[b["mask"]].mean()
        cases.append((b["logp"], b["old_logp"], b["tok_adv"], b["mask"]))
        refs.append((reduce(-w * b["tok_adv"] * b["logp"], b["mask"], "token-mean"), metrics))
    fn = lambda lp, old, adv, m: losses.cispo_loss(lp, old, adv, m, clip_eps_low=eps_low, clip_eps_high=eps_high)
    check_transforms(fn, cases, refs)


def test_cispo_gradient_is_the_detached_weight_times_reinforce(make_batch):
    """∂ℓ/∂ log π = −clip(ρ)·A: the clipped weight multiplies the REINFORCE gradient and is not
    itself differentiated, so clipped tokens keep their gradient (unlike PPO)."""
    b = make_batch(10, spread=0.4)
    w = np.clip(np.exp(f64(b["logp"]) - b["old_logp"]), None, 1.28)
    g = jax.jit(jax.grad(lambda lp: losses.cispo_loss(lp, b["old_logp"], b["tok_adv"], b["mask"])[0]))(b["logp"])
    np.testing.assert_allclose(g, -w * b["tok_adv"] * agg_weights(b["mask"], "token-mean"), rtol=1e-5, atol=1e-8)
    assert np.all(np.asarray(g)[b["mask"]] != 0)


# --------------------------------------------------------------- importance weights


@pytest.mark.parametrize("level", ["token", "sequence"])
@pytest.mark.parametrize("mode,low", [("truncate", None), ("mask", None), ("mask", 0.8)])
def test_importance_weights_match_reference(level, mode, low, check_transforms, make_batch):
    high = 1.2
    cases, refs = [], []
    for seed in range(2):
        b = make_batch(seed, b=6, t=6, spread=0.3)
        w, frac = ref_importance_weights(b["old_logp"], b["logp"], b["mask"], level, mode, high, low)
        assert 0 < frac < 1
        key = "is_clipfrac" if mode == "truncate" else "is_maskfrac"
        cases.append((b["old_logp"], b["logp"], b["mask"]))
        refs.append((w, {key: frac, "is_weight_mean": w[b["mask"]].mean()}))
    fn = lambda lp, sp, m: losses.importance_weights(lp, sp, m, level=level, mode=mode, high=high, low=low)
    check_transforms(fn, cases, refs)


def test_is_weights_compose_with_any_loss(make_batch):
    b = make_batch(11, spread=0.3)
    w, _ = losses.importance_weights(b["old_logp"], b["ref_logp"], b["mask"], high=1.1)
    for agg in losses.AGG_MODES:
        got, _ = losses.ppo_policy_loss(b["logp"], b["old_logp"], b["seq_adv"], b["mask"], agg=agg, is_weights=w)
        term = losses.ppo_term(b["logp"], b["old_logp"], b["seq_adv"], b["mask"])
        np.testing.assert_allclose(got, losses.aggregate(term * w, b["mask"], agg), rtol=1e-6)
    loss = lambda w: losses.cispo_loss(b["logp"], b["old_logp"], b["seq_adv"], b["mask"], is_weights=w)[0]
    g = jax.jit(jax.grad(loss))(w)
    assert np.all(np.asarray(g) == 0)  # the weights are constants


def test_importance_weights_have_no_gradient_and_no_overflow():
    lp = jnp.zeros((1, 200))
    sp = jnp.full((1, 200), -1.0)  # sequence log-ratio 200: exp overflows float32
    w, metrics = losses.importance_weights(lp, sp, jnp.ones((1, 200), bool), level="sequence", mode="truncate")
    np.testing.assert_allclose(w, 2.0)
    w, _ = losses.importance_weights(lp, sp, jnp.ones((1, 200), bool), level="sequence", mode="mask")
    np.testing.assert_array_equal(w, 0.0)
    g = jax.jit(jax.grad(lambda lp: jnp.sum(losses.importance_weights(lp, sp, jnp.ones((1, 200), bool))[0])))(lp)
    assert np.all(np.asarray(g) == 0)


# ------------------------------------------------------------------------- entropy


def test_entropy_bonus_and_metric(make_batch):
    b = make_batch(12)
    h = np.abs(b["rewards"])
    loss, metrics = losses.entropy_bonus(h, b["mask"], coef=0.01)
    np.testing.assert_allclose(loss, -0.01 * h[b["mask"]].astype(np.float64).mean(), rtol=1e-5)
    np.testing.assert_allclose(metrics["entropy"], h[b["mask"]].astype(np.float64).mean(), rtol=1e-5)
    _, metrics = losses.ppo_policy_loss(b["logp"], b["old_logp"], b["seq_adv"], b["mask"], entropy=h)
    np.testing.assert_allclose(metrics["entropy"], h[b["mask"]].astype(np.float64).mean(), rtol=1e-5)


# ----------------------------------------------------------------- shared properties

LOSSES = {
    "reinforce": lambda lp, old, ref, adv, m: losses.reinforce_loss(lp, adv, m),
    "ppo": lambda lp, old, ref, adv, m: losses.ppo_policy_loss(lp, old, adv, m, dual_clip=2.0),
    "grpo": lambda lp, old, ref, adv, m: losses.grpo_loss(lp, old, ref, adv, m),
    "grpo-k3+": lambda lp, old, ref, adv, m: losses.grpo_loss(lp, old, ref, adv, m, kl="k3+", agg="token-mean"),
    "gspo": lambda lp, old, ref, adv, m: losses.gspo_loss(lp, old, adv, m, 0.05, 0.05),
    "gspo-token": lambda lp, old, ref, adv, m: losses.gspo_loss(lp, old, adv, m, 0.05, 0.05, variant="token"),
    "cispo": lambda lp, old, ref, adv, m: losses.cispo_loss(lp, old, adv, m, clip_eps_low=0.2),
    "entropy": lambda lp, old, ref, adv, m: losses.entropy_bonus(-lp, m, coef=0.1),
}


@pytest.mark.parametrize("name", LOSSES)
def test_masked_tokens_get_exactly_zero_gradient(name, make_batch):
    """Padding holds junk (huge or inf log-probs): masked positions still get exactly 0."""
    b = make_batch(13, spread=0.05)
    m = b["mask"]
    junk = lambda x, v: np.where(m, x, v).astype(np.float32)
    lp, old, ref = junk(b["logp"], -1e4), junk(b["old_logp"], 80.0), junk(b["ref_logp"], -np.inf)
    grad = np.asarray(jax.jit(jax.grad(lambda lp: LOSSES[name](lp, old, ref, b["seq_adv"], m)[0]))(lp))
    assert np.all(grad[~m] == 0)
    assert np.all(np.isfinite(grad)) and np.any(grad[m] != 0)


@pytest.mark.parametrize("name", [n for n in LOSSES if n != "entropy"])
def test_sequence_advantages_broadcast_over_tokens(name, make_batch):
    b = make_batch(14, spread=0.05)
    args = (b["logp"], b["old_logp"], b["ref_logp"])
    tiled = np.repeat(b["seq_adv"][:, None], 6, axis=1)
    if name == "gspo":  # sequence-level GSPO takes [B] only
        with pytest.raises(ValueError, match="one advantage per sequence"):
            LOSSES[name](*args, tiled, b["mask"])
        return
    a, _ = LOSSES[name](*args, b["seq_adv"], b["mask"])
    c, _ = LOSSES[name](*args, tiled, b["mask"])
    np.testing.assert_allclose(a, c, rtol=1e-6)


@pytest.mark.parametrize("agg", losses.AGG_MODES)
def test_ppo_gradient_accumulation_with_global_counts(agg, make_batch):
    b = make_batch(15, b=6, t=6, spread=0.4)
    loss = functools.partial(losses.ppo_policy_loss, agg=agg, norm_len=7)
    full_loss = lambda lp: loss(lp, b["old_logp"], b["tok_adv"], b["mask"])[0]
    full, g_full = jax.jit(jax.value_and_grad(full_loss))(b["logp"])
    counts = losses.global_counts(b["mask"])
    total, grads = 0.0, []
    for sl in (slice(0, 2), slice(2, 3), slice(3, 6)):
        v, g = jax.jit(jax.value_and_grad(
            lambda lp: loss(lp, b["old_logp"][sl], b["tok_adv"][sl], b["mask"][sl], **counts)[0]
        ))(b["logp"][sl])
        total, grads = total + v, grads + [g]
    np.testing.assert_allclose(total, full, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(np.concatenate(grads), g_full, rtol=1e-5, atol=1e-8)


def test_bad_input_raises(make_batch):
    b = make_batch(16)
    lp, old, adv, m = b["logp"], b["old_logp"], b["seq_adv"], b["mask"]
    with pytest.raises(ValueError, match="unknown aggregation mode"):
        losses.ppo_policy_loss(lp, old, adv, m, agg="sum")
    with pytest.raises(ValueError, match="shape mismatch"):
        losses.ppo_policy_loss(lp, old[:, :3], adv, m)
    with pytest.raises(ValueError, match="advantages must have shape"):
        losses.ppo_policy_loss(lp, old, adv[:2], m)
    with pytest.raises(ValueError, match="dual_clip"):
        losses.ppo_policy_loss(lp, old, adv, m, dual_clip=0.9)
    with pytest.raises(ValueError, match="needs ref_logp"):
        losses.grpo_loss(lp, old, None, adv, m)
    with pytest.raises(ValueError, match="unknown KL kind"):
        losses.grpo_loss(lp, old, old, adv, m, kl="k5")
    with pytest.raises(ValueError, match="unknown GSPO variant"):
        losses.gspo_loss(lp, old, adv, m, variant="group")
    with pytest.raises(ValueError, match="unknown importance-sampling mode"):
        losses.importance_weights(lp, old, m, mode="clip")
    with pytest.raises(ValueError, match="unknown importance-sampling level"):
        losses.importance_weights(lp, old, m, level="batch")
