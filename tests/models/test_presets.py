"""The 1.5-8B presets: parameter counts from `jax.eval_shape` (nothing is allocated) against the
published ones, and their architecture as a Hugging Face config states it."""

import functools

import jax
import pytest

from rljax import models
from rljax.models import hf

# Parameter counts of the checkpoints' safetensors (the model cards' "Number of Parameters").
# Gemma 3 4B's card gives 4.3B for the whole model with its vision tower; its language model
# alone, the part a preset describes, has 3.88B.
PUBLISHED = {
    "qwen2.5-1.5b": 1_543_714_304,
    "qwen2.5-3b": 3_085_938_688,
    "qwen2.5-7b": 7_615_616_512,
    "llama3.1-8b": 8_030_261_248,
    "qwen3-8b": 8_190_735_360,
    "gemma3-4b": 3_880_000_000,
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_parameter_count_is_within_half_a_percent_of_the_published_one(name):
    shapes = jax.eval_shape(functools.partial(models.init, models.get_config(name)), jax.random.PRNGKey(0))
    assert all(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(shapes))  # no weight exists
    count = models.count_params(shapes)
    assert abs(count / PUBLISHED[name] - 1) <= 0.005, (name, count)


@pytest.mark.parametrize("name, model_type", [("llama3.1-8b", "llama"), ("qwen2.5-7b", "qwen2"),
                                              ("qwen3-8b", "qwen3"), ("qwen2.5-3b", "qwen2"),
                                              ("gemma3-4b", "gemma3_text")])
def test_preset_survives_the_hugging_face_config_round_trip(name, model_type):
    """The preset written as a transformers config.json and read back is the same architecture
    (so `load_hf` of the real checkpoint gives this config, whose shapes the AOT compile used)."""
    cfg = models.get_config(name)
    assert hf.config_from_hf(hf.config_to_hf(cfg, model_type)) == cfg
