"""The main config (configs/grpo_arithmetic.py) run by `experiment.run` at tiny size on a
data=2, fsdp=2, tensor=2 mesh ends where the same run on one device ends: the SFT losses, the RL
iterations' reward, loss, gradient norm and held-out accuracy, and the final params.

Not bit for bit: under sharding XLA splits float32 sums into per-device partial sums, so values
agree to float32 rounding (TOL). The sampled tokens are compared exactly, as the decoded text of
every completion the runs sampled or evaluated: `generate`'s random draws do not depend on the
sharding (JAX's partitionable threefry), so with logits equal to rounding the two runs pick the
same tokens, unless two candidates tie to within rounding, which these tiny shapes do not hit.
Two SFT steps teach the model no correct answer, so every reward and the accuracy are 0 in both
runs and GRPO's advantages vanish; an entropy bonus gives the RL steps a gradient to compare.

Runs in its own process (tests/test_multidevice.py sets 8 fake CPU devices); skipped elsewhere.
"""

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from tests.multiprocess.problem import run_experiment

if jax.device_count() < 8:
    pytest.skip("needs 8 devices; tests/test_multidevice.py runs this file on 8 fake CPU devices",
                allow_module_level=True)

TOL = 1e-4
MESHES = {"one_device": dict(data=1, fsdp=1, tensor=1), "2x2x2": dict(data=2, fsdp=2, tensor=2)}
RL_KEYS = ("loss", "grad_norm", "entropy", "mismatch/kl", "eval/response_length")


@pytest.fixture(scope="module")
def workdirs(tmp_path_factory):
    return {name: str(tmp_path_factory.mktemp(name)) for name in MESHES}


@pytest.fixture(scope="module")
def runs(workdirs):
    """`run_experiment` of each mesh, in its own workdir."""
    return {name: run_experiment(mesh, workdirs[name]) for name, mesh in MESHES.items()}


def _column(rows, key):
    return np.array([row[key] for row in rows if key in row], np.float64)


def _close(got, want, what) -> float:
    """Asserts got == want to TOL; returns the largest relative difference."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    np.testing.assert_allclose(got, want, rtol=TOL, atol=TOL * 1e-2, err_msg=what)
    return float(np.max(np.abs(got - want) / np.maximum(np.abs(want), 1e-6), initial=0.0))


def test_sharded_run_equals_one_device_run(runs):
    (want_rows, want_state, want_texts), (got_rows, got_state, got_texts) = runs["one_device"], runs["2x2x2"]
    # 2 RL iterations; evaluations: validation and test before RL, validation after each iteration,
    # validation and test at the end.
    assert len(want_texts) == 2 + 6
    assert got_texts == want_texts
    sft = _column(want_rows, "sft/loss")
    assert len(sft) == 2 and np.all(sft > 0)
    diffs_sft = _close(_column(got_rows, "sft/loss"), sft, "sft/loss")
    rl_want = [row for row in want_rows if "reward_mean" in row]
    rl_got = [row for row in got_rows if "reward_mean" in row]
    assert len(rl_want) == len(rl_got) == 2
    assert [r["reward_mean"] for r in rl_got] == [r["reward_mean"] for r in rl_want]
    assert np.all(_column(rl_want, "grad_norm") > 0)
    diffs = {key: _close(_column(rl_got, key), _column(rl_want, key), key) for key in RL_KEYS}
    diffs["eval/accuracy"] = _close(_column(got_rows, "eval/accuracy"), _column(want_rows, "eval/accuracy"),
                                    "eval/accuracy")
    diffs["params"] = max(_close(got, want, jax.tree_util.keystr(path)) for (path, got), want in zip(
        jax.tree_util.tree_leaves_with_path(got_state.params), jax.tree.leaves(want_state.params), strict=True))
    print(f"2x2x2 vs one device, largest relative difference: sft/loss {diffs_sft:.1e}, "
          + ", ".join(f"{k} {v:.1e}" for k, v in diffs.items()))
    assert int(got_state.step) == int(want_state.step) == 2


def test_sharded_run_keeps_its_state_sharded(runs):
    _, state, _ = runs["2x2x2"]
    one_device = runs["one_device"][1].params["policy"]["layers_0"]["attn"]["q"]["kernel"]
    assert len(one_device.sharding.device_set) == 1
    q = state.params["policy"]["layers_0"]["attn"]["q"]["kernel"]  # [D=32, 2 heads, 16]
    assert len(q.sharding.device_set) == 8
    assert q.sharding.spec == P("fsdp", "tensor", None)
    assert q.addressable_shards[0].data.shape == (16, 1, 16)
    assert state.params["policy"]["embed"]["embedding"].sharding.spec == P(("tensor", "fsdp"), None)
    mu = state.opt_state[1][0].mu["policy"]["layers_0"]["attn"]["q"]["kernel"]
    assert mu.sharding.is_equivalent_to(q.sharding, q.ndim)


def test_a_rerun_restores_the_sharded_state(runs, workdirs):
    """Rerunning the finished 2x2x2 run restores its checkpoints onto the sharded state."""
    _, state, _ = runs["2x2x2"]
    _, restored, _ = run_experiment(MESHES["2x2x2"], workdirs["2x2x2"])
    for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(state), strict=True):
        assert got.sharding.is_equivalent_to(want.sharding, got.ndim), (got.sharding, want.sharding)
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
