"""Generation on 8 devices: with the batch over data/fsdp and heads over tensor, `generate`
returns what it returns on one device.

Runs in its own process (tests/test_multidevice.py sets 8 fake CPU devices); skipped elsewhere.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rljax import generate, models, sharding

pytestmark = pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (fake) devices")

# Heads divisible by tensor=2 and 4; the 2 kv heads are replicated on tensor=4.
CFG = models.get_config("tiny", n_heads=4, n_kv_heads=2, head_dim=8, d_model=32, mlp_dim=64,
                        vocab_size=128, n_layers=2)
B, P, N_NEW, N_SAMPLES = 8, 8, 6, 2
MESHES = [(8, 1, 1), (2, 2, 2), (2, 1, 4)]  # (data, fsdp, tensor)
SAMPLINGS = [dict(temperature=0), dict(temperature=0.9, top_p=0.95, min_p=0.01)]


def _prompts():
    tokens = jax.random.randint(jax.random.PRNGKey(1), (B, P), 0, CFG.vocab_size)
    mask = jnp.arange(P)[None, :] >= (jnp.arange(B) % 4)[:, None]  # left padding of 0..3
    return tokens, mask


def _generate(params, tokens, mask, sampling):
    return generate.generate(CFG, params, tokens, mask, jax.random.PRNGKey(2),
                             max_new_tokens=N_NEW, num_samples=N_SAMPLES, eos_ids=(5,), **sampling)


@pytest.fixture(scope="module")
def params():
    return models.init(CFG, jax.random.PRNGKey(0))


@pytest.mark.parametrize("sampling", SAMPLINGS, ids=["greedy", "sampled"])
@pytest.mark.parametrize("shape", MESHES, ids=lambda s: "x".join(map(str, s)))
def test_sharded_generation_equals_unsharded(shape, sampling, params):
    expected = _generate(params, *_prompts(), sampling)
    mesh = sharding.make_mesh(*shape)
    tokens, mask = jax.device_put(_prompts(), sharding.batch_sharding(mesh, 2, batch_size=B))
    with sharding.use_mesh(mesh):
        out = _generate(sharding.shard_params(CFG, params, mesh), tokens, mask, sampling)
    np.testing.assert_array_equal(out.tokens, expected.tokens)
    np.testing.assert_array_equal(out.mask, expected.mask)
    np.testing.assert_allclose(out.logprobs, expected.logprobs, atol=1e-5, rtol=0)
    if expected.sampling_logprobs is not None:
        np.testing.assert_allclose(out.sampling_logprobs, expected.sampling_logprobs, atol=1e-5)
    assert int(out.num_steps) == int(expected.num_steps)
