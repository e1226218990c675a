"""Preference and reward-model steps against float64 NumPy references computed from the model's
logits and values; gradient accumulation; pair encoding; the learned reward in the RL loop."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rljax import models
from rljax.train import preference, reward_model
from rljax.train.state import TrainState

CFG = models.get_config("tiny", d_model=32, n_layers=1, n_heads=2, n_kv_heads=1, head_dim=16, mlp_dim=64,
                        vocab_size=64)
B, T, P = 4, 9, 4  # pairs, tokens, prompt tokens


def _rows(rng, n):
    tokens = rng.integers(0, CFG.vocab_size, (n, T)).astype(np.int32)
    lengths = rng.integers(2, T - P + 1, n)
    attention = np.arange(T)[None] < (P + lengths)[:, None]
    return tokens, attention, attention & (np.arange(T)[None] >= P)


def _batch(loss, seed=0):
    rng = np.random.default_rng(seed)
    if loss == "kto":
        tokens, attention, loss_mask = _rows(rng, 2 * B)
        kl = _rows(rng, 2 * B)
        batch = {"tokens": tokens, "attention_mask": attention, "loss_mask": loss_mask,
                 "kl_tokens": kl[0], "kl_attention_mask": kl[1], "kl_loss_mask": kl[2],
                 "desirable": np.arange(2 * B) % 3 != 0}
    else:
        batch = dict(zip(("tokens", "attention_mask", "loss_mask"), (x.reshape(B, 2, T) for x in _rows(rng, 2 * B))))
    return {k: jnp.asarray(v) for k, v in batch.items()}


def np_logps(params, tokens, attention, loss_mask, average, cfg=CFG):
    """Sequence log-probs in float64 from the model's logits: Σ (or mean) over the loss mask of
    log softmax(logits[t-1])[tokens[t]]."""
    lead = tokens.shape[:-1]
    tokens, attention, loss_mask = (np.asarray(x).reshape(-1, T) for x in (tokens, attention, loss_mask))
    logits, _ = models.apply(cfg, params, tokens, mask=attention)
    z = np.asarray(logits, np.float64)[:, :-1]
    logp = z - z.max(-1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
    tok = np.take_along_axis(logp, tokens[:, 1:, None], -1)[..., 0]
    m = loss_mask[:, 1:]
    out = (tok * m).sum(-1)
    if average:
        out = out / m.sum(-1)
    return out.reshape(lead)


def log_sigmoid(x):
    return -np.logaddexp(0.0, -x)


def np_loss(loss, logp, ref, batch, hp, z0=None):
    if loss == "kto":
        r = logp - ref
        good = np.asarray(batch["desirable"])
        v = np.where(good, 1 / (1 + np.exp(-hp["beta"] * (r - z0))), 1 / (1 + np.exp(-hp["beta"] * (z0 - r))))
        return np.mean(1.0 - v)
    c, r = logp[:, 0], logp[:, 1]
    if loss == "simpo":
        return np.mean(-log_sigmoid(hp["beta"] * (c - r) - hp["gamma"]))
    if loss == "orpo":
        log_odds = lambda x: x - np.log1p(-np.exp(x))  # noqa: E731
        return -np.mean(c) + hp["lam"] * np.mean(-log_sigmoid(log_odds(c) - log_odds(r)))
    h = (c - ref[:, 0]) - (r - ref[:, 1])
    if loss == "ipo" or hp.get("loss_type") == "ipo":
        return np.mean((h - 1 / (2 * hp["beta"])) ** 2)
    if hp.get("loss_type") == "hinge":
        return np.mean(np.maximum(0.0, 1 - hp["beta"] * h))
    return np.mean(-log_sigmoid(hp["beta"] * h))


CASES = [
    ("dpo", {"beta": 0.5, "loss_type": "sigmoid"}),
    ("dpo", {"beta": 0.5, "loss_type": "hinge"}),
    ("dpo", {"beta": 0.5, "loss_type": "robust", "label_smoothing": 0.1}),
    ("ipo", {"beta": 0.5}),
    ("kto", {"beta": 0.5}),
    ("simpo", {"beta": 2.0, "gamma": 0.5}),
    ("orpo", {"lam": 0.3}),
]


def _setup(loss, hp, micro_batches=1, lr=0.1):
    params = models.init(CFG, jax.random.PRNGKey(0))
    ref_params = models.init(CFG, jax.random.PRNGKey(1))  # a reference that differs from the policy
    batch = preference.add_reference_logps(CFG, ref_params, _batch(loss), loss)
    optimizer = optax.sgd(lr)
    step = jax.jit(preference.make_preference_step(CFG, optimizer, loss, micro_batches, **hp))
    return params, ref_params, batch, step, TrainState.create(params, optimizer, jax.random.PRNGKey(0))


@pytest.mark.parametrize("loss, hp", CASES, ids=[f"{c[0]}-{c[1].get('loss_type', '')}" for c in CASES])
def test_preference_step_loss_matches_numpy(loss, hp):
    params, ref_params, batch, step, state = _setup(loss, hp)
    average = loss in preference.LENGTH_NORMALISED
    logp = np_logps(params, batch["tokens"], batch["attention_mask"], batch["loss_mask"], average)
    ref = (np_logps(ref_params, batch["tokens"], batch["attention_mask"], batch["loss_mask"], average)
           if loss not in preference.REFERENCE_FREE else None)
    z0 = None
    if loss == "kto":
        kl = [batch[f"kl_{k}"] for k in ("tokens", "attention_mask", "loss_mask")]
        z0 = max(0.0, np.mean(np_logps(params, *kl, average) - np_logps(ref_params, *kl, average)))
    if hp.get("loss_type") == "robust":  # (−(1−ε)·logσ(βh) + ε·logσ(−βh)) / (1 − 2ε)
        h = (logp[:, 0] - ref[:, 0]) - (logp[:, 1] - ref[:, 1])
        eps, bh = hp["label_smoothing"], hp["beta"] * h
        expected = np.mean((-(1 - eps) * log_sigmoid(bh) + eps * log_sigmoid(-bh)) / (1 - 2 * eps))
    else:
        expected = np_loss(loss, logp, ref, batch, hp, z0)
    _, metrics = step(state, batch, jax.random.PRNGKey(0))
    np.testing.assert_allclose(float(metrics["loss"]), expected, rtol=2e-5, atol=1e-6)
    if ref is not None:
        np.testing.assert_allclose(np.asarray(batch["ref_logp"]), ref, rtol=2e-5, atol=1e-5)


@pytest.mark.parametrize("loss, hp", [CASES[0], CASES[4], CASES[6]], ids=["dpo", "kto", "orpo"])
def test_micro_batches_give_the_same_update(loss, hp):
    _, _, batch, one, state = _setup(loss, hp)
    *_, two, state2 = _setup(loss, hp, micro_batches=2)
    (s1, m1), (s2, m2) = one(state, batch, None), two(state2, batch, None)
    np.testing.assert_allclose(float(m1["loss"]), float(m2["loss"]), rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), s1.params, s2.params)


def test_preference_steps_raise_the_margin():
    *_, batch, step, state = _setup("dpo", {"beta": 0.5})
    losses_seen = []
    for _ in range(5):
        state, metrics = step(state, batch, None)
        losses_seen.append(float(metrics["loss"]))
    assert losses_seen[-1] < losses_seen[0] and float(metrics["reward_accuracy"]) == 1.0
    with pytest.raises(ValueError, match="unknown preference loss"):
        preference.make_preference_step(CFG, optax.sgd(0.1), "rlhf")


def test_reward_model_step_matches_numpy_and_accuracy():
    params = models.init(CFG, jax.random.PRNGKey(0))
    rm_cfg, rm_params = reward_model.init_reward_model(CFG, params, jax.random.PRNGKey(2))
    assert rm_cfg.value_head and not rm_cfg.lm_head and "value_head" in rm_params
    np.testing.assert_array_equal(rm_params["embed"]["embedding"], params["embed"]["embedding"])
    batch = _batch("dpo")
    # float64 reference: the value head's output at each row's last real token.
    tokens, attention = (np.asarray(batch[k]).reshape(-1, T) for k in ("tokens", "attention_mask"))
    values = np.asarray(models.forward(rm_cfg, rm_params, tokens, mask=attention).values, np.float64)
    last = attention.shape[1] - 1 - np.argmax(attention[:, ::-1], axis=1)
    r = values[np.arange(len(last)), last].reshape(B, 2)
    margin = 0.3
    expected = np.mean(-log_sigmoid(r[:, 0] - r[:, 1] - margin))
    optimizer = optax.sgd(0.05)
    state = TrainState.create(rm_params, optimizer, jax.random.PRNGKey(0))
    one = jax.jit(reward_model.make_reward_model_step(rm_cfg, optimizer, margin=margin))
    two = jax.jit(reward_model.make_reward_model_step(rm_cfg, optimizer, micro_batches=2, margin=margin))
    (s1, m1), (s2, _) = one(state, batch, None), two(state, batch, None)
    np.testing.assert_allclose(float(m1["loss"]), expected, rtol=2e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), s1.params, s2.params)
    assert reward_model.pairwise_accuracy(rm_cfg, rm_params, [batch]) == np.mean(r[:, 0] > r[:, 1])
    learned = reward_model.reward_function(rm_cfg, rm_params)(tokens, attention)
    np.testing.assert_allclose(learned, r.reshape(-1), rtol=1e-5, atol=1e-6)


def test_reward_model_sft_regulariser_matches_numpy():
    params = models.init(CFG, jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="LM head"):
        reward_model.make_reward_model_step(reward_model.init_reward_model(CFG, params, jax.random.PRNGKey(2))[0],
                                            optax.sgd(0.1), sft_coef=0.5)
    rm_cfg, rm_params = reward_model.init_reward_model(CFG, params, jax.random.PRNGKey(2), lm_head=True)
    batch = _batch("dpo")
    tokens, attention = (np.asarray(batch[k]).reshape(-1, T) for k in ("tokens", "attention_mask"))
    values = np.asarray(models.forward(rm_cfg, rm_params, tokens, mask=attention).values, np.float64)
    last = T - 1 - np.argmax(attention[:, ::-1], axis=1)
    r = values[np.arange(len(last)), last].reshape(B, 2)
    chosen = [np.asarray(batch[k])[:, 0] for k in ("tokens", "attention_mask", "loss_mask")]
    nll = -np_logps(rm_params, *chosen, average=False, cfg=rm_cfg).sum() / chosen[2][:, 1:].sum()  # token-mean
    expected = np.mean(-log_sigmoid(r[:, 0] - r[:, 1])) + 0.5 * nll
    optimizer = optax.sgd(0.05)
    state = TrainState.create(rm_params, optimizer, jax.random.PRNGKey(0))
    one = jax.jit(reward_model.make_reward_model_step(rm_cfg, optimizer, sft_coef=0.5))
    two = jax.jit(reward_model.make_reward_model_step(rm_cfg, optimizer, micro_batches=2, sft_coef=0.5))
    (s1, m1), (s2, m2) = one(state, batch, None), two(state, batch, None)
    np.testing.assert_allclose(float(m1["loss"]), expected, rtol=2e-5)
    np.testing.assert_allclose(float(m1["sft_nll"]), nll, rtol=2e-5)
    np.testing.assert_allclose(float(m2["loss"]), expected, rtol=2e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), s1.params, s2.params)


class CharTokenizer:
    """Characters as ids (enough for the layout checks)."""

    eos_id, pad_id = 1, 0

    def encode(self, text):
        return [2 + ord(c) % 60 for c in text]


def test_encode_pairs_and_unpaired_layout():
    tok = CharTokenizer()
    pairs = [{"prompt": "ab", "chosen": "c", "rejected": "dde"}, {"prompt": "x", "chosen": "yy", "rejected": "z"}]
    enc = preference.encode_pairs(tok, pairs, multiple_of=8)
    assert enc["tokens"].shape == (2, 2, 8)
    np.testing.assert_array_equal(enc["tokens"][0, 1, :6], tok.encode("abdde") + [1])
    np.testing.assert_array_equal(enc["loss_mask"][0, 1], [0, 0, 1, 1, 1, 1, 0, 0])  # response + EOS
    np.testing.assert_array_equal(enc["attention_mask"][1, 0], [1, 1, 1, 1, 0, 0, 0, 0])
    rows = [{"prompt": p["prompt"], "completion": p[k], "desirable": k == "chosen"}
            for p in pairs for k in ("chosen", "rejected")]
    enc = preference.encode_unpaired(tok, rows, multiple_of=8)
    np.testing.assert_array_equal(enc["desirable"], [True, False, True, False])
    # mismatched pairs: prompt i with the response of row i+1 (mod B)
    np.testing.assert_array_equal(enc["kl_tokens"][0, :5], tok.encode("abdde"))
    np.testing.assert_array_equal(enc["kl_tokens"][3, :3], tok.encode("xc") + [1])


@pytest.mark.parametrize("centred", [True, False])
def test_ppo_against_the_learned_reward_logs_the_true_reward(tmp_path, centred):
    from tests.test_configs import ROOT, load_config, shrink  # noqa: PLC0415

    from rljax.train import experiment  # noqa: PLC0415

    config = shrink(load_config(os.path.join(ROOT, "configs", "ppo_rm_arithmetic.py")), real_model=False)
    config.rl.center_learned_reward = centred
    results = experiment.run(config, str(tmp_path))
    assert 0.0 <= results["pairwise_accuracy"] <= 1.0
    rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    rl = [r for r in rows if "reward_mean" in r]
    assert len(rl) == 1 and {"reward/true", "reward/learned", "reward/agreement", "reward/correct"} <= set(rl[0])
    if centred:  # the policy sees the learned reward, centred in each group
        assert abs(rl[0]["reward_mean"]) < 1e-5
    else:  # the learned reward itself, its per-prompt constant left to the critic
        assert rl[0]["reward_mean"] == pytest.approx(rl[0]["reward/learned"], rel=1e-5, abs=1e-6)
        assert abs(rl[0]["reward_mean"]) > 1e-3
    assert rl[0]["reward/true"] == pytest.approx(rl[0]["reward/correct"])


def test_ppo_critic_from_the_reward_model_starts_as_its_copy(tmp_path, monkeypatch):
    from tests.test_configs import ROOT, load_config, shrink  # noqa: PLC0415

    from rljax.train import experiment, stage  # noqa: PLC0415

    config = shrink(load_config(os.path.join(ROOT, "configs", "ppo_rm_arithmetic.py")), real_model=False)
    config.preference.reward_model.init_critic = True  # the config's reward model has an LM head (sft_coef)
    config.model.overrides.value_head = False  # the policy needs no value head of its own
    made, started = [], []
    make_critic = reward_model.critic_from_reward_model
    monkeypatch.setattr(reward_model, "critic_from_reward_model",
                        lambda *rm: made.append((rm, make_critic(*rm))) or made[-1][1])
    init_stage = stage.Stage.__init__

    def keep_critic(self, name, workdir, total, state, *args, **kwargs):  # a host copy: the learner
        if name == "rl":                                                  # donates the state's buffers
            started.append(jax.tree.map(np.array, state.params["critic"]))
        init_stage(self, name, workdir, total, state, *args, **kwargs)

    monkeypatch.setattr(stage.Stage, "__init__", keep_critic)
    experiment.run(config, str(tmp_path))
    [((critic_cfg, rm_params), _)] = made
    assert not critic_cfg.lm_head and critic_cfg.value_head
    [critic] = started
    assert set(critic) == set(rm_params) - {"lm_head"}
    jax.tree.map(np.testing.assert_array_equal, critic, {k: rm_params[k] for k in critic})
    rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert any("value/explained_variance" in r for r in rows)
