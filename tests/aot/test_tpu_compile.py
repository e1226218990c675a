"""The tiny config's RL learner and rollout compiled ahead of time for a TPU v5e:2x2 (4 chips,
fsdp=4) on this CPU host, by `experiments/aot_compile.py`, and the generation layout checked on
a mesh of 8 CPU devices.

Runs in its own process (tests/test_aot.py: libtpu, 8 fake CPU devices); skipped elsewhere.
"""

import functools
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytestmark = pytest.mark.skipif(os.environ.get("RLJAX_AOT") != "1",
                                reason="runs in its own process with libtpu: tests/test_aot.py")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "experiments"))

import aot_compile  # noqa: E402

from rljax import generate, models, sharding  # noqa: E402
from rljax.train import preflight  # noqa: E402

# The main job's config at the tiny preset's size (2 scanned layers), with a KL (a reference
# pass inside the learner): 4 prompts x 4 samples, 8 new tokens.
TINY = ["--config.model.overrides.n_layers=2", "--config.model.overrides.scan_layers=True",
        "--config.model.overrides.dtype=bfloat16", "--config.rl.prompts_per_step=4", "--config.rl.group_size=4",
        "--config.rl.sampling.max_new_tokens=8", "--config.eval.batch_size=8", "--config.rl.kl.placement=loss",
        "--config.rl.kl.coef=0.04"]
MEMORY = ("argument_bytes", "output_bytes", "alias_bytes", "temp_bytes", "peak_bytes")


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    out = tmp_path_factory.mktemp("aot") / "aot.json"
    aot_compile.main(["--config", os.path.join(ROOT, "configs", "grpo_arithmetic.py"), "--topology", "v5e:2x2",
                      "--mesh", "data=1,fsdp=4,tensor=1", "--out", str(out), *TINY])
    return json.loads(out.read_text())


def test_the_json_has_the_layout_outside_checks_read(result):
    assert result["topology"] == "v5e:2x2" and result["mesh"] == {"data": 1, "fsdp": 4, "tensor": 1}
    assert result["model"] == "tiny" and set(result["functions"]) == {"learn", "reshard", "generate"}
    for f in result["functions"].values():
        assert {*MEMORY, "hbm_bytes", "fits", "flops", "collectives", "compile_s", "bound"} <= set(f)


def test_memory_figures_add_up_and_fit_a_v5e(result):
    for name, f in result["functions"].items():
        assert all(isinstance(f[k], int) and f[k] >= 0 for k in MEMORY), name
        assert f["peak_bytes"] == (f["argument_bytes"] + f["output_bytes"] - f["alias_bytes"] + f["temp_bytes"]
                                   + f["code_bytes"])
        assert f["needed_bytes"] == f["peak_bytes"] + f["resident_bytes"]
        assert f["hbm_bytes"] == 16 * 2**30 and f["fits"]
    learn = result["functions"]["learn"]
    assert learn["alias_bytes"] > 0  # the state is donated: its buffers hold the new state
    # What a chip receives is its shard of the state (params, moments, reference) and of the batch;
    # at these tiny shapes XLA:TPU's (8, 128) tiles pad the small dimensions (at 1B+ they add <0.1%).
    shards = learn["state_bytes_per_chip"] + learn["batch_bytes_per_chip"]
    assert shards <= learn["argument_bytes"] <= 2 * shards


def test_fsdp_gathers_weights_and_reduce_scatters_gradients(result):
    learn, reshard, gen = (result["functions"][k] for k in ("learn", "reshard", "generate"))
    assert learn["collectives"]["all-gather"] > 0 and learn["collectives"]["reduce-scatter"] > 0
    assert reshard["collectives"]["all-gather"] > 0  # once per rollout ...
    assert gen["decode_gathered_bytes_per_token"] == 0  # ... so never per token
    assert learn["flops"] > 0 and 0 < learn["bound"]["mfu"] <= 1


def test_in_the_training_layout_every_token_gathers_every_weight(result):
    """The problem the generation layout removes: generate on FSDP-sharded weights all-gathers
    them again in each iteration of the token loop."""
    devices = aot_compile.topology_devices("v5e:2x2")
    mesh = sharding.make_mesh(1, 4, 1, devices=devices)
    cfg = models.get_config("tiny", n_layers=2, scan_layers=True, dtype="bfloat16")
    shapes = jax.eval_shape(functools.partial(models.init, cfg), jax.random.PRNGKey(0))
    params = aot_compile.with_shardings(shapes, sharding.param_shardings(cfg, mesh))
    prompts = jax.ShapeDtypeStruct((4, 8), jnp.int32, sharding=sharding.batch_sharding(mesh, 2))
    with sharding.use_mesh(mesh):
        lowered = generate.loop.lower(cfg, params, prompts, jax.ShapeDtypeStruct((4, 8), bool, sharding=prompts.sharding),
                                      jax.ShapeDtypeStruct((2,), jnp.uint32), max_new_tokens=4, eos_ids=(0,))
    gathered = preflight.loop_collective_bytes(lowered.compile().as_text())["all-gather"]
    # Every token gathers, in bf16, the 3/4 of each FSDP-sharded weight that the chip does not hold.
    sharded = [x for x in jax.tree.leaves(params) if "fsdp" in str(x.sharding.spec)]
    assert gathered >= sum(x.size for x in sharded) * 2 * 3 / 4


@pytest.mark.skipif(len(jax.devices("cpu")) < 8, reason="needs 8 (fake) CPU devices")
def test_generation_layout_samples_what_the_training_layout_samples():
    """On a CPU mesh (fsdp=4, tensor=2): the copy has no FSDP split, its matrices are in the
    compute dtype and its norm scales are not, and greedy generation from it is the same."""
    mesh = sharding.make_mesh(1, 4, 2, devices=jax.devices("cpu")[:8])
    cfg = models.get_config("tiny", n_layers=2, dtype="bfloat16", n_heads=4, n_kv_heads=2)
    params = sharding.init_sharded(cfg, jax.random.PRNGKey(0), mesh)
    copy = sharding.to_generation_layout(cfg, params, mesh)
    specs = [x.sharding.spec for x in jax.tree.leaves(copy)]
    assert all("fsdp" not in jax.tree.leaves(tuple(s)) for s in specs) and any("tensor" in str(s) for s in specs)
    assert copy["layers_0"]["mlp"]["up"]["kernel"].dtype == jnp.bfloat16
    assert copy["final_norm"]["scale"].dtype == jnp.float32
    tokens = jax.random.randint(jax.random.PRNGKey(1), (8, 6), 0, cfg.vocab_size)
    tokens = jax.device_put(tokens, sharding.batch_sharding(mesh, 2))
    mask = jnp.ones((8, 6), bool)
    outs = []
    for p, rules in ((params, sharding.RULES), (copy, sharding.GENERATION_RULES)):
        with sharding.use_mesh(mesh, rules):
            outs.append(generate.generate(cfg, p, tokens, mask, jax.random.PRNGKey(2), max_new_tokens=5,
                                          temperature=0.0))
    np.testing.assert_array_equal(outs[0].tokens, outs[1].tokens)
    np.testing.assert_allclose(outs[0].logprobs, outs[1].logprobs, atol=2e-2)
