"""A GRPO train step jitted over 8 devices (`rljax.train.sharded`) equals the one-device step:
params, optimiser moments and metrics after two steps, on data-parallel, FSDP and tensor-parallel
meshes; the state keeps its shardings from step to step and is donated.

Runs in its own process (tests/test_multidevice.py sets 8 fake CPU devices); skipped elsewhere.
"""

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from rljax import models, sharding
from rljax.train.sharded import shard_train_step
from tests.multiprocess.problem import CFG, STEPS, grpo_problem, run_steps

if jax.device_count() < 8:
    pytest.skip("needs 8 devices; tests/test_multidevice.py runs this file on 8 fake CPU devices",
                allow_module_level=True)

TOL = 1e-5
MESHES = [(8, 1, 1), (2, 4, 1), (2, 2, 2)]  # (data, fsdp, tensor)


def _max_diff(a, b) -> float:
    pairs = zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    return max(float(np.max(np.abs(np.asarray(x, np.float32) - np.asarray(y, np.float32)))) for x, y in pairs)


@pytest.fixture(scope="module")
def unsharded():
    step, state, batch, key = grpo_problem()
    return run_steps(jax.jit(step), state, batch, key)


@pytest.mark.parametrize("shape", MESHES, ids=lambda s: "x".join(map(str, s)))
def test_sharded_grpo_step_equals_unsharded(shape, unsharded):
    ref_state, ref_metrics = unsharded
    step, state, batch, key = grpo_problem()
    mesh = sharding.make_mesh(*shape)
    sharded = shard_train_step(step, mesh, jax.eval_shape(lambda: state), batch, models.param_axes(CFG))
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
    print(f"mesh {shape}: {STEPS} GRPO steps, max |diff| params {params_diff:.2e}, "
          f"Adam state {moments_diff:.2e}, metrics {metrics_diff:.2e}")
    assert params_diff < TOL
    assert moments_diff < TOL
    assert metrics_diff < TOL
    assert int(state.step) == STEPS
