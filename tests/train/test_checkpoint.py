"""Checkpoint restore tells a config change from corruption: a checkpoint whose saved shapes,
dtypes or tree differ from the target raises CheckpointMismatchError and touches nothing; one
that cannot be read is set aside and the step before it restored."""

import os
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rljax.train.checkpoint import CheckpointMismatchError, Checkpointer, abstract_like
from rljax.train.optim import make_optimizer
from rljax.train.state import TrainState


def _state(value=0.0, d_model=16, dtype=jnp.float32, extra=False):
    params = {"embed": {"embedding": jnp.full((30, d_model), value, dtype)}, "out": jnp.full((d_model,), value)}
    if extra:
        params["bias"] = jnp.zeros(3)
    return TrainState.create(params, make_optimizer(1e-2, total_steps=10), jax.random.PRNGKey(0))


def _saved(directory, steps=(1, 2)):
    ckpt = Checkpointer(str(directory), save_every=1, keep=3)
    for step in steps:
        ckpt.maybe_save(step, _state(float(step)), {"iteration": step})
    ckpt.close()


def _listing(directory):
    """Every file under `directory` with its size and modification time."""
    return sorted((os.path.relpath(os.path.join(root, name), directory), os.stat(os.path.join(root, name)).st_size,
                   os.stat(os.path.join(root, name)).st_mtime_ns)
                  for root, _, files in os.walk(directory) for name in files)


@pytest.mark.parametrize("target,expected", [
    (dict(d_model=8), r"params/embed/embedding: saved \(30, 16\) float32, expected \(30, 8\) float32"),
    (dict(dtype=jnp.bfloat16), r"params/embed/embedding: saved \(30, 16\) float32, expected \(30, 16\) bfloat16"),
    (dict(extra=True), r"params/bias: not saved, expected \(3,\) float32"),
], ids=["d_model", "dtype", "extra_leaf"])
def test_a_checkpoint_of_another_config_is_a_mismatch_and_nothing_moves(tmp_path, target, expected):
    directory = tmp_path / "ckpt"
    _saved(directory)
    before = _listing(directory)
    ckpt = Checkpointer(str(directory), save_every=1, keep=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "moved aside" warning either
        with pytest.raises(CheckpointMismatchError, match=rf"checkpoint step 2 in {directory} was written by a "
                                                          rf"different config .*{expected}"):
            ckpt.restore(abstract_like(_state(**target)))
        with pytest.raises(CheckpointMismatchError, match="checkpoint step 1"):
            ckpt.restore(abstract_like(_state(**target)), step=1)
    assert _listing(directory) == before and ckpt.latest_step() == 2
    ckpt.close()


def test_a_mismatch_lists_the_first_differences_and_counts_the_rest(tmp_path):
    directory = tmp_path / "ckpt"
    _saved(directory, steps=(1,))
    ckpt = Checkpointer(str(directory))
    with pytest.raises(CheckpointMismatchError) as caught:
        ckpt.restore(abstract_like(_state(d_model=8)))
    # embedding and out, in the params and in Adam's two moments: 6 leaves.
    message = str(caught.value)
    assert message.count(": saved (") == 5 and "and 1 more" in message and "\n" not in message
    assert isinstance(caught.value, ValueError)
    ckpt.close()


def _truncate_arrays(step_dir):
    """Halves every data file of the state, leaving orbax's _METADATA (the tree) intact."""
    for root, _, files in os.walk(step_dir / "state"):
        for name in files:
            path = os.path.join(root, name)
            if os.path.basename(root) == "d":
                os.truncate(path, os.path.getsize(path) // 2)


def _remove_metadata(step_dir):
    os.remove(step_dir / "state" / "_METADATA")


def _garble_metadata(step_dir):
    with open(step_dir / "state" / "_METADATA", "wb") as f:
        f.write(b"\0garbage")


# A failed tensorstore read can leave orbax's other pending reads to finish on a closed event loop,
# which Python reports as an unraisable RuntimeError after the test: that is noise, not a failure.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("damage", [_truncate_arrays, _remove_metadata, _garble_metadata])
def test_an_unreadable_latest_checkpoint_is_set_aside_and_the_previous_one_restored(tmp_path, damage):
    directory = tmp_path / "ckpt"
    _saved(directory)
    damage(directory / "2")
    ckpt = Checkpointer(str(directory), save_every=1, keep=3)
    with pytest.warns(UserWarning, match="step 2 .* cannot be restored .* falling back to step 1"):
        state, meta = ckpt.restore(abstract_like(_state()))
    assert meta == {"iteration": 1}
    np.testing.assert_array_equal(state.params["out"], np.full(16, 1.0))
    assert (directory / "2.corrupt").exists() and not (directory / "2").exists() and ckpt.latest_step() == 1
    ckpt.close()


def test_an_array_read_error_after_the_metadata_check_is_corruption_too(tmp_path, monkeypatch):
    # Metadata readable and matching, then tensorstore fails on the arrays: unreadable, not a mismatch.
    directory = tmp_path / "ckpt"
    _saved(directory)
    read = Checkpointer._restore

    def failing_on_step_2(self, abstract_state, step):
        if step == 2:
            raise ValueError("DATA_LOSS: Error reading chunk")
        return read(self, abstract_state, step)

    monkeypatch.setattr(Checkpointer, "_restore", failing_on_step_2)
    ckpt = Checkpointer(str(directory), save_every=1, keep=3)
    with pytest.warns(UserWarning, match=r"step 2 .*\(ValueError: DATA_LOSS.*falling back to step 1"):
        _, meta = ckpt.restore(abstract_like(_state()))
    assert meta == {"iteration": 1} and (directory / "2.corrupt").exists()
    ckpt.close()
