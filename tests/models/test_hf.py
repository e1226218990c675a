"""rljax.models.hf against transformers: tiny random models of every supported family.

Parity is max |logit difference| <= 1e-4 in float32 over the real tokens of a batch whose second
row is left-padded, with positions cumsum(mask) - 1 given to both sides.
"""

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rljax import models, sharding

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TOL = 1e-4
VOCAB, LENGTH, PAD = 128, 12, 3
_SMALL = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_attention_heads=4,
              num_key_value_heads=2, num_hidden_layers=2)

# family -> (transformers config class, its kwargs, ModelConfig fields the checkpoint must give).
# Each case switches on the features of its family so that parity tests them.
FAMILIES = {
    "llama": ("LlamaConfig", dict(
        _SMALL, tie_word_embeddings=False,
        # original_max_position 16: every wavelength band of the llama3 scaling is hit at T=12.
        rope_parameters=dict(rope_type="llama3", rope_theta=10_000.0, factor=8.0, low_freq_factor=1.0,
                             high_freq_factor=4.0, original_max_position_embeddings=16)),
        dict(tie_embeddings=False, rope_scaling=models.RopeScaling("llama3", 8.0, 1.0, 4.0, 16))),
    "qwen2": ("Qwen2Config", dict(_SMALL, tie_word_embeddings=True),
              dict(qkv_bias=True, tie_embeddings=True)),
    "qwen3": ("Qwen3Config", dict(_SMALL, head_dim=32, tie_word_embeddings=False),
              dict(qk_norm=True, head_dim=32)),
    "gemma": ("GemmaConfig", dict(_SMALL, num_key_value_heads=1, head_dim=16),
              dict(activation="gelu_tanh", scale_embeddings=True, norm_plus_one=True, n_kv_heads=1)),
    "gemma2": ("Gemma2Config", dict(
        _SMALL, head_dim=16, sliding_window=4, query_pre_attn_scalar=24, final_logit_softcapping=10.0,
        attn_logit_softcapping=2.0),
        dict(post_norms=True, attn_scale=24.0, attn_softcap=2.0, final_softcap=10.0, sliding_window=4,
             layer_types=("sliding", "full"))),
    "gemma3": ("Gemma3TextConfig", dict(
        _SMALL, num_hidden_layers=3, head_dim=16, sliding_window=4,
        layer_types=["sliding_attention", "full_attention", "sliding_attention"],
        rope_parameters={"full_attention": dict(rope_type="linear", factor=4.0, rope_theta=10_000.0),
                         "sliding_attention": dict(rope_type="default", rope_theta=100.0)}),
        dict(qk_norm=True, post_norms=True, local_rope_theta=100.0, rope_theta=10_000.0,
             rope_scaling=models.RopeScaling("linear", 4.0), layer_types=("sliding", "full", "sliding"))),
}


def _hf_config(family):
    cls, kwargs, _ = FAMILIES[family]
    return getattr(transformers, cls)(**kwargs)


def _randomize(model, seed=0):
    """Random weights at scales where every term matters (norms and biases away from 1 / 0)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if p.ndim == 2:
                p.copy_(noise * (1.0 if "embed" in name else p.shape[1] ** -0.5))
            else:
                p.add_(0.1 * noise)


def _hf_model(config, seed=0):
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    model = model.float().eval()
    _randomize(model, seed)
    return model


def _batch():
    tokens = np.random.RandomState(0).randint(0, VOCAB, (2, LENGTH))
    mask = np.ones((2, LENGTH), bool)
    mask[1, :PAD] = False  # left padding
    return tokens, mask


def _hf_logits(model, tokens, mask):
    positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
    with torch.no_grad():
        out = model(input_ids=torch.tensor(tokens), attention_mask=torch.tensor(mask.astype(np.int64)),
                    position_ids=torch.tensor(positions))
    return out.logits.float().numpy()


def _max_diff(cfg, params, reference, tokens, mask):
    logits, _ = models.apply(cfg, params, jnp.asarray(tokens), mask=jnp.asarray(mask))
    return float(np.abs(np.asarray(logits) - reference)[mask].max())


def _load_hf_model(path):
    return transformers.AutoModelForCausalLM.from_pretrained(
        path, attn_implementation="eager", dtype=torch.float32).eval()


def _assert_same_params(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """family -> (dir saved by transformers 5.x save_pretrained, the model, its reference logits)."""
    tokens, mask = _batch()
    out = {}
    for family in FAMILIES:
        model = _hf_model(_hf_config(family))
        path = tmp_path_factory.mktemp(family)
        model.save_pretrained(path)
        out[family] = (path, model, _hf_logits(model, tokens, mask))
    return out


@pytest.mark.parametrize("family", FAMILIES)
def test_parity_5x_layout(checkpoints, family):
    path, _, reference = checkpoints[family]
    assert "rope_parameters" in json.loads((path / "config.json").read_text())
    cfg, params = models.load_hf(path)
    for field, value in FAMILIES[family][2].items():
        assert getattr(cfg, field) == value, field
    assert np.abs(reference).max() > 1.0  # the logits are not trivially small
    assert _max_diff(cfg, params, reference, *_batch()) <= TOL


def _to_4x_layout(config: dict) -> dict:
    """Rewrites a 5.x config.json in the 4.x layout: rope_theta, rope_scaling (Llama with the
    older "type" key), Gemma 3's rope_local_base_freq and sliding_window_pattern instead of
    layer_types."""
    config = json.loads(json.dumps(config))  # a deep copy
    rope = config.pop("rope_parameters")
    local = rope.pop("sliding_attention", None)
    full = dict(rope.pop("full_attention", rope))
    config["rope_theta"] = full.pop("rope_theta")
    if full["rope_type"] != "default":
        if config["model_type"] == "llama":
            full["type"] = full.pop("rope_type")
        config["rope_scaling"] = full
    if config["model_type"] == "gemma3_text":
        config["rope_local_base_freq"] = local["rope_theta"]
        config["sliding_window_pattern"] = 2  # sliding, full, sliding
        del config["layer_types"], config["_sliding_window_pattern"]
    return config


@pytest.mark.parametrize("family", FAMILIES)
def test_parity_4x_layout(checkpoints, family, tmp_path):
    path, _, reference = checkpoints[family]
    config_5x = json.loads((path / "config.json").read_text())
    config_4x = _to_4x_layout(config_5x)
    assert models.config_from_hf(config_4x) == models.config_from_hf(config_5x)
    (tmp_path / "config.json").write_text(json.dumps(config_4x))
    os.symlink(path / "model.safetensors", tmp_path / "model.safetensors")
    # transformers reads the 4.x layout as the same model ...
    tokens, mask = _batch()
    np.testing.assert_array_equal(_hf_logits(_load_hf_model(tmp_path), tokens, mask), reference)
    # ... and so does load_hf.
    cfg, params = models.load_hf(tmp_path)
    assert _max_diff(cfg, params, reference, tokens, mask) <= TOL


@pytest.mark.parametrize("family", FAMILIES)
def test_config_defaults_match_transformers(family):
    """Keys missing from config.json take the defaults of the transformers class."""
    cls = FAMILIES[family][0]
    minimal = dict(_SMALL, model_type=getattr(transformers, cls).model_type)
    if family == "llama":
        del minimal["num_key_value_heads"]  # Llama's default: as many as query heads
    full = getattr(transformers, cls)(**minimal).to_dict()
    assert models.config_from_hf(minimal) == models.config_from_hf(full)


def test_gemma3_multimodal_checkpoint(checkpoints, tmp_path):
    """A Gemma3ForConditionalGeneration checkpoint: text_config, prefixed names, a vision tower."""
    from safetensors.numpy import load_file, save_file

    path, _, _ = checkpoints["gemma3"]
    text_config = json.loads((path / "config.json").read_text())
    wrapper = {"model_type": "gemma3", "text_config": text_config, "vision_config": {}}
    (tmp_path / "config.json").write_text(json.dumps(wrapper))
    tensors = {name.replace("model.", "model.language_model.", 1): value
               for name, value in load_file(path / "model.safetensors").items()}
    tensors["model.vision_tower.patch_embedding.weight"] = np.zeros((2, 2), np.float32)
    tensors["model.multi_modal_projector.mm_input_projection_weight"] = np.zeros(3, np.float32)
    save_file(tensors, tmp_path / "model.safetensors")
    cfg, params = models.load_hf(tmp_path)
    expected_cfg, expected = models.load_hf(path)
    assert cfg == expected_cfg
    _assert_same_params(params, expected)


def test_sharded_checkpoint_with_and_without_index(checkpoints, tmp_path):
    _, model, reference = checkpoints["llama"]
    model.save_pretrained(tmp_path, max_shard_size="40KB")
    assert len(list(tmp_path.glob("*.safetensors"))) > 2
    cfg, params = models.load_hf(tmp_path)
    assert _max_diff(cfg, params, reference, *_batch()) <= TOL
    (tmp_path / "model.safetensors.index.json").unlink()
    _assert_same_params(models.load_hf(tmp_path)[1], params)


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_bf16_checkpoint(checkpoints, family, tmp_path):
    """bf16 files load (upcast to float32 by default) with the logits of the upcast HF model."""
    _, model, _ = checkpoints[family]
    model.to(torch.bfloat16).save_pretrained(tmp_path)
    model.float()
    reference = _hf_logits(_load_hf_model(tmp_path), *_batch())  # bf16 weights, float32 compute
    cfg, params = models.load_hf(tmp_path)
    assert cfg.param_dtype == "float32"
    assert _max_diff(cfg, params, reference, *_batch()) <= TOL
    cfg16, params16 = models.load_hf(tmp_path, dtype=jnp.bfloat16)
    assert cfg16.param_dtype == "bfloat16"
    _assert_same_params(params16, jax.tree.map(lambda x: x.astype(jnp.bfloat16), params))


def _random_params(cfg, seed=0):
    """Random params of init's layout (NumPy, so no per-shape compilation of RNG kernels)."""
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(lambda k: models.init(cfg, k), jax.random.PRNGKey(0))
    return jax.tree.map(lambda s: (0.3 * rng.standard_normal(s.shape)).astype(s.dtype), shapes)


@pytest.mark.parametrize("family", FAMILIES)
def test_save_hf_round_trip(checkpoints, family, tmp_path):
    """save_hf -> transformers gives rljax's logits; save_hf -> load_hf gives the same params."""
    cfg = models.load_hf(checkpoints[family][0])[0]
    params = _random_params(cfg)
    models.save_hf(cfg, params, tmp_path)
    tokens, mask = _batch()
    assert _max_diff(cfg, params, _hf_logits(_load_hf_model(tmp_path), tokens, mask), tokens, mask) <= TOL
    cfg2, params2 = models.load_hf(tmp_path)
    assert cfg2 == cfg
    _assert_same_params(params2, params)


def test_save_hf_sharded_bf16(checkpoints, tmp_path):
    cfg = models.load_hf(checkpoints["qwen3"][0])[0]
    params = _random_params(cfg)
    models.save_hf(cfg, params, tmp_path, dtype=jnp.bfloat16, max_shard_bytes=30_000)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 2
    assert json.loads((tmp_path / "config.json").read_text())["dtype"] == "bfloat16"
    _, loaded = models.load_hf(tmp_path, dtype=jnp.bfloat16)
    _assert_same_params(loaded, jax.tree.map(lambda x: x.astype(jnp.bfloat16), params))
    # transformers reads the shards too; bf16 weights, float32 compute on both sides.
    tokens, mask = _batch()
    cfg32, params32 = models.load_hf(tmp_path)
    reference = _hf_logits(_load_hf_model(tmp_path), tokens, mask)
    assert _max_diff(cfg32, params32, reference, tokens, mask) <= TOL
    # Saving again over the directory as one file leaves no stale shards behind.
    models.save_hf(cfg, params, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]


def test_scan_layers(checkpoints, tmp_path):
    path, _, reference = checkpoints["gemma3"]
    cfg, params = models.load_hf(path)
    cfg_scan, params_scan = models.load_hf(path, scan_layers=True)
    assert cfg_scan == cfg.replace(scan_layers=True)
    _assert_same_params(params_scan, models.stack_layers(params, cfg.n_layers))
    assert _max_diff(cfg_scan, params_scan, reference, *_batch()) <= TOL
    models.save_hf(cfg_scan, params_scan, tmp_path)
    _assert_same_params(models.load_hf(tmp_path)[1], params)


def test_mesh_places_each_parameter(checkpoints):
    path, _, reference = checkpoints["qwen2"]
    mesh = sharding.make_mesh()
    cfg, params = models.load_hf(path, shardings=lambda cfg: sharding.param_shardings(cfg, mesh))
    expected = sharding.param_shardings(cfg, mesh)
    for x, s in zip(jax.tree.leaves(params), jax.tree.leaves(expected)):
        assert x.sharding == s
    assert _max_diff(cfg, params, reference, *_batch()) <= TOL
    with pytest.raises(ValueError, match="shardings.* does not match"):
        models.load_hf(path, scan_layers=True, shardings=lambda cfg: sharding.param_shardings(
            cfg.replace(scan_layers=False), mesh))


_MULTIDEVICE = textwrap.dedent("""
    import sys, jax, numpy as np
    jax.config.update("jax_default_matmul_precision", "highest")
    from rljax import models, sharding
    mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2)
    cfg, params = models.load_hf(sys.argv[1], shardings=lambda cfg: sharding.param_shardings(cfg, mesh))
    for x, s in zip(jax.tree.leaves(params), jax.tree.leaves(sharding.param_shardings(cfg, mesh))):
        assert x.sharding.is_equivalent_to(s, x.ndim), (x.sharding, s)
    assert any(len(x.sharding.device_set) == 8 and not x.sharding.is_fully_replicated
               for x in jax.tree.leaves(params))
    np.save(sys.argv[2], np.asarray(jax.tree.leaves(params)[0]))
""")


def test_mesh_on_eight_devices(checkpoints, tmp_path):
    """Sharded placement on 8 fake CPU devices, in a process of its own."""
    path = checkpoints["gemma3"][0]
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu",
               PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
    subprocess.run([sys.executable, "-c", _MULTIDEVICE, str(path), str(tmp_path / "leaf.npy")],
                   env=env, check=True)
    _, params = models.load_hf(path)
    np.testing.assert_array_equal(np.load(tmp_path / "leaf.npy"), np.asarray(jax.tree.leaves(params)[0]))


# ---------------------------------------------------------------------------------------------
# Errors.


def test_missing_config_and_weights(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        models.load_hf(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(dict(_SMALL, model_type="llama")))
    with pytest.raises(FileNotFoundError, match="safetensors"):
        models.load_hf(tmp_path)


def test_unsupported_configs():
    with pytest.raises(ValueError, match="unsupported model_type 'mistral'"):
        models.config_from_hf(dict(_SMALL, model_type="mistral"))
    with pytest.raises(ValueError, match="RoPE type 'yarn'"):
        models.config_from_hf(
            dict(_SMALL, model_type="llama", rope_scaling={"rope_type": "yarn", "factor": 2.0}))
    with pytest.raises(ValueError, match="attention_bias"):
        models.config_from_hf(dict(_SMALL, model_type="llama", attention_bias=True))
    with pytest.raises(ValueError, match="activation 'gelu'"):
        models.config_from_hf(dict(_SMALL, model_type="llama", hidden_act="gelu"))
    cfg = models.get_config("gemma3-1b")
    with pytest.raises(ValueError, match="'llama' cannot express: .*norm_plus_one"):
        models.config_to_hf(cfg, "llama")
    assert models.config_to_hf(cfg, "gemma3_text")["model_type"] == "gemma3_text"
    scaled_everywhere = cfg.replace(local_rope_theta=None, rope_scaling=models.RopeScaling("linear", 8.0))
    with pytest.raises(ValueError, match="RoPE scaling on sliding layers"):
        models.config_to_hf(scaled_everywhere, "gemma3_text")
    with pytest.raises(ValueError, match="lacks"):
        models.config_from_hf({"model_type": "gemma3", "text_config": {"hidden_size": 64}})


def test_missing_unused_and_misshapen_tensors(checkpoints, tmp_path):
    from safetensors.numpy import load_file, save_file

    path, _, _ = checkpoints["qwen2"]
    config = json.loads((path / "config.json").read_text())
    tensors = load_file(path / "model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps(config))

    def write(t):
        save_file(t, tmp_path / "model.safetensors")

    write({k: v for k, v in tensors.items() if "layers.1.self_attn" not in k})
    with pytest.raises(ValueError, match=r"7 tensors missing.*model\.layers\.1\.self_attn\.k_proj\.bias"):
        models.load_hf(tmp_path)
    write({**tensors, "model.layers.0.self_attn.o_proj.bias": np.zeros(64, np.float32)})
    with pytest.raises(ValueError, match="does not use.*o_proj.bias"):
        models.load_hf(tmp_path)
    write({**tensors, "model.layers.0.mlp.up_proj.weight": np.zeros((64, 96), np.float32)})
    misshapen = r"up_proj.weight has shape \[64, 96\]; the config implies \[96, 64\]"
    with pytest.raises(ValueError, match=misshapen):
        models.load_hf(tmp_path)
