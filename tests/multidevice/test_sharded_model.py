"""The model on 8 devices: sharded forward passes, gradients and cached decoding equal the
single-device ones, under the meshes of `rljax.sharding` and its rules.

Runs in its own process (tests/test_multidevice.py sets 8 fake CPU devices); skipped elsewhere.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from rljax import models, sharding

if jax.device_count() < 8:
    pytest.skip("needs 8 devices; tests/test_multidevice.py runs this file on 8 fake CPU devices",
                allow_module_level=True)

# Heads, kv heads and MLP divisible by tensor=2 and 4, except kv_heads=2 on tensor=4, which
# exercises the dropping of non-dividing mesh axes.
CFG = models.get_config("tiny", n_heads=4, n_kv_heads=2, head_dim=16, d_model=64, mlp_dim=128,
                        vocab_size=256, n_layers=2)
B, T = 8, 12
TOL = 1e-5
MESHES = [(8, 1, 1), (2, 2, 2), (1, 4, 2), (2, 1, 4)]  # (data, fsdp, tensor)


def _inputs():
    tokens = jax.random.randint(jax.random.PRNGKey(1), (B, T), 0, CFG.vocab_size)
    mask = jnp.arange(T)[None, :] >= (jnp.arange(B) % 4)[:, None]  # left padding of 0..3
    return tokens, mask


def _max_diff(a, b) -> float:
    pairs = zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    return max(float(np.max(np.abs(np.asarray(x, np.float32) - np.asarray(y, np.float32))))
               for x, y in pairs)


@functools.partial(jax.jit, static_argnums=0)
def _logits_and_grads(cfg, params, tokens, mask):
    """Logits, and gradients of minus the mean log-probability of the next real token (a loss
    that touches every parameter), in one compiled program."""

    def loss(params):
        logits, _ = models.apply(cfg, params, tokens, mask=mask)
        logp = jax.nn.log_softmax(logits[:, :-1])
        logp = jnp.take_along_axis(logp, tokens[:, 1:, None], -1)[..., 0]
        m = mask[:, 1:] & mask[:, :-1]
        return -jnp.sum(logp * m) / jnp.sum(m), logits

    grads, logits = jax.grad(loss, has_aux=True)(params)
    return logits, grads


def _sharded_logits_and_grads(cfg, params, mesh):
    tokens, mask = jax.device_put(_inputs(), sharding.batch_sharding(mesh, 2))
    params = sharding.shard_params(cfg, params, mesh)
    with sharding.use_mesh(mesh):
        return params, _logits_and_grads(cfg, params, tokens, mask)


@pytest.fixture(scope="module")
def unsharded():
    params = models.init(CFG, jax.random.PRNGKey(0))
    return params, _logits_and_grads(CFG, params, *_inputs())


@pytest.mark.parametrize("shape", MESHES, ids=lambda s: "x".join(map(str, s)))
def test_sharded_forward_and_grads_match(shape, unsharded):
    params, (ref_logits, ref_grads) = unsharded
    mesh = sharding.make_mesh(*shape)
    params, (logits, grads) = _sharded_logits_and_grads(CFG, params, mesh)

    kv_heads = "tensor" if CFG.n_kv_heads % mesh.shape["tensor"] == 0 else None
    attn, mlp = params["layers_0"]["attn"], params["layers_0"]["mlp"]
    assert params["embed"]["embedding"].sharding.spec == P(("tensor", "fsdp"), None)
    assert attn["q"]["kernel"].sharding.spec == P("fsdp", "tensor", None)
    assert attn["k"]["kernel"].sharding.spec == P("fsdp", kv_heads, None)
    assert attn["o"]["kernel"].sharding.spec == P("tensor", None, "fsdp")
    assert mlp["down"]["kernel"].sharding.spec == P("tensor", "fsdp")
    assert params["final_norm"]["scale"].sharding.spec == P("fsdp")
    # The shards really are slices: [D, N, H] split over fsdp and tensor.
    q_shard = attn["q"]["kernel"].addressable_shards[0].data.shape
    assert q_shard == (64 // mesh.shape["fsdp"], 4 // mesh.shape["tensor"], 16)

    logits_diff, grads_diff = _max_diff(logits, ref_logits), _max_diff(grads, ref_grads)
    print(f"mesh {shape}: max |logits diff| {logits_diff:.2e}, max |grad diff| {grads_diff:.2e}")
    assert logits_diff < TOL
    assert grads_diff < TOL


def test_scanned_layers_sharded():
    cfg = CFG.replace(scan_layers=True)
    params = models.init(cfg, jax.random.PRNGKey(0))
    ref_logits, ref_grads = _logits_and_grads(cfg, params, *_inputs())
    mesh = sharding.make_mesh(2, 2, 2)
    params, (logits, grads) = _sharded_logits_and_grads(cfg, params, mesh)

    layers = params["layers"]
    assert layers["attn"]["q"]["kernel"].sharding.spec == P(None, "fsdp", "tensor", None)
    assert layers["mlp"]["gate"]["kernel"].sharding.spec == P(None, "fsdp", "tensor")
    logits_diff, grads_diff = _max_diff(logits, ref_logits), _max_diff(grads, ref_grads)
    print(f"scan_layers, mesh (2, 2, 2): max |logits diff| {logits_diff:.2e}, "
          f"max |grad diff| {grads_diff:.2e}")
    assert logits_diff < TOL
    assert grads_diff < TOL


def _prefill_and_decode(cfg, params, cache, tokens, mask, next_tokens):
    """A prompt written into the cache, then one decode step; returns both logits and the cache."""
    prefill_logits, cache = models.apply(cfg, params, tokens, mask=mask, cache=cache)
    step_logits, cache = models.apply(cfg, params, next_tokens, mask=jnp.ones_like(next_tokens, bool),
                                      cache=cache)
    return prefill_logits, step_logits, cache


def test_sharded_kv_cache_decode(unsharded):
    params = unsharded[0]
    tokens, mask = _inputs()
    next_tokens = tokens[:, :1]
    max_len = T + 4
    ref = _prefill_and_decode(CFG, params, models.init_cache(CFG, B, max_len), tokens, mask,
                              next_tokens)

    mesh = sharding.make_mesh(2, 2, 2)
    cache_shardings = sharding.cache_shardings(CFG, mesh, B, max_len)
    cache = jax.device_put(models.init_cache(CFG, B, max_len), cache_shardings)
    assert all(k.sharding.spec == P(("data", "fsdp"), "tensor", None, None) for k in cache["k"])
    assert cache["mask"].sharding.spec == P(("data", "fsdp"), None)
    tokens, mask, next_tokens = jax.device_put((tokens, mask, next_tokens),
                                               sharding.batch_sharding(mesh, 2))
    with sharding.use_mesh(mesh):
        out = _prefill_and_decode(CFG, sharding.shard_params(CFG, params, mesh), cache, tokens,
                                  mask, next_tokens)

    diff = _max_diff(out, ref)
    print(f"KV-cache prefill + decode step, mesh (2, 2, 2): max |diff| {diff:.2e}")
    assert diff < TOL
    np.testing.assert_array_equal(out[2]["index"], T + 1)


def test_init_sharded_matches_init():
    mesh = sharding.make_mesh(1, 4, 2)
    key = jax.random.PRNGKey(3)
    params = sharding.init_sharded(CFG, key, mesh)
    expected = sharding.param_shardings(CFG, mesh)
    for x, s in zip(jax.tree.leaves(params), jax.tree.leaves(expected), strict=True):
        assert x.sharding.is_equivalent_to(s, x.ndim), (x.sharding, s)
    assert _max_diff(params, models.init(CFG, key)) == 0.0
