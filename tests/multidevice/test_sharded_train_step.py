"""The RL learner jitted over 8 devices (`rljax.train.sharded`) equals the one-device learner:
params, optimiser moments and metrics after two calls, on data-parallel, FSDP and tensor-parallel
meshes, for GRPO (reference and old passes, two shuffled minibatch updates in a scan); the state
keeps its shardings from call to call and is donated. So does PPO's one update that computes its
advantages inside (GAE, whitened over the whole batch though its rows are split over devices),
on the mesh that splits everything.

Runs in its own process (tests/test_multidevice.py sets 8 fake CPU devices); skipped elsewhere.
"""

import functools

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from rljax import sharding
from rljax.train.sharded import shard_train_step
from tests.multiprocess.problem import STEPS, grpo_problem, ppo_problem, run_steps

if jax.device_count() < 8:
    pytest.skip("needs 8 devices; tests/test_multidevice.py runs this file on 8 fake CPU devices",
                allow_module_level=True)

TOL = 1e-5
MESHES = [(8, 1, 1), (2, 4, 1), (2, 2, 2)]  # (data, fsdp, tensor)


def _max_diff(a, b) -> float:
    pairs = zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    return max(float(np.max(np.abs(np.asarray(x, np.float32) - np.asarray(y, np.float32)))) for x, y in pairs)


PROBLEMS = {"grpo": grpo_problem, "ppo": ppo_problem}
CASES = [("grpo", shape) for shape in MESHES] + [("ppo", (2, 2, 2))]


@functools.cache
def unsharded(problem: str):
    p = PROBLEMS[problem]()
    return run_steps(jax.jit(p.step), p.state, p.batch, p.key)


@pytest.mark.parametrize("problem,shape", CASES, ids=lambda c: c if isinstance(c, str) else "x".join(map(str, c)))
def test_sharded_step_equals_unsharded(problem, shape):
    ref_state, ref_metrics = unsharded(problem)
    p = PROBLEMS[problem]()
    mesh = sharding.make_mesh(*shape)
    sharded = shard_train_step(p.step, mesh, jax.eval_shape(lambda: p.state), p.batch, p.param_axes,
                               frozen_axes=p.frozen_axes)
    state, batch, key = sharded.place_state(p.state), sharded.place_batch(p.batch), p.key
    placed = state

    state, metrics = run_steps(sharded, state, batch, key)

    assert all(x.is_deleted() for x in jax.tree.leaves(placed)), "the input state was not donated"
    q = state.params["policy"]["layers_0"]["attn"]["q"]["kernel"]
    assert q.sharding.spec == P("fsdp", "tensor", None)
    assert q.addressable_shards[0].data.shape == (32 // shape[1], 4 // shape[2], 8)
    for tree in (state.params, state.opt_state[1][0].mu, state.opt_state[1][0].nu):
        for x, s in zip(jax.tree.leaves(tree), jax.tree.leaves(sharded.state_shardings.params), strict=True):
            assert x.sharding.is_equivalent_to(s, x.ndim), (x.sharding, s)
    assert batch.tokens.sharding.spec == P(("data", "fsdp"), None)
    assert state.frozen["reference"]["layers_0"]["attn"]["q"]["kernel"].sharding.spec == P("fsdp", "tensor", None)

    params_diff = _max_diff(state.params, ref_state.params)
    moments_diff = _max_diff(state.opt_state, ref_state.opt_state)
    metrics_diff = _max_diff(metrics, ref_metrics)
    print(f"mesh {shape}: {STEPS} {problem.upper()} learner calls, max |diff| params {params_diff:.2e}, "
          f"Adam state {moments_diff:.2e}, metrics {metrics_diff:.2e}")
    assert params_diff < TOL
    assert moments_diff < TOL
    assert metrics_diff < TOL
    assert int(state.step) == STEPS * p.updates
