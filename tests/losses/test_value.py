import jax
import numpy as np
import pytest

from rljax import losses

f64 = lambda x: np.asarray(x, np.float64)


def ref_value(values, old, returns, mask, clip, mode):
    """Per-token 0.5·max((V−R)², (V_old + clip(V−V_old) − R)²), aggregated; the derivative in V;
    explained variance and clip fraction over the real tokens."""
    v, o, r = f64(values), f64(old), f64(returns)
    terms, grads, hits = np.zeros(v.shape), np.zeros(v.shape), []
    for i, j in zip(*np.nonzero(mask)):
        e, de = (v[i, j] - r[i, j]) ** 2, v[i, j] - r[i, j]
        if clip is not None:
            vc = o[i, j] + min(max(v[i, j] - o[i, j], -clip), clip)
            ec = (vc - r[i, j]) ** 2
            hits.append(ec > e)
            if ec > e:
                e, de = ec, (vc - r[i, j]) * (abs(v[i, j] - o[i, j]) < clip)
        terms[i, j], grads[i, j] = 0.5 * e, de
    m = f64(mask)
    b = m.shape[0]
    weights = m / m.sum() if mode == "token-mean" else m / (b * m.sum(axis=1, keepdims=True))
    metrics = {"explained_variance": 1 - np.var((r - v)[mask]) / np.var(r[mask])}
    if clip is not None:
        metrics["value_clipfrac"] = np.mean(hits)
    return float(np.sum(terms * weights)), metrics, grads * weights


@pytest.mark.parametrize("clip", [None, 0.2])
@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean"])
def test_value_loss_matches_reference(clip, agg, check_transforms, make_batch):
    cases, refs = [], []
    for seed in range(2):
        b = make_batch(seed)
        returns = b["values"] + b["rewards"]
        old = b["values"] + 0.5 * b["tok_adv"]
        loss, metrics, _ = ref_value(b["values"], old, returns, b["mask"], clip, agg)
        if clip is not None:
            assert 0 < metrics["value_clipfrac"] < 1
        cases.append((b["values"], old, returns, b["mask"]))
        refs.append((loss, metrics))
    fn = lambda v, o, r, m: losses.value_loss(v, o, r, m, clip=clip, agg=agg)
    check_transforms(fn, cases, refs)


@pytest.mark.parametrize("clip", [None, 0.2])
def test_value_loss_gradient(clip, make_batch):
    b = make_batch(3)
    returns, old = b["values"] + b["rewards"], b["values"] + 0.5 * b["tok_adv"]
    _, _, grads = ref_value(b["values"], old, returns, b["mask"], clip, "token-mean")
    g, g_old, g_ret = jax.jit(jax.grad(
        lambda v, o, r: losses.value_loss(v, o, r, b["mask"], clip=clip)[0], argnums=(0, 1, 2)
    ))(b["values"], old, returns)
    np.testing.assert_allclose(g, grads, rtol=1e-5, atol=1e-7)
    assert np.all(np.asarray(g)[~b["mask"]] == 0)
    assert np.all(np.asarray(g_old) == 0) and np.all(np.asarray(g_ret) == 0)  # targets are constants


def test_bad_input_raises(make_batch):
    b = make_batch(4)
    with pytest.raises(ValueError, match="needs old_values"):
        losses.value_loss(b["values"], None, b["rewards"], b["mask"], clip=0.2)
    with pytest.raises(ValueError, match="shape mismatch"):
        losses.value_loss(b["values"], b["values"], b["rewards"][:, :2], b["mask"])
    with pytest.raises(ValueError, match="unknown aggregation mode"):
        losses.value_loss(b["values"], None, b["rewards"], b["mask"], agg="mean")
