"""The transformer: presets, KV-cache decoding, layouts (scan/remat), heads and precision."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rljax import models
from rljax.models.transformer import Transformer

# Published parameter counts (model cards / safetensors metadata of the Hugging Face checkpoints).
PUBLISHED_PARAMS = {
    "smollm2-135m": 134_515_008,
    "qwen2.5-0.5b": 494_032_768,
    "qwen3-0.6b": 596_049_920,
    "llama3.2-1b": 1_235_814_400,
    "gemma3-1b": 999_885_952,
}

# A tiny config with every optional feature on: sliding and full layers with their own RoPE
# bases, QK-norm, sandwich norms, (1 + w) norms, soft-capping, biases, untied head.
FEATURE_RICH = models.get_config(
    "tiny", n_layers=3, layer_types=("sliding", "full", "sliding"), sliding_window=3,
    local_rope_theta=100.0, qk_norm=True, post_norms=True, norm_plus_one=True, qkv_bias=True,
    attn_softcap=5.0, final_softcap=3.0, scale_embeddings=True, activation="gelu_tanh",
    tie_embeddings=False, attn_scale=8.0,
)


def _left_padded_batch(cfg, lengths, total, seed=1):
    tokens = jax.random.randint(jax.random.PRNGKey(seed), (len(lengths), total), 0, cfg.vocab_size)
    mask = jnp.arange(total)[None, :] >= (total - jnp.asarray(lengths))[:, None]
    return tokens, mask


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMS))
def test_preset_parameter_count_matches_published(name):
    cfg = models.get_config(name)
    shapes = jax.eval_shape(functools.partial(models.init, cfg), jax.random.PRNGKey(0))
    count = models.count_params(shapes)
    assert abs(count / PUBLISHED_PARAMS[name] - 1) <= 0.005, (name, count)


def test_unknown_preset_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown model preset"):
        models.get_config("gpt-17")


def test_invalid_head_grouping_is_rejected():
    with pytest.raises(ValueError, match="multiple of n_kv_heads"):
        models.get_config("tiny", n_heads=5, n_kv_heads=2)


@pytest.mark.parametrize("cfg", [models.get_config("tiny"), FEATURE_RICH,
                                 FEATURE_RICH.replace(scan_layers=True)],
                         ids=["tiny", "feature-rich", "feature-rich-scanned"])
def test_cached_decoding_equals_full_forward_with_left_padding(cfg):
    params = models.init(cfg, jax.random.PRNGKey(0))
    tokens, mask = _left_padded_batch(cfg, lengths=[10, 7, 4], total=10)
    full, _ = models.apply(cfg, params, tokens, mask=mask)

    # A prefill, a 3-token append onto the filled cache (a multi-turn append), then single steps.
    cache = models.init_cache(cfg, batch_size=3, max_len=16)
    steps = []
    for start, end in [(0, 5), (5, 8), (8, 9), (9, 10)]:
        logits, cache = models.apply(cfg, params, tokens[:, start:end], mask=mask[:, start:end], cache=cache)
        steps.append(logits)
    incremental = jnp.concatenate(steps, axis=1)

    real = np.asarray(mask)
    np.testing.assert_allclose(np.asarray(incremental)[real], np.asarray(full)[real], atol=1e-5, rtol=0)
    assert int(cache["index"]) == tokens.shape[1]


def test_the_cache_holds_heads_major_buffers_per_layer():
    cfg = FEATURE_RICH.replace(scan_layers=True)
    cache = models.init_cache(cfg, batch_size=3, max_len=16)
    assert [k.shape for k in cache["k"]] == [(3, cfg.n_kv_heads, cfg.head_dim, 16)] * cfg.n_layers
    assert [v.shape for v in cache["v"]] == [(3, cfg.n_kv_heads, 16, cfg.head_dim)] * cfg.n_layers
    # The scanned layout has no per-layer buffers to read: a cached pass goes through
    # models.forward, which switches to the per-layer layout, or is refused.
    params = models.init(cfg, jax.random.PRNGKey(0))
    tokens = jnp.ones((3, 2), jnp.int32)
    with pytest.raises(ValueError, match="per-layer layout"):
        Transformer(cfg).apply({"params": params}, tokens, jnp.zeros((3, 2), jnp.int32),
                               jnp.ones((3, 2), bool), cache)


def test_padding_is_never_attended_to():
    cfg = FEATURE_RICH
    params = models.init(cfg, jax.random.PRNGKey(0))
    tokens, mask = _left_padded_batch(cfg, lengths=[5], total=9)
    other_padding = tokens.at[:, :4].set((tokens[:, :4] + 7) % cfg.vocab_size)
    a, _ = models.apply(cfg, params, tokens, mask=mask)
    b, _ = models.apply(cfg, params, other_padding, mask=mask)
    np.testing.assert_array_equal(np.asarray(a)[:, 4:], np.asarray(b)[:, 4:])
    # ...and the unpadded sequence gives the same logits as its left-padded copy.
    c, _ = models.apply(cfg, params, tokens[:, 4:])
    np.testing.assert_allclose(np.asarray(a)[:, 4:], np.asarray(c), atol=1e-5, rtol=0)


def test_sliding_window_limits_the_context():
    cfg = FEATURE_RICH.replace(layer_types=("sliding",) * 3)
    params = models.init(cfg, jax.random.PRNGKey(0))
    tokens, _ = _left_padded_batch(cfg, lengths=[8], total=8)
    changed_far = tokens.at[:, 0].set((tokens[:, 0] + 1) % cfg.vocab_size)
    a, _ = models.apply(cfg, params, tokens)
    b, _ = models.apply(cfg, params, changed_far)
    # Three layers of window 3 reach 3 * (3 - 1) = 6 positions back: position 7 cannot see 0,
    # position 6 can.
    np.testing.assert_array_equal(np.asarray(a)[:, 7], np.asarray(b)[:, 7])
    assert np.abs(np.asarray(a)[:, 6] - np.asarray(b)[:, 6]).max() > 0


@pytest.mark.parametrize("changes", [dict(scan_layers=True), dict(remat=True),
                                     dict(scan_layers=True, remat=True)],
                         ids=["scan", "remat", "scan+remat"])
def test_layouts_compute_the_same_function_and_gradient(changes):
    cfg = FEATURE_RICH
    other = cfg.replace(**changes)
    params = models.init(cfg, jax.random.PRNGKey(0))
    other_params = models.stack_layers(params, cfg.n_layers) if other.scan_layers else params
    tokens, mask = _left_padded_batch(cfg, lengths=[6, 4], total=6)

    def loss(c, p):
        logits, _ = models.apply(c, p, tokens, mask=mask)
        return jnp.mean(jax.nn.log_softmax(logits)[..., 0] * mask)

    l1, g1 = jax.value_and_grad(functools.partial(loss, cfg))(params)
    l2, g2 = jax.value_and_grad(functools.partial(loss, other))(other_params)
    if other.scan_layers:
        g2 = models.unstack_layers(g2, cfg.n_layers)
    np.testing.assert_allclose(l1, l2, atol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), g1, g2)


def test_stack_unstack_round_trip():
    cfg = FEATURE_RICH
    params = models.init(cfg, jax.random.PRNGKey(0))
    stacked = models.stack_layers(params, cfg.n_layers)
    scanned_shapes = jax.eval_shape(models.init, cfg.replace(scan_layers=True), jax.random.PRNGKey(0))
    assert jax.tree.structure(stacked) == jax.tree.structure(scanned_shapes)
    jax.tree.map(np.testing.assert_array_equal, models.unstack_layers(stacked, cfg.n_layers), params)


def test_every_parameter_has_logical_axes():
    for cfg in (FEATURE_RICH.replace(value_head=True), FEATURE_RICH.replace(scan_layers=True)):
        shapes = jax.eval_shape(models.init, cfg, jax.random.PRNGKey(0))
        axes = models.param_axes(cfg)
        for spec, shape in zip(jax.tree.leaves(axes, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec)),
                               jax.tree.leaves(shapes)):
            assert len(spec) == len(shape.shape) and all(isinstance(a, str) for a in spec), (spec, shape)


def test_value_head_shares_the_trunk_and_reward_reads_the_last_real_token():
    cfg = models.get_config("tiny", value_head=True)
    params = models.init(cfg, jax.random.PRNGKey(0))
    tokens, mask = _left_padded_batch(cfg, lengths=[6, 3], total=6)
    right_padded_mask = jnp.array([[True] * 6, [True] * 3 + [False] * 3])
    out = models.forward(cfg, params, tokens, mask=right_padded_mask)
    assert out.logits.shape == (2, 6, cfg.vocab_size) and out.values.shape == (2, 6)
    head = params["value_head"]
    expected = np.asarray(out.hidden) @ np.asarray(head["kernel"])[:, 0] + np.asarray(head["bias"])[0]
    np.testing.assert_allclose(out.values, expected, atol=1e-5)
    rewards = models.reward(cfg, params, tokens, right_padded_mask)
    np.testing.assert_allclose(rewards, [out.values[0, 5], out.values[1, 2]], atol=1e-6)


def test_critic_without_lm_head():
    cfg = models.get_config("tiny", value_head=True, lm_head=False)
    params = models.init(cfg, jax.random.PRNGKey(0))
    assert "lm_head" not in params
    out = models.forward(cfg, params, jnp.zeros((1, 4), jnp.int32))
    assert out.logits is None and out.values.shape == (1, 4)
    with pytest.raises(ValueError, match="no LM head"):
        models.apply(cfg, params, jnp.zeros((1, 4), jnp.int32))


def test_bfloat16_compute_keeps_float32_params_and_logits():
    cfg = models.get_config("tiny")
    params = models.init(cfg, jax.random.PRNGKey(0))
    tokens, mask = _left_padded_batch(cfg, lengths=[6], total=6)
    ref, _ = models.apply(cfg, params, tokens, mask=mask)
    low, _ = models.apply(cfg.replace(dtype="bfloat16"), params, tokens, mask=mask)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
    assert low.dtype == jnp.float32
    np.testing.assert_allclose(low, ref, atol=0.1)
    assert np.abs(np.asarray(low) - np.asarray(ref)).max() > 0  # really computed in bfloat16


def test_llama3_rope_scaling_matches_reference_formula():
    from rljax.models.rope import inverse_frequencies

    scaling = models.RopeScaling(kind="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                 original_max_position=64)
    inv = inverse_frequencies(32, 10_000.0, scaling)
    base = 10_000.0 ** (-np.arange(0, 32, 2) / 32)
    for got, f in zip(inv, base):
        wavelength = 2 * np.pi / f
        if wavelength < 64 / 4:
            want = f
        elif wavelength > 64 / 1:
            want = f / 8
        else:
            s = (64 / wavelength - 1) / (4 - 1)
            want = (1 - s) * f / 8 + s * f
        assert got == pytest.approx(want, rel=1e-12)
