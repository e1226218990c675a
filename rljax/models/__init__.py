"""Policy, value and reward networks: one Linen transformer, pure `init`/`apply` over pytrees."""

from rljax.models.api import (
    ADAPTERS,
    Output,
    apply,
    count_params,
    default_positions,
    forward,
    init,
    last_token_values,
    param_axes,
    per_layer_layout,
    reward,
)
from rljax.models.cache import Cache, init_cache
from rljax.models.config import PRESETS, ModelConfig, RopeScaling, get_config
from rljax.models.gguf import load_gguf, load_gguf_tokenizer
from rljax.models.head import head_logits, head_logprobs, head_weight, next_token_entropy, next_token_logprobs
from rljax.models.hf import config_from_hf, config_to_hf, load_hf, save_hf, save_peft
from rljax.models.layout import stack_layers, unstack_layers
