"""TrainState, the optimiser factory, checkpoints and run reporting."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rljax.train.checkpoint import Checkpointer, abstract_like
from rljax.train.metrics import MetricsLogger, plot_curves, read_jsonl
from rljax.train.optim import learning_rate_schedule, make_optimizer
from rljax.train.state import TrainState


def _state():
    params = {"w": jnp.arange(6.0).reshape(2, 3), "b": jnp.ones(3)}
    return TrainState.create(params, make_optimizer(1e-2, total_steps=10), jax.random.PRNGKey(3))


def test_apply_gradients_matches_optax_and_counts_steps():
    optimizer = make_optimizer(1e-2, total_steps=10, clip_norm=None)
    state = TrainState.create({"w": jnp.ones(3)}, optimizer, jax.random.PRNGKey(0))
    grads = {"w": jnp.array([1.0, -2.0, 3.0])}
    new = state.apply_gradients(grads, optimizer)
    updates, _ = optax.adamw(1e-2, weight_decay=0.0).update(grads, optax.adamw(1e-2, weight_decay=0.0).init(state.params), state.params)
    np.testing.assert_allclose(new.params["w"], optax.apply_updates(state.params, updates)["w"], rtol=1e-6)
    assert int(new.step) == 1


def test_gradients_are_clipped_before_adam():
    optimizer = make_optimizer(1.0, total_steps=10, clip_norm=0.5, b1=0.9)
    grads = {"w": jnp.array([30.0, 40.0])}  # global norm 50 -> clipped to norm 0.5
    _, opt_state = optimizer.update(grads, optimizer.init(grads), grads)
    first_moments = [s.mu for s in jax.tree.leaves(opt_state, is_leaf=lambda s: hasattr(s, "mu"))
                     if hasattr(s, "mu")]
    # Adam's first moment after one step is (1 - b1) * g, with g the clipped gradient.
    np.testing.assert_allclose(first_moments[0]["w"], 0.1 * np.array([0.3, 0.4]), rtol=1e-5)


@pytest.mark.parametrize("decay,final_fraction,expected_mid,expected_end", [
    ("constant", 0.0, 1.0, 1.0), ("cosine", 0.0, 0.5, 0.0), ("linear", 0.0, 0.5, 0.0),
    # halfway through the decay: final + (1 - final) / 2 for both
    ("cosine", 0.1, 0.55, 0.1), ("linear", 0.2, 0.6, 0.2),
])
def test_schedule_warms_up_then_decays(decay, final_fraction, expected_mid, expected_end):
    schedule = learning_rate_schedule(1.0, total_steps=20, warmup_steps=10, decay=decay,
                                      final_fraction=final_fraction)
    assert float(schedule(0)) == 0.0
    assert float(schedule(5)) == pytest.approx(0.5)
    assert float(schedule(10)) == pytest.approx(1.0)
    assert float(schedule(15)) == pytest.approx(expected_mid, abs=1e-6)
    assert float(schedule(20)) == pytest.approx(expected_end, abs=1e-6)
    with pytest.raises(ValueError, match="unknown decay"):
        learning_rate_schedule(1.0, 10, decay="exp")


def test_checkpoint_round_trip_and_keep_n(tmp_path):
    state = _state()
    ckpt = Checkpointer(str(tmp_path / "ckpt"), save_every=2, keep=2)
    saved = [s for s in range(7) if ckpt.maybe_save(s, state.replace(step=jnp.int32(s)), {"data_position": s})]
    ckpt.wait()
    assert saved == [0, 2, 4, 6]
    assert ckpt.latest_step() == 6
    assert sorted(int(d) for d in os.listdir(tmp_path / "ckpt") if d.isdigit()) == [4, 6]
    restored, meta = ckpt.restore(abstract_like(state))
    assert meta == {"data_position": 6} and int(restored.step) == 6
    jax.tree.map(np.testing.assert_array_equal, restored.params, state.params)
    np.testing.assert_array_equal(restored.rng, state.rng)
    ckpt.close()


def test_restore_without_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        Checkpointer(str(tmp_path / "empty")).restore(abstract_like(_state()))


def test_metrics_logger_writes_jsonl_tensorboard_and_resumes(tmp_path):
    workdir = str(tmp_path)
    logger = MetricsLogger(workdir, total_steps=4, progress=False)
    for step in range(4):
        logger.log(step, {"reward_mean": step / 4, "kl": 0.1 * step})
    logger.close()
    # A run resumed from step 2 rewrites steps 2.. instead of duplicating them.
    logger = MetricsLogger(workdir, total_steps=4, start_step=2, progress=False)
    logger.log(2, {"reward_mean": 0.9, "kl": 0.0})
    logger.close()
    rows = read_jsonl(os.path.join(workdir, "metrics.jsonl"))
    assert [r["step"] for r in rows] == [0, 1, 2]
    assert rows[-1]["reward_mean"] == 0.9
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(tmp_path / "tensorboard"))
    png = plot_curves(rows, str(tmp_path / "curves.png"), ["reward_mean", "kl", "absent"])
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="none of the requested"):
        plot_curves(rows, str(tmp_path / "x.png"), ["absent"])
