"""Train steps: gradient accumulation equals one big batch; objectives compose the losses;
SFT and PPO (shared trunk and separate critic) steps learn."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rljax import losses, models
from rljax.train import rollout
from rljax.train.objectives import make_objective
from rljax.train.state import TrainState
from rljax.train.steps import (make_policy_step, make_sft_step, next_token_logprobs, run_networks,
                               state_values)

CFG = models.get_config("tiny", d_model=32, n_layers=1, n_heads=2, n_kv_heads=1, head_dim=16, mlp_dim=64,
                        vocab_size=64)
B, T, P = 8, 10, 4  # rows, tokens, prompt tokens


def _batch(seed=0, value_head=False):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, CFG.vocab_size, (B, T)).astype(np.int32)
    lengths = rng.integers(1, T - P + 1, B)  # completion lengths differ per row
    attention = np.arange(T)[None] < (P + lengths)[:, None]
    attention[1, :2] = False  # a left-padded prompt
    loss_mask = attention & (np.arange(T)[None] >= P)
    batch = {"tokens": tokens, "attention_mask": attention, "loss_mask": loss_mask,
             "old_logp": rng.normal(-3.0, 0.3, (B, T)).astype(np.float32) * loss_mask,
             "ref_logp": rng.normal(-3.0, 0.3, (B, T)).astype(np.float32) * loss_mask,
             "advantages": rng.normal(size=B).astype(np.float32)}
    if value_head:
        batch["returns"] = rng.normal(size=(B, T)).astype(np.float32) * loss_mask
        batch["old_values"] = rng.normal(size=(B, T)).astype(np.float32) * loss_mask
    return {k: jnp.asarray(v) for k, v in batch.items()}


def _sgd_step(step_factory, params, micro_batches):
    optimizer = optax.sgd(1.0)
    state = TrainState.create(params, optimizer, jax.random.PRNGKey(0))
    return step_factory(optimizer, micro_batches), state


@pytest.mark.parametrize("agg", losses.AGG_MODES)
def test_gradient_accumulation_equals_one_big_batch(agg):
    params = models.init(CFG, jax.random.PRNGKey(1))
    batch = _batch()
    objective = make_objective("grpo", agg=agg, norm_len=T, beta=0.1, clip_eps=0.2)
    results = []
    for micro_batches in (1, 4):
        optimizer = optax.sgd(1.0)
        step = jax.jit(make_policy_step(CFG, optimizer, objective, micro_batches=micro_batches))
        state, metrics = step(TrainState.create(params, optimizer, jax.random.PRNGKey(0)), batch,
                              jax.random.PRNGKey(0))
        results.append((state, metrics))
    (full, m_full), (acc, m_acc) = results
    np.testing.assert_allclose(m_acc["loss"], m_full["loss"], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(m_acc["grad_norm"], m_full["grad_norm"], rtol=1e-4)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), acc.params, full.params)


def test_accumulation_rejects_an_indivisible_batch():
    objective = make_objective("reinforce", agg="token-mean")
    optimizer = optax.sgd(1.0)
    step = make_policy_step(CFG, optimizer, objective, micro_batches=3)
    state = TrainState.create(models.init(CFG, jax.random.PRNGKey(0)), optimizer, jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="not divisible by micro_batches=3"):
        step(state, _batch(), jax.random.PRNGKey(0))


def test_grpo_objective_is_the_grpo_loss_of_the_policy_logprobs():
    params = models.init(CFG, jax.random.PRNGKey(1))
    batch = _batch()
    counts = losses.global_counts(batch["loss_mask"])
    objective = make_objective("grpo", agg="seq-mean-token-mean", beta=0.05, clip_eps=0.2, clip_eps_high=0.3)
    loss, metrics = objective(run_networks(CFG, params, batch), batch, counts)
    logits, _ = models.apply(CFG, params, batch["tokens"], mask=batch["attention_mask"])
    logp = next_token_logprobs(logits, batch["tokens"])
    want, _ = losses.grpo_loss(logp, batch["old_logp"], batch["ref_logp"], batch["advantages"],
                               batch["loss_mask"], clip_eps=0.2, clip_eps_high=0.3, beta=0.05,
                               agg="seq-mean-token-mean", **counts)
    np.testing.assert_allclose(loss, want, rtol=1e-6)
    # next_token_logprobs aligns log π(tokens[t] | tokens[<t]) with token t:
    ref = jax.nn.log_softmax(logits[0, 4])[batch["tokens"][0, 5]]
    np.testing.assert_allclose(logp[0, 5], ref, rtol=1e-5)
    assert float(logp[0, 0]) == 0.0


def test_kl_coef_cannot_double_the_grpo_kl():
    with pytest.raises(ValueError, match="set its `beta`"):
        make_objective("grpo", kl_coef=0.1)
    with pytest.raises(ValueError, match="unknown policy_loss"):
        make_objective("trpo")


def test_sft_step_lowers_the_loss_on_its_batch():
    params = models.init(CFG, jax.random.PRNGKey(1))
    optimizer = optax.adam(1e-2)
    step = jax.jit(make_sft_step(CFG, optimizer))
    state = TrainState.create(params, optimizer, jax.random.PRNGKey(0))
    batch = _batch()
    losses_seen = []
    for _ in range(5):
        state, metrics = step(state, batch, jax.random.PRNGKey(0))
        losses_seen.append(float(metrics["loss"]))
    assert losses_seen[-1] < losses_seen[0] - 0.5
    assert int(state.step) == 5


@pytest.mark.parametrize("separate_critic", [False, True], ids=["shared-trunk", "separate-critic"])
def test_ppo_step_trains_policy_and_critic(separate_critic):
    cfg = CFG.replace(value_head=not separate_critic)
    critic_cfg = CFG.replace(value_head=True, lm_head=False) if separate_critic else None
    params = models.init(cfg, jax.random.PRNGKey(1))
    if separate_critic:
        params = {"policy": params, "critic": models.init(critic_cfg, jax.random.PRNGKey(2))}
    batch = _batch(value_head=True)
    objective = make_objective("ppo", agg="token-mean", value_coef=0.5, value_clip=None, clip_eps=0.2)
    optimizer = optax.adam(1e-2)
    step = jax.jit(make_policy_step(cfg, optimizer, objective, critic_cfg=critic_cfg))
    state = TrainState.create(params, optimizer, jax.random.PRNGKey(0))
    value_losses = []
    for _ in range(5):
        state, metrics = step(state, batch, jax.random.PRNGKey(0))
        value_losses.append(float(metrics["value_loss"]))
    assert value_losses[-1] < value_losses[0]
    # Values are those of the state before each token: V(tokens[<t]), from the value head at t-1.
    policy = state.params["policy"] if separate_critic else state.params
    fwd = run_networks(cfg, state.params, batch, critic_cfg)
    raw = models.forward(critic_cfg or cfg, state.params["critic"] if separate_critic else policy,
                         batch["tokens"], mask=batch["attention_mask"]).values
    np.testing.assert_allclose(fwd.values, state_values(raw), rtol=1e-6)
    np.testing.assert_allclose(fwd.values[:, 3], raw[:, 2], rtol=1e-6)


def test_sequences_from_generation_layout():
    from rljax.generate import Generation

    prompt = jnp.array([[0, 5, 6], [7, 8, 9]])
    prompt_mask = jnp.array([[False, True, True], [True, True, True]])
    gen = Generation(tokens=jnp.array([[1, 2], [3, 0], [4, 4], [5, 6]]),
                     mask=jnp.array([[True, True], [True, False], [True, True], [True, True]]),
                     logprobs=-jnp.ones((4, 2)), sampling_logprobs=None, num_steps=jnp.int32(2))
    seqs = rollout.sequences_from_generation(prompt, prompt_mask, gen, num_samples=2)
    np.testing.assert_array_equal(seqs["tokens"][1], [0, 5, 6, 3, 0])
    np.testing.assert_array_equal(seqs["tokens"][2], [7, 8, 9, 4, 4])
    np.testing.assert_array_equal(seqs["attention_mask"][1], [False, True, True, True, False])
    np.testing.assert_array_equal(seqs["loss_mask"][1], [False, False, False, True, False])
    np.testing.assert_array_equal(seqs["sampler_logp"][1], [0, 0, 0, -1, 0])


@pytest.mark.parametrize("estimator,reference", [
    ("grpo", lambda r: (r - r.mean(1, keepdims=True)) / (r.std(1, ddof=1, keepdims=True) + 1e-6)),
    ("dr_grpo", lambda r: r - r.mean(1, keepdims=True)),
    ("rloo", lambda r: r - (r.sum(1, keepdims=True) - r) / (r.shape[1] - 1)),
    ("reinforce_pp", lambda r: (r - r.mean()) / np.sqrt(r.var(ddof=1) + 1e-8)),
    ("none", lambda r: r),
])
def test_sequence_advantages_match_numpy(estimator, reference):
    rewards = np.random.default_rng(0).normal(size=(3, 4))
    got = rollout.sequence_advantages(estimator, jnp.asarray(rewards, jnp.float32))
    np.testing.assert_allclose(got, reference(rewards), rtol=1e-4, atol=1e-5)


def test_remax_needs_greedy_rewards_and_unknown_estimators_fail():
    rewards = jnp.ones((2, 3))
    np.testing.assert_allclose(rollout.sequence_advantages("remax", rewards, jnp.array([0.5, 1.0])),
                               [[0.5] * 3, [0.0] * 3])
    with pytest.raises(ValueError, match="greedy"):
        rollout.sequence_advantages("remax", rewards)
    with pytest.raises(ValueError, match="unknown advantage estimator"):
        rollout.sequence_advantages("a2c", rewards)


def test_informative_groups():
    rewards = np.array([[1.0, 1.0, 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    np.testing.assert_array_equal(rollout.informative_groups(rewards), [False, True, False])


def _agreement_by_loops(true, learned):
    won = total = 0.0
    for t, s in zip(true, learned):
        for i in range(len(t)):
            for j in range(len(t)):
                if t[i] > t[j]:
                    total += 1
                    won += 1.0 if s[i] > s[j] else 0.5 if s[i] == s[j] else 0.0
    return won / total


def test_pairwise_agreement_is_the_learned_rewards_accuracy_on_pairs_the_true_reward_ranks():
    rng = np.random.default_rng(0)
    true = rng.integers(0, 3, (5, 6)).astype(float)  # graded, with ties, so ties in `true` are skipped
    learned = np.round(rng.normal(size=(5, 6)), 1)  # rounded, so `learned` has ties too
    learned[0, :2] = 0.3
    assert rollout.pairwise_agreement(true, learned) == pytest.approx(_agreement_by_loops(true, learned))
    assert rollout.pairwise_agreement(true, true) == 1.0
    assert rollout.pairwise_agreement(true, -true) == 0.0
    # Only pairs within a group count: a learned reward that ranks the groups wrongly but each
    # group rightly agrees fully.
    assert rollout.pairwise_agreement(true, true - 10 * true.mean(1, keepdims=True)) == 1.0
    assert np.isnan(rollout.pairwise_agreement(np.ones((2, 3)), learned[:2, :3]))
