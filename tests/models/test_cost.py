"""rljax.models.cost against XLA's own count of the compiled programs' floating-point operations."""

import jax
import jax.numpy as jnp
import pytest

from rljax import models
from rljax.models import cost

# Small versions of two presets: a Llama-style model and Qwen 2.5 (q/k/v biases, GQA 7:1).
CONFIGS = {
    "tiny": models.get_config("tiny"),
    "qwen2.5-0.5b-2-layers": models.get_config("qwen2.5-0.5b", n_layers=2, vocab_size=4096),
}
B, T = 2, 32


def _xla_flops(fn, cfg):
    params = jax.eval_shape(lambda: models.init(cfg, jax.random.PRNGKey(0)))
    compiled = jax.jit(fn).lower(params, jax.ShapeDtypeStruct((B, T), jnp.int32)).compile()
    analysis = compiled.cost_analysis()
    return (analysis[0] if isinstance(analysis, list) else analysis)["flops"]


@pytest.mark.parametrize("name", CONFIGS)
def test_forward_flops_match_xla_up_to_the_elementwise_work(name):
    cfg = CONFIGS[name]
    xla = _xla_flops(lambda p, t: models.forward(cfg, p, t).logits, cfg)
    counted = cost.forward_flops(cfg, B, T)
    # XLA also counts norms, RoPE, softmax and activations, which the model count leaves out.
    assert 1.0 <= xla / counted < 1.05


@pytest.mark.parametrize("name", CONFIGS)
def test_train_step_flops_match_xla_gradient(name):
    cfg = CONFIGS[name]
    xla = _xla_flops(jax.grad(lambda p, t: jnp.sum(models.forward(cfg, p, t).logits ** 2)), cfg)
    assert 1.0 <= xla / cost.train_step_flops(cfg, B, T) < 1.05


@pytest.mark.parametrize("name", CONFIGS)
def test_decode_step_flops_match_xla_for_a_cached_step(name):
    cfg, slots = CONFIGS[name], 24
    params = jax.eval_shape(lambda: models.init(cfg, jax.random.PRNGKey(0)))
    cache = jax.eval_shape(lambda: models.init_cache(cfg, B, slots))
    step = jax.jit(lambda p, t, c: models.forward(cfg, p, t, cache=c).logits)
    analysis = step.lower(params, jax.ShapeDtypeStruct((B, 1), jnp.int32), cache).compile().cost_analysis()
    xla = (analysis[0] if isinstance(analysis, list) else analysis)["flops"]
    # The step attends to every cache slot (masked, not skipped) and to its own key.
    assert 1.0 <= xla / cost.decode_step_flops(cfg, B, slots + 1) < 1.05


def test_logit_rows_count_the_head_per_row():
    cfg = CONFIGS["tiny"]
    per_row = 2 * cfg.d_model * cfg.vocab_size
    assert cost.forward_flops(cfg, B, T) - cost.forward_flops(cfg, B, T, logit_rows=3) == per_row * (B * T - 3)
    assert cost.forward_flops(cfg.replace(lm_head=False, value_head=True), B, T) == cost.forward_flops(cfg, B, T, 0)


def test_bytes_of_a_decoding_step():
    cfg = models.get_config("qwen2.5-0.5b", dtype="bfloat16")
    assert cost.weight_bytes(cfg, 1000) == 2000
    # keys and values: 2 x 24 layers x 2 kv heads x 64 dims x 2 bytes per token and row
    assert cost.kv_bytes(cfg, batch=3, context=10) == 3 * 10 * 2 * 24 * 2 * 64 * 2


def test_bad_shapes_are_named():
    with pytest.raises(ValueError, match="batch and seq_len"):
        cost.forward_flops(CONFIGS["tiny"], 0, T)
    with pytest.raises(ValueError, match="batch and context"):
        cost.decode_step_flops(CONFIGS["tiny"], 2, 0)
