"""Rollouts: the collector's trajectory batch (prompt, completion, masks, the sampler's log-probs,
rewards on the last sampled token), DAPO dynamic sampling (informative groups kept, the batch
refilled from further rounds, the informative fraction measured with or without it), ReMax's
greedy baseline, and the pairwise agreement of a learned reward."""

import itertools

import jax
import numpy as np
import pytest

from rljax import models
from rljax.data.sampler import PromptSampler
from rljax.train import rollout
from rljax.train.config import RLConfig, SamplingConfig
from rljax.train.trajectories import TrajectoryBatch

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


def _collector(**rl):
    rl = RLConfig(**{"prompts_per_step": B, "group_size": G, "sampling": SamplingConfig(max_new_tokens=3), **rl})
    return rollout.Collector(CFG, CharTokenizer(), _reward_fns(), {}, PROMPT_LEN, rl)


def _source(tied):
    """Prompt i is the letter i repeated: its tokens say which example a batch row answers."""
    return [{"prompt": chr(ord("a") + i) * PROMPT_LEN, "tied": t} for i, t in enumerate(tied)]


def _collect(tied, **rl):
    collector, source = _collector(**rl), _source(tied)
    sampler = PromptSampler(source, seed=0, shuffle=False)
    params = models.init(CFG, jax.random.PRNGKey(0))
    batch, metrics = collector.collect(params, sampler, lambda e: e["prompt"], jax.random.PRNGKey(1), policy_version=7)
    tok = CharTokenizer()
    answered = [[i for i, e in enumerate(source) if tok.encode(e["prompt"]) == list(row[:PROMPT_LEN])][0]
                for row in np.asarray(batch.tokens)]
    return answered, batch, metrics


def test_the_batch_joins_prompt_and_completion_and_scores_the_last_sampled_token():
    _, batch, _ = _collect([False] * B)
    assert batch.tokens.shape == (B * G, PROMPT_LEN + 3)
    np.testing.assert_array_equal(batch.loss_mask[:, :PROMPT_LEN], False)
    np.testing.assert_array_equal(batch.attention_mask[:, :PROMPT_LEN], True)
    assert np.all(batch.loss_mask[:, PROMPT_LEN] & batch.attention_mask[:, PROMPT_LEN])  # the first token
    np.testing.assert_array_equal(batch.sampler_logp[~batch.loss_mask], 0.0)
    assert np.all(batch.sampler_logp[batch.loss_mask] < 0)
    last = PROMPT_LEN + batch.loss_mask[:, PROMPT_LEN:].sum(1) - 1
    np.testing.assert_allclose(batch.token_rewards[np.arange(B * G), last], batch.rewards)
    np.testing.assert_allclose(batch.token_rewards.sum(1), batch.rewards)
    np.testing.assert_array_equal(batch.group_ids, np.repeat(np.arange(B), G))
    np.testing.assert_array_equal(batch.policy_version, 7)


def test_dynamic_sampling_keeps_informative_groups_and_refills_from_the_next_round():
    tied = [True, False, True, False] + [False] * 4
    answered, batch, metrics = _collect(tied, dynamic_sampling=True)
    # Round 0 keeps examples 1 and 3; round 1 (examples 4-7) fills the rest, in order.
    assert answered == [1, 1, 3, 3, 4, 4, 5, 5]
    assert metrics["sampling_rounds"] == 2
    assert metrics["informative_group_frac"] == 1.0
    assert np.all(np.ptp(batch.rewards.reshape(B, G), axis=1) > 0)


def test_without_dynamic_sampling_the_first_round_is_the_batch_and_ties_are_counted():
    tied = [True, False, True, False] + [False] * 4
    answered, batch, metrics = _collect(tied, dynamic_sampling=False)
    assert answered == [0, 0, 1, 1, 2, 2, 3, 3]
    assert metrics["sampling_rounds"] == 1
    assert metrics["informative_group_frac"] == pytest.approx(0.5)
    np.testing.assert_array_equal(batch.rewards[[0, 1, 4, 5]], 0.0)


def test_dynamic_sampling_gives_up_after_its_rounds_and_fills_with_tied_groups():
    answered, batch, metrics = _collect([True] * 12, dynamic_sampling=True, max_sampling_rounds=2)
    assert metrics["sampling_rounds"] == 2
    assert metrics["informative_group_frac"] == 0.0
    assert answered == [0, 0, 1, 1, 2, 2, 3, 3]  # the first spare groups, in sampling order
    np.testing.assert_array_equal(batch.rewards, 0.0)


def test_remax_gets_each_prompts_greedy_reward_as_its_baseline():
    _, batch, _ = _collect([False] * B, advantage="remax")
    # The scripted reward counts its calls: the P greedy calls come after the P·G sampled ones.
    np.testing.assert_array_equal(batch.baseline, np.repeat(np.arange(B * G + 1, B * G + B + 1), G))
    _, batch, _ = _collect([False] * B)
    np.testing.assert_array_equal(batch.baseline, 0.0)


def test_a_trajectory_batch_is_checked_for_shape():
    tokens = np.zeros((4, 5), np.int32)
    mask = np.ones((4, 5), bool)
    with pytest.raises(ValueError, match="rewards has shape"):
        TrajectoryBatch.from_rows(tokens, mask, mask, np.zeros((4, 5)), np.zeros(3), 2, 0)
    with pytest.raises(ValueError, match="groups of 3"):
        TrajectoryBatch.from_rows(tokens, mask, mask, np.zeros((4, 5)), np.zeros(4), 3, 0)
    with pytest.raises(ValueError, match="padding"):
        TrajectoryBatch.from_rows(tokens, mask & (np.arange(5) > 0), mask, np.zeros((4, 5)), np.zeros(4), 2, 0)


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
