"""LoRA adapters (`rljax.models.lora`): at step 0 the adapted model is the base exactly, merged
equals unmerged, generation runs the adapted policy, bad settings are refused with the reason,
and the adapters written in PEFT's layout load with `peft` onto transformers' model of the base
with the same logits."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rljax import generate, models
from rljax.models import lora

VOCAB = 64
VARIANTS = {
    "llama-tied": dict(),
    "untied": dict(tie_embeddings=False),
    "qwen2-bias": dict(qkv_bias=True),
    "qwen3-qknorm": dict(qk_norm=True, head_dim=32),
    "gemma2-like": dict(activation="gelu_tanh", norm_plus_one=True, post_norms=True, final_softcap=10.0),
}


def _cfg(variant, scan=False):
    return models.get_config("tiny", vocab_size=VOCAB, scan_layers=scan, **VARIANTS[variant])


def _randomised(cfg, seed=1):
    """Adapters with B away from 0 (a trained adapter), so that they change the outputs."""
    adapters = lora.init_adapters(cfg, jax.random.PRNGKey(seed))
    leaves, tree = jax.tree.flatten(adapters)
    keys = jax.random.split(jax.random.PRNGKey(seed + 1), len(leaves))
    return jax.tree.unflatten(tree, [x + 0.05 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])


def _tokens(seed=2):
    tokens = jax.random.randint(jax.random.PRNGKey(seed), (2, 9), 0, VOCAB)
    mask = jnp.ones((2, 9), bool).at[1, :3].set(False)  # a left-padded row
    return tokens, mask


@pytest.mark.parametrize("scan", [False, True], ids=["per-layer", "scanned"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_fresh_adapters_leave_the_base_exactly_and_merging_keeps_the_adapted_model(variant, scan):
    base_cfg = _cfg(variant, scan)
    cfg = lora.with_lora(base_cfg, rank=4, alpha=8.0)
    base = models.init(base_cfg, jax.random.PRNGKey(0))
    tokens, mask = _tokens()
    want, _ = models.apply(base_cfg, base, tokens, mask=mask)
    fresh, _ = models.apply(cfg, {**base, models.ADAPTERS: lora.init_adapters(cfg, jax.random.PRNGKey(1))},
                            tokens, mask=mask)
    np.testing.assert_array_equal(fresh, want)  # B = 0: exactly the base

    policy = {**base, models.ADAPTERS: _randomised(cfg)}
    adapted, _ = models.apply(cfg, policy, tokens, mask=mask)
    merged, _ = models.apply(base_cfg, lora.merge(cfg, policy), tokens, mask=mask)
    assert float(jnp.max(jnp.abs(adapted - want))) > 1e-2  # the adapters do change the model
    np.testing.assert_allclose(merged, adapted, rtol=0, atol=1e-5)


def test_adapters_sit_on_the_chosen_projections_with_the_rank_and_logical_axes():
    cfg = lora.with_lora(_cfg("llama-tied"), rank=3, targets=("q", "down"))
    adapters = lora.init_adapters(cfg, jax.random.PRNGKey(0))
    assert set(adapters["layers_0"]) == {"attn", "mlp"}
    assert set(adapters["layers_0"]["attn"]) == {"q"} and set(adapters["layers_0"]["mlp"]) == {"down"}
    q = adapters["layers_0"]["attn"]["q"]
    assert q["a"].shape == (cfg.d_model, 3) and q["b"].shape == (3, cfg.n_heads, cfg.head_dim)
    assert not np.any(np.asarray(q["b"])) and np.any(np.asarray(q["a"]))
    axes = lora.adapter_axes(cfg)["layers_0"]["attn"]["q"]
    assert tuple(axes["a"]) == ("embed", None) and tuple(axes["b"]) == (None, "q_heads", "head_dim")


def test_generation_samples_the_adapted_policy():
    base_cfg = _cfg("llama-tied")
    cfg = lora.with_lora(base_cfg, rank=4)
    policy = {**models.init(base_cfg, jax.random.PRNGKey(0)), models.ADAPTERS: _randomised(cfg)}
    prompt, mask = jnp.ones((1, 3), jnp.int32), jnp.ones((1, 3), bool)
    run = lambda c, p: np.asarray(generate.generate(c, p, prompt, mask, jax.random.PRNGKey(5),  # noqa: E731
                                                    max_new_tokens=6, temperature=0.0).tokens)
    np.testing.assert_array_equal(run(cfg, policy), run(base_cfg, lora.merge(cfg, policy)))
    assert not np.array_equal(run(cfg, policy), run(base_cfg, lora.split(policy)[0]))


@pytest.mark.parametrize("kwargs,message", [
    (dict(rank=0), "rank=0: a rank is an integer >= 1"),
    (dict(rank=-2), "rank=-2"),
    (dict(rank=4, targets=("q", "qkv")), r"lora_targets \['qkv'\] are not projections of the model"),
    (dict(rank=4, targets=()), "at least one target"),
])
def test_bad_adapter_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        lora.with_lora(_cfg("llama-tied"), **kwargs)


def test_merge_and_adapters_need_a_lora_config():
    with pytest.raises(ValueError, match="no adapters"):
        lora.init_adapters(_cfg("llama-tied"), jax.random.PRNGKey(0))


@pytest.mark.parametrize("scan", [False, True], ids=["per-layer", "scanned"])
def test_peft_loads_the_adapters_onto_transformers_with_rljaxs_logits(tmp_path, scan):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")

    base_cfg = _cfg("untied", scan).replace(norm_eps=1e-5)
    cfg = lora.with_lora(base_cfg, rank=4, alpha=12.0)
    base = models.init(base_cfg, jax.random.PRNGKey(0))
    policy = {**base, models.ADAPTERS: _randomised(cfg)}
    models.save_hf(base_cfg, base, tmp_path / "base")
    models.save_peft(cfg, policy, tmp_path / "adapter", base_model=str(tmp_path / "base"))

    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "base", dtype=torch.float32,
                                                           attn_implementation="eager")
    adapted = peft.PeftModel.from_pretrained(hf, tmp_path / "adapter").eval()
    tokens, mask = _tokens()
    positions = np.maximum(np.cumsum(np.asarray(mask), axis=1) - 1, 0)
    with torch.no_grad():
        want = adapted(input_ids=torch.tensor(np.asarray(tokens)), attention_mask=torch.tensor(np.asarray(mask)),
                       position_ids=torch.tensor(positions)).logits.numpy()
    got, _ = models.apply(cfg, policy, tokens, mask=mask)
    real = np.asarray(mask)
    assert np.max(np.abs(want - np.asarray(models.apply(base_cfg, base, tokens, mask=mask)[0]))[real]) > 1e-2
    assert np.max(np.abs(np.asarray(got) - want)[real]) <= 1e-4
