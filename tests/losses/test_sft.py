import jax
import numpy as np
import pytest

from rljax import losses


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-sum"])
def test_sft_loss_matches_reference(agg, check_transforms, make_batch):
    cases, refs = [], []
    for seed in range(2):
        b = make_batch(seed)
        lp, m = b["logp"], b["mask"]
        per_seq = [-np.sum(lp[i][m[i]], dtype=np.float64) for i in range(len(m))]
        loss = sum(per_seq) / (m.sum() if agg == "token-mean" else len(m))
        nll = -np.mean(lp[m], dtype=np.float64)
        cases.append((lp, m))
        refs.append((loss, {"nll": nll, "perplexity": np.exp(nll)}))
    check_transforms(lambda lp, m: losses.sft_loss(lp, m, agg=agg), cases, refs)


def test_sft_gradient_is_minus_mask_over_count(make_batch):
    b = make_batch(3)
    g = jax.jit(jax.grad(lambda lp: losses.sft_loss(lp, b["mask"])[0]))(b["logp"])
    np.testing.assert_array_equal(np.asarray(g)[~b["mask"]], 0.0)
    np.testing.assert_allclose(np.asarray(g)[b["mask"]], -1.0 / b["mask"].sum(), rtol=1e-6)


def test_sft_end_to_end_from_logits():
    """From logits: the token-mean NLL is the cross-entropy of the softmax."""
    rng = np.random.default_rng(4)
    logits = rng.standard_normal((2, 4, 9)).astype(np.float32)
    targets = rng.integers(0, 9, (2, 4))
    mask = np.array([[1, 1, 1, 0], [1, 1, 0, 0]], bool)
    x = logits.astype(np.float64)
    logp = x - np.log(np.exp(x).sum(-1, keepdims=True))
    expected = -np.mean([logp[i, t, targets[i, t]] for i, t in zip(*np.nonzero(mask))])
    loss, _ = losses.sft_loss(losses.token_logprobs(logits, targets), mask)
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
