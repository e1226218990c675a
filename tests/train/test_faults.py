"""Faults: non-finite steps are skipped and counted, too many stop the run saying where; SIGTERM
raises the preemption flag; a corrupt latest checkpoint falls back to the one before."""

import os
import signal
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rljax.losses import registry
from rljax.train.checkpoint import Checkpointer, abstract_like
from rljax.train.faults import NonFiniteError, NonFiniteGuard, Preemption
from rljax.train.optim import make_optimizer
from rljax.train.state import TrainState
from tests.train.test_learner import _learner, _rl, _rollout, _state as _learner_state
from tests.test_configs import ROOT, load_config, shrink


@pytest.mark.parametrize("poison", ["nan_reward", "inf_sampler_logp"])
def test_a_nonfinite_update_leaves_the_state_unchanged(poison):
    learner = _learner(_rl(advantage="grpo", surrogate="ppo", old_logp="sampler"),
                       optimizer=make_optimizer(1e-2, total_steps=10))
    state, batch = _learner_state(learner), _rollout()
    if poison == "nan_reward":
        bad = batch.replace(rewards=batch.rewards.copy())
        bad.rewards[3] = np.nan
    else:
        bad = batch.replace(sampler_logp=np.where(batch.loss_mask, -np.inf, batch.sampler_logp))
    learn = jax.jit(learner.learn)
    after, metrics = learn(state, bad, jax.random.PRNGKey(2))
    np.testing.assert_array_equal(metrics["nonfinite"], [1.0])
    jax.tree.map(np.testing.assert_array_equal, after, state)  # params, Adam moments, step count
    # The same state then takes a finite step normally.
    good, metrics = learn(after, batch, jax.random.PRNGKey(2))
    np.testing.assert_array_equal(metrics["nonfinite"], [0.0])
    assert int(good.step) == 1
    embedding = lambda s: s.params["policy"]["embed"]["embedding"]  # noqa: E731
    assert not np.allclose(embedding(good), embedding(state))


def test_guard_counts_skips_resets_on_a_good_step_and_stops_after_n_in_a_row():
    guard = NonFiniteGuard(max_consecutive=3)
    assert guard.observe([0.0, 1.0, 1.0], "it 0") == 2
    assert guard.observe([0.0], "it 1") == 0 and guard.consecutive == 0
    guard.observe([1.0, 1.0], "it 2")
    with pytest.raises(NonFiniteError, match=r"3 consecutive .* at it 3"):
        guard.observe(1.0, "it 3")
    assert guard.total == 4  # the raising observation is not added; the three before it are
    with pytest.raises(ValueError):
        NonFiniteGuard(0)


def test_rl_run_with_nan_advantages_stops_and_names_the_step(tmp_path, monkeypatch):
    config = shrink(load_config(os.path.join(ROOT, "configs", "grpo_arithmetic.py")), real_model=False)
    config.sft.steps = 0
    config.rl.steps = 4
    config.faults.max_consecutive_nonfinite = 2
    nan_advantages = lambda inputs: (jnp.full(inputs.rewards.shape, jnp.nan), None)  # noqa: E731
    monkeypatch.setitem(registry.ADVANTAGES, "grpo", registry.Advantage(nan_advantages, "NaN"))
    from rljax.train import experiment

    with pytest.raises(NonFiniteError, match="2 consecutive train steps .* rl iteration 1"):
        experiment.run(config, str(tmp_path))
    rows = [r for r in experiment.read_jsonl(str(tmp_path / "metrics.jsonl")) if "reward_mean" in r]
    assert rows and rows[0]["nonfinite_steps"] == 1.0  # the first skipped step was logged


def test_sigterm_sets_the_preemption_flag_and_the_old_handler_returns():
    before = signal.getsignal(signal.SIGTERM)
    with Preemption() as preemption:
        assert not preemption.should_stop()
        os.kill(os.getpid(), signal.SIGTERM)
        assert preemption.should_stop()
    assert signal.getsignal(signal.SIGTERM) is before


def _state(value):
    params = {"w": jnp.full((4, 3), float(value))}
    return TrainState.create(params, make_optimizer(1e-2, total_steps=10), jax.random.PRNGKey(0))


def test_a_corrupt_latest_checkpoint_falls_back_to_the_previous_one(tmp_path):
    directory = tmp_path / "ckpt"
    ckpt = Checkpointer(str(directory), save_every=1, keep=3)
    for step in (1, 2):
        ckpt.maybe_save(step, _state(step), {"iteration": step})
    ckpt.close()
    # Corrupt every file of step 2's state (as a crash in the middle of a write would leave it).
    for root, _, files in os.walk(directory / "2" / "state"):
        for name in files:
            with open(os.path.join(root, name), "wb") as f:
                f.write(b"\0garbage")
    ckpt = Checkpointer(str(directory), save_every=1, keep=3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        state, meta = ckpt.restore(abstract_like(_state(0)))
    assert meta == {"iteration": 1}
    np.testing.assert_array_equal(state.params["w"], np.full((4, 3), 1.0))
    assert any("step 2" in str(w.message) and "falling back to step 1" in str(w.message) for w in caught)
    assert (directory / "2.corrupt").exists() and ckpt.latest_step() == 1
    # The corrupt step is out of the way: saving step 2 again works and restores.
    ckpt.maybe_save(2, _state(7), {"iteration": 2})
    ckpt.wait()
    state, meta = ckpt.restore(abstract_like(_state(0)))
    assert meta == {"iteration": 2} and float(state.params["w"][0, 0]) == 7.0
    ckpt.close()


def test_no_readable_checkpoint_is_a_clear_error(tmp_path):
    directory = tmp_path / "ckpt"
    ckpt = Checkpointer(str(directory), save_every=1)
    ckpt.maybe_save(1, _state(1), {"iteration": 1})
    ckpt.close()
    for root, _, files in os.walk(directory / "1"):
        for name in files:
            os.remove(os.path.join(root, name))
    with pytest.warns(UserWarning, match="cannot be restored"), pytest.raises(FileNotFoundError, match="no readable"):
        Checkpointer(str(directory)).restore(abstract_like(_state(0)))
