"""RLTrainer: DAPO dynamic sampling keeps the groups whose rewards differ and refills the batch
from further rounds, the informative-group fraction is measured with it or without, and the one
update of an on-policy rollout takes its old log-probs (and PPO its values and advantages) from
its own forward pass, with the same result as a separate pass; PPO's advantages against a
float64 NumPy reference."""

import itertools

import jax
import numpy as np
import pytest

from rljax import models
from rljax.data.sampler import PromptSampler
from rljax.train.rl import RLConfig, RLTrainer

CFG = models.get_config("tiny", d_model=32, n_layers=1, n_heads=2, n_kv_heads=1, head_dim=16, mlp_dim=64,
                        vocab_size=64, max_seq_len=16)
B, G, PROMPT_LEN = 4, 2, 4


class CharTokenizer:
    """One id per character (enough for the batch layout)."""

    pad_id, eos_id = 0, 1
    eos_ids = (1,)

    def encode(self, text):
        return [2 + ord(c) % 60 for c in text]

    def decode(self, ids):
        return "".join(chr(ord("a") + i % 26) for i in ids)


def _reward_fns():
    """Tied examples score 0 on every sample; the others a fresh number per call, so their
    groups always differ."""
    counter = itertools.count(1)
    return {"scripted": lambda completion, example: 0.0 if example["tied"] else float(next(counter))}


def _trainer(**rl):
    rl = RLConfig(**{"prompts_per_step": B, "group_size": G, "max_new_tokens": 3, **rl})
    return RLTrainer(rl, CFG, CharTokenizer(), _reward_fns(), {}, PROMPT_LEN)


def _source(tied):
    """Prompt i is the letter i repeated: its tokens say which example a batch row answers."""
    return [{"prompt": chr(ord("a") + i) * PROMPT_LEN, "tied": t} for i, t in enumerate(tied)]


def _collect(tied, dynamic_sampling, max_sampling_rounds=3):
    trainer = _trainer(dynamic_sampling=dynamic_sampling, max_sampling_rounds=max_sampling_rounds)
    source = _source(tied)
    sampler = PromptSampler(source, seed=0, shuffle=False)
    params = models.init(CFG, jax.random.PRNGKey(0))
    batch, rewards, _, metrics = trainer.collect(params, sampler, lambda e: e["prompt"], jax.random.PRNGKey(1))
    tok = CharTokenizer()
    answered = [[i for i, e in enumerate(source) if tok.encode(e["prompt"]) == list(row[:PROMPT_LEN])][0]
                for row in np.asarray(batch["tokens"])]
    return answered, rewards, metrics


def test_dynamic_sampling_keeps_informative_groups_and_refills_from_the_next_round():
    tied = [True, False, True, False] + [False] * 4
    answered, rewards, metrics = _collect(tied, dynamic_sampling=True)
    # Round 0 keeps examples 1 and 3; round 1 (examples 4-7) fills the rest, in order.
    assert answered == [1, 1, 3, 3, 4, 4, 5, 5]
    assert metrics["sampling_rounds"] == 2
    assert metrics["informative_group_frac"] == 1.0
    assert np.all(np.ptp(rewards.reshape(B, G), axis=1) > 0)


def test_without_dynamic_sampling_the_first_round_is_the_batch_and_ties_are_counted():
    tied = [True, False, True, False] + [False] * 4
    answered, rewards, metrics = _collect(tied, dynamic_sampling=False)
    assert answered == [0, 0, 1, 1, 2, 2, 3, 3]
    assert metrics["sampling_rounds"] == 1
    assert metrics["informative_group_frac"] == pytest.approx(0.5)
    np.testing.assert_array_equal(rewards[[0, 1, 4, 5]], 0.0)


def test_dynamic_sampling_gives_up_after_its_rounds_and_fills_with_tied_groups():
    answered, rewards, metrics = _collect([True] * 12, dynamic_sampling=True, max_sampling_rounds=2)
    assert metrics["sampling_rounds"] == 2
    assert metrics["informative_group_frac"] == 0.0
    assert answered == [0, 0, 1, 1, 2, 2, 3, 3]  # the first spare groups, in sampling order
    np.testing.assert_array_equal(rewards, 0.0)


def _one_update_each(trainers, params, batch, rewards, ref_params, prepared_key):
    """The params and metrics after one iteration's update by each trainer, from the same state;
    `prepared_key` is in the prepared batch exactly for the trainers after the first."""
    results = []
    for i, trainer in enumerate(trainers):
        state = trainer.init_state(jax.tree.map(np.copy, params), jax.random.PRNGKey(2))
        train, prep_metrics = trainer.prepare(state, batch, rewards, None, ref_params)
        assert (prepared_key in train) == (i > 0)
        state, step_metrics = trainer.update(state, train, jax.random.PRNGKey(3))
        results.append((state.params, {**prep_metrics, **step_metrics[0]}))
    return results


def test_the_one_update_of_a_rollout_equals_the_update_after_a_separate_old_logprob_pass():
    params = models.init(CFG, jax.random.PRNGKey(0))
    in_step, recomputed = _trainer(learning_rate=1e-2), _trainer(learning_rate=1e-2)
    assert in_step.old_logp_in_step
    recomputed.old_logp_in_step = False  # the path of several updates per rollout
    sampler = PromptSampler(_source([False] * B), seed=0, shuffle=False)
    batch, rewards, _, _ = in_step.collect(params, sampler, lambda e: e["prompt"], jax.random.PRNGKey(1))
    # The sampler's log-probs, shifted on each row's first completion token: the mismatch both
    # paths must report.
    mask = np.asarray(batch["loss_mask"])
    first = mask & (np.cumsum(mask, axis=1) == 1)
    batch["sampler_logp"] = batch["sampler_logp"] + 0.25 * first
    (p_in, m_in), (p_re, m_re) = _one_update_each((in_step, recomputed), params, batch, rewards, None, "old_logp")
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), p_in, p_re)
    for k in ("mismatch/kl", "mismatch/max_abs", "loss", "clipfrac_low", "ratio_max"):
        np.testing.assert_allclose(m_in[k], m_re[k], rtol=1e-5, atol=1e-6, err_msg=k)
    np.testing.assert_allclose(m_in["mismatch/max_abs"], 0.25, rtol=1e-5)
    assert float(m_in["mismatch/kl"]) > 0


def _ppo_trainer(cfg, **rl):
    rl = RLConfig(prompts_per_step=B, group_size=G, max_new_tokens=3, algorithm="ppo", policy_loss="ppo",
                  beta=0.1, kl_in_reward=True, kl_estimator="k1", lam=0.9, **rl)
    return RLTrainer(rl, cfg, CharTokenizer(), _reward_fns(), {}, PROMPT_LEN)


def _numpy_ppo_advantages(scores, logp, ref_logp, values, mask, beta, gamma, lam):
    """Float64 reference: r_t = −β(log π − log π_ref) + [t = last]·score, GAE over the real
    tokens of each row, whitened over all real tokens (sample variance)."""
    rewards = np.where(mask, -beta * (logp - ref_logp), 0.0)
    adv = np.zeros_like(rewards)
    for b in range(len(scores)):
        real = np.flatnonzero(mask[b])
        rewards[b, real[-1]] += scores[b]
        next_value = next_adv = 0.0
        for t in real[::-1]:
            next_adv = rewards[b, t] + gamma * next_value - values[b, t] + gamma * lam * next_adv
            adv[b, t], next_value = next_adv, values[b, t]
    returns = np.where(mask, adv + values, 0.0)
    real = adv[mask]
    return np.where(mask, (adv - real.mean()) / np.sqrt(real.var(ddof=1) + 1e-8), 0.0), returns


def test_ppo_advantages_from_one_separate_pass_match_a_numpy_reference_and_log_the_reward_kl():
    cfg = CFG.replace(value_head=True)
    params, ref_params = (models.init(cfg, jax.random.PRNGKey(k)) for k in (0, 5))
    trainer = _ppo_trainer(cfg, epochs=2)  # several updates: old log-probs and values come first
    assert not trainer.advantages_in_step
    sampler = PromptSampler(_source([False] * B), seed=0, shuffle=False)
    batch, rewards, _, _ = trainer.collect(params, sampler, lambda e: e["prompt"], jax.random.PRNGKey(1))
    train, metrics = trainer.prepare(trainer.init_state(params, jax.random.PRNGKey(2)), batch, rewards, None,
                                     ref_params)
    tokens, attention, mask = (np.asarray(batch[k]) for k in ("tokens", "attention_mask", "loss_mask"))

    def reference(p):  # log π(tokens[t] | tokens[<t]) from the full logits, and the value head
        out = models.forward(cfg, p, tokens, mask=attention)
        logits, values = np.asarray(out.logits, np.float64), np.asarray(out.values, np.float64)
        top = logits.max(-1, keepdims=True)
        logp = logits - top - np.log(np.exp(logits - top).sum(-1, keepdims=True))
        picked = np.take_along_axis(logp[:, :-1], tokens[:, 1:, None], axis=-1)[..., 0]
        return np.pad(picked, ((0, 0), (1, 0))), np.pad(values[:, :-1], ((0, 0), (1, 0)))

    old, values = reference(params)
    ref, _ = reference(ref_params)
    close = dict(rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.where(mask, train["old_logp"], 0), np.where(mask, old, 0), **close)
    np.testing.assert_allclose(np.where(mask, train["ref_logp"], 0), np.where(mask, ref, 0), **close)
    np.testing.assert_allclose(np.where(mask, train["old_values"], 0), np.where(mask, values, 0), **close)
    np.testing.assert_allclose(float(metrics["kl"]), (old - ref)[mask].mean(), rtol=1e-4)
    advantages, returns = _numpy_ppo_advantages(rewards.astype(np.float64), old, ref, values, mask, 0.1, 1.0, 0.9)
    np.testing.assert_allclose(train["advantages"], advantages, **close)
    np.testing.assert_allclose(train["returns"], returns, **close)


def test_ppo_one_update_computes_its_advantages_in_the_step_like_a_separate_pass():
    cfg = CFG.replace(value_head=True)
    params, ref_params = (models.init(cfg, jax.random.PRNGKey(k)) for k in (0, 5))
    in_step, separate = _ppo_trainer(cfg, learning_rate=1e-2), _ppo_trainer(cfg, learning_rate=1e-2)
    assert in_step.advantages_in_step and in_step.old_logp_in_step
    separate.advantages_in_step = separate.old_logp_in_step = False  # the path of several updates
    sampler = PromptSampler(_source([False] * B), seed=0, shuffle=False)
    batch, rewards, _, _ = in_step.collect(params, sampler, lambda e: e["prompt"], jax.random.PRNGKey(1))
    (p_in, m_in), (p_sep, m_sep) = _one_update_each((in_step, separate), params, batch, rewards, ref_params,
                                                    "advantages")
    # The step reads logp from the full logits (for the entropy), the separate pass from the
    # fused head: float32 rounding apart, one Adam step of 1e-2 apart.
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), p_in, p_sep)
    for k in ("kl", "loss", "policy_loss", "value_loss", "value/explained_variance", "mismatch/kl"):
        np.testing.assert_allclose(m_in[k], m_sep[k], rtol=1e-5, atol=1e-6, err_msg=k)
    assert float(m_in["kl"]) > 0
