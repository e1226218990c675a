"""The estimator registry: every advantage row against a float64 NumPy reference of its paper's
equation (under jit and vmap), every surrogate row equal to the loss it names, the rows'
hyperparameters read from their signatures, and bad names refused."""

import jax.numpy as jnp
import numpy as np
import pytest

from rljax import losses
from rljax.losses import registry
from tests.losses.test_advantages import ref_gae, ref_group, ref_rloo, ref_whiten

P, G, T = 3, 4, 6


def _inputs(seed):
    rng = np.random.default_rng(seed)
    mask = np.arange(T)[None] < rng.integers(1, T + 1, P * G)[:, None]
    mask[0, 0] = False  # a hole (tool output) before the row's sampled tokens
    token_rewards = np.where(mask, rng.normal(size=(P * G, T)), 0.0).astype(np.float32)
    return {
        "rewards": token_rewards.sum(1).astype(np.float32), "token_rewards": token_rewards, "mask": mask,
        "values": np.where(mask, rng.normal(size=(P * G, T)), 0.0).astype(np.float32),
        "baseline": np.repeat(rng.normal(size=P), G).astype(np.float32),
    }


def _whiten_rows(x, eps):
    x = np.asarray(x, np.float64)
    return (x - x.mean()) / np.sqrt(x.var(ddof=1) + eps)


# name -> reference(inputs, **hparams) -> (advantages, returns or None), float64
REFERENCES = {
    "grpo": lambda x, eps=1e-6: (ref_group(x["rewards"].reshape(P, G), True, eps).reshape(-1), None),
    "dr_grpo": lambda x: (ref_group(x["rewards"].reshape(P, G), False).reshape(-1), None),
    "rloo": lambda x: (ref_rloo(x["rewards"].reshape(P, G)).reshape(-1), None),
    "reinforce_pp": lambda x, eps=1e-8: (_whiten_rows(x["rewards"], eps), None),
    "reinforce_pp_baseline": lambda x, eps=1e-8: (
        _whiten_rows(ref_group(x["rewards"].reshape(P, G), False).reshape(-1), eps), None),
    "remax": lambda x: (np.float64(x["rewards"]) - x["baseline"], None),
    "batch_mean": lambda x: (np.float64(x["rewards"]) - np.float64(x["rewards"]).mean(), None),
    "none": lambda x: (np.float64(x["rewards"]), None),
    "gae": lambda x, gamma=1.0, lam=0.95, whiten_advantages=True: (
        lambda adv, ret: (ref_whiten(adv, x["mask"]) if whiten_advantages else adv, ret))(
        *ref_gae(x["token_rewards"], x["values"], x["mask"], gamma, lam)),
}
HPARAMS = {"grpo": {"eps": 1e-3}, "reinforce_pp": {"eps": 1e-4}, "gae": {"gamma": 0.9, "lam": 0.8}}


def test_the_registry_has_the_papers_estimators():
    assert {"grpo", "dr_grpo", "rloo", "reinforce_pp", "reinforce_pp_baseline", "remax", "gae", "none"} <= set(
        registry.ADVANTAGES)
    assert {"reinforce", "ppo", "gspo", "cispo"} <= set(registry.SURROGATES)
    assert set(REFERENCES) == set(registry.ADVANTAGES), "every advantage row needs a NumPy reference here"


@pytest.mark.parametrize("name", sorted(registry.ADVANTAGES))
@pytest.mark.parametrize("with_hparams", [False, True], ids=["defaults", "hparams"])
def test_advantage_rows_match_numpy(name, with_hparams, check_transforms):
    hparams = HPARAMS.get(name, {}) if with_hparams else {}
    cases = [_inputs(seed) for seed in (0, 1)]
    row = registry.advantage(name)

    def fn(rewards, token_rewards, mask, values, baseline):
        inputs = registry.AdvantageInputs(rewards, token_rewards, mask, values, baseline, G)
        advantages, returns = registry.compute_advantages(name, inputs, **hparams)
        return advantages if returns is None else (advantages, returns)

    refs = []
    for x in cases:
        advantages, returns = REFERENCES[name](x, **hparams)
        refs.append(advantages if returns is None else (advantages, returns))
        assert (returns is not None) == row.needs_critic
    check_transforms(fn, [tuple(jnp.asarray(x[k]) for k in ("rewards", "token_rewards", "mask", "values",
                                                                  "baseline")) for x in cases], refs,
                     rtol=1e-4, atol=1e-5)


def test_rows_declare_what_they_need():
    assert registry.advantage("gae").needs_critic and not registry.advantage("grpo").needs_critic
    assert registry.advantage("remax").needs_baseline
    assert registry.advantage("grpo").min_group == 2 and registry.advantage("none").min_group == 1
    assert registry.surrogate("reinforce").on_policy and not registry.surrogate("ppo").on_policy


def test_hyperparameters_come_from_the_row_functions():
    assert registry.surrogate("ppo").hparams == {"clip_eps": 0.2, "clip_eps_high": None, "dual_clip": None}
    assert registry.surrogate("gspo").hparams == {"clip_eps": 3e-4, "clip_eps_high": 4e-4, "variant": "sequence"}
    assert registry.surrogate("cispo").hparams == {"clip_eps_low": None, "clip_eps_high": 0.28}
    assert registry.surrogate("reinforce").hparams == {}
    assert registry.advantage("gae").hparams == {"gamma": 1.0, "lam": 0.95, "whiten_advantages": True}
    assert registry.check_hparams("surrogate", "ppo", {"clip_eps": 0.1}) == []
    [problem] = registry.check_hparams("surrogate", "ppo", {"clip": 0.1}, key="rl.surrogate_hparams")
    assert problem.startswith("rl.surrogate_hparams.clip: ") and "clip_eps, clip_eps_high, dual_clip" in problem


def test_unknown_names_are_refused_with_the_choices():
    with pytest.raises(ValueError, match="unknown advantage estimator 'a2c'.*grpo"):
        registry.advantage("a2c")
    with pytest.raises(ValueError, match="unknown surrogate 'trpo'.*ppo"):
        registry.surrogate("trpo")


def _batch(seed):
    rng = np.random.default_rng(seed)
    mask = np.arange(T)[None] < rng.integers(1, T + 1, P * G)[:, None]
    logp = -rng.uniform(0.1, 3.0, (P * G, T)).astype(np.float32)
    old = (logp + 0.2 * rng.standard_normal((P * G, T))).astype(np.float32)
    return jnp.asarray(logp), jnp.asarray(old), jnp.asarray(rng.normal(size=P * G).astype(np.float32)), mask


# name -> (the loss it wraps, called as the row would be)
WRAPPED = {
    "reinforce": lambda logp, old, adv, mask, **kw: losses.reinforce_loss(logp, adv, mask, **kw),
    "ppo": lambda logp, old, adv, mask, **kw: losses.ppo_policy_loss(logp, old, adv, mask, **kw),
    "gspo": lambda logp, old, adv, mask, **kw: losses.gspo_loss(logp, old, adv, mask, **kw),
    "cispo": lambda logp, old, adv, mask, **kw: losses.cispo_loss(logp, old, adv, mask, **kw),
    "seq_is": lambda logp, old, adv, mask, **kw: losses.reinforce_loss(
        logp, adv, mask, is_weights=np.exp(np.where(mask, np.float64(logp) - old, 0).sum(1)), **kw),
}
SURROGATE_HPARAMS = {"ppo": {"clip_eps": 0.1, "clip_eps_high": 0.3}, "gspo": {"clip_eps": 1e-3},
                     "cispo": {"clip_eps_high": 0.5}}


@pytest.mark.parametrize("name", sorted(registry.SURROGATES))
@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-sum-norm"])
def test_surrogate_rows_are_the_losses_they_name(name, agg):
    assert set(WRAPPED) == set(registry.SURROGATES)
    logp, old, adv, mask = _batch(3)
    kwargs = dict(agg=agg, norm_len=T, **SURROGATE_HPARAMS.get(name, {}))
    got, got_metrics = registry.surrogate_loss(name, logp, old, adv, mask, **kwargs)
    want, want_metrics = WRAPPED[name](logp, old, adv, mask, **kwargs)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert set(got_metrics) == set(want_metrics)
