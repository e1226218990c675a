"""A GRPO train step jitted over 8 devices (`rljax.train.sharded`) equals the one-device step:
params, optimiser moments and metrics after two steps, on data-parallel, FSDP and tensor-parallel
meshes; the state keeps its shardings from step to step and is donated. So does PPO's step that
computes its advantages inside (GAE, whitened over the whole batch though its rows are split over
devices), on the mesh that splits everything.

Runs in its own process (tests/test_multidevice.py sets 8 fake CPU devices); skipped elsewhere.
"""

import functools

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from rljax import models, sharding
from rljax.train.sharded import shard_train_step
from tests.multiprocess.problem import CFG, PPO_CFG, STEPS, grpo_problem, ppo_problem, run_steps

if jax.device_count() < 8:
    pytest.skip("needs 8 devices; tests/test_multidevice.py runs this file on 8 fake CPU devices",
                allow_module_level=True)

TOL = 1e-5
MESHES = [(8, 1, 1), (2, 4, 1), (2, 2, 2)]  # (data, fsdp, tensor)


def _max_diff(a, b) -> float:
    pairs = zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    return max(float(np.max(np.abs(np.asarray(x, np.float32) - np.asarray(y, np.float32)))) for x, y in pairs)


PROBLEMS = {"grpo": (grpo_problem, CFG), "ppo": (ppo_problem, PPO_CFG)}
CASES = [("grpo", shape) for shape in MESHES] + [("ppo", (2, 2, 2))]


@functools.cache
def unsharded(problem: str):
    step, state, batch, key = PROBLEMS[problem][0]()
    return run_steps(jax.jit(step), state, batch, key)


@pytest.mark.parametrize("problem,shape", CASES, ids=lambda c: c if isinstance(c, str) else "x".join(map(str, c)))
def test_sharded_step_equals_unsharded(problem, shape):
    ref_state, ref_metrics = unsharded(problem)
    make_problem, cfg = PROBLEMS[problem]
    step, state, batch, key = make_problem()
    mesh = sharding.make_mesh(*shape)
    sharded = shard_train_step(step, mesh, jax.eval_shape(lambda: state), batch, models.param_axes(cfg))
    state, batch = sharded.place_state(state), sharded.place_batch(batch)
    placed = state

    state, metrics = run_steps(sharded, state, batch, key)

    assert all(x.is_deleted() for x in jax.tree.leaves(placed)), "the input state was not donated"
    q = state.params["layers_0"]["attn"]["q"]["kernel"]
    assert q.sharding.spec == P("fsdp", "tensor", None)
    assert q.addressable_shards[0].data.shape == (32 // shape[1], 4 // shape[2], 8)
    for tree in (state.params, state.opt_state[1][0].mu, state.opt_state[1][0].nu):
        for x, s in zip(jax.tree.leaves(tree), jax.tree.leaves(sharded.state_shardings.params), strict=True):
            assert x.sharding.is_equivalent_to(s, x.ndim), (x.sharding, s)
    assert batch["tokens"].sharding.spec == P(("data", "fsdp"), None)

    params_diff = _max_diff(state.params, ref_state.params)
    moments_diff = _max_diff(state.opt_state, ref_state.opt_state)
    metrics_diff = _max_diff(metrics, ref_metrics)
    print(f"mesh {shape}: {STEPS} {problem.upper()} steps, max |diff| params {params_diff:.2e}, "
          f"Adam state {moments_diff:.2e}, metrics {metrics_diff:.2e}")
    assert params_diff < TOL
    assert moments_diff < TOL
    assert metrics_diff < TOL
    assert int(state.step) == STEPS
