"""Model configuration: one decoder-only transformer covering Llama, Qwen, Gemma and SmolLM2.

A `ModelConfig` is a frozen dataclass, so it is hashable and can be passed to `jax.jit` as a
static argument. Every architectural difference between the supported families is a field
here; the transformer itself has no per-family branches beyond reading these fields.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

import jax.numpy as jnp

LayerType = Literal["full", "sliding"]
# The projections LoRA adapters may sit on: attention's q, k, v, o and the gated MLP's.
LORA_TARGETS = ("q", "k", "v", "o", "gate", "up", "down")


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """RoPE frequency scaling.

    kind="linear": every inverse frequency is divided by `factor` (position interpolation,
      Chen et al. 2023; used by Gemma 3's global layers).
    kind="llama3": the wavelength-dependent scaling of Llama 3.1+ (Meta, 2024): low frequencies
      (wavelength > original_max_position / low_freq_factor) are divided by `factor`, high
      frequencies (wavelength < original_max_position / high_freq_factor) are kept, and the band
      between is interpolated smoothly.
    """

    kind: Literal["linear", "llama3"] = "linear"
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position: int = 8192


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Hyperparameters of the decoder-only transformer.

    Shapes use the project alphabet: V vocab, D model, N query heads, K kv heads, H head dim,
    F MLP hidden, L layers.
    """

    vocab_size: int = 256
    d_model: int = 64  # D
    n_layers: int = 2  # L
    n_heads: int = 4  # N
    n_kv_heads: int = 2  # K (grouped-query attention when K < N)
    head_dim: int = 16  # H
    mlp_dim: int = 128  # F
    activation: Literal["silu", "gelu_tanh"] = "silu"  # gated MLP: act(x W_gate) * (x W_up)
    norm_eps: float = 1e-6
    # Gemma's RMSNorm multiplies by (1 + w) with w initialised at 0; Llama/Qwen multiply by w.
    norm_plus_one: bool = False
    qkv_bias: bool = False  # Qwen2 / Qwen2.5
    qk_norm: bool = False  # Qwen3 and Gemma 3: RMSNorm over H on queries and keys
    # Gemma 2/3 "sandwich" norms: an extra RMSNorm on each block's output before the residual add.
    post_norms: bool = False
    tie_embeddings: bool = True
    scale_embeddings: bool = False  # Gemma: embeddings multiplied by sqrt(D)
    # Attention scores are q.k * attn_scale**-0.5; None means head_dim (Gemma's query_pre_attn_scalar).
    attn_scale: float | None = None
    attn_softcap: float | None = None  # Gemma 2: scores <- c * tanh(scores / c)
    final_softcap: float | None = None  # Gemma 2: logits <- c * tanh(logits / c)
    rope_theta: float = 10_000.0
    rope_scaling: RopeScaling | None = None
    # Sliding-window layers (Gemma 2/3): a query at position p attends to keys at p - window < q <= p.
    sliding_window: int | None = None
    local_rope_theta: float | None = None  # RoPE base of sliding layers (Gemma 3), default rope_theta
    # One entry per layer; empty means every layer is "full".
    layer_types: tuple[LayerType, ...] = ()
    max_seq_len: int = 2048
    value_head: bool = False  # per-token scalar head (critic), on the same trunk
    lm_head: bool = True  # set False for a critic / reward model that needs no logits
    param_dtype: str = "float32"
    dtype: str = "float32"  # compute dtype: "bfloat16" on accelerators
    remat: bool = False  # rematerialise each block in the backward pass
    scan_layers: bool = False  # lax.scan over layers: one compiled block, faster compiles
    # LoRA (Hu et al. 2021, `rljax.models.lora`): low-rank adapters on these projections, read
    # from the "lora" entry of the params when it is there; rank 0 is no adapters.
    lora_rank: int = 0
    lora_alpha: float = 16.0
    lora_targets: tuple[str, ...] = ("q", "k", "v", "o", "gate", "up", "down")

    def __post_init__(self):
        if self.n_heads % self.n_kv_heads:
            raise ValueError(
                f"n_heads={self.n_heads} must be a multiple of n_kv_heads={self.n_kv_heads}"
            )
        if self.layer_types and len(self.layer_types) != self.n_layers:
            raise ValueError(
                f"layer_types has {len(self.layer_types)} entries; n_layers={self.n_layers}"
            )
        if "sliding" in self.layer_types and not self.sliding_window:
            raise ValueError("layer_types has sliding layers but sliding_window is not set")
        if not (self.lm_head or self.value_head):
            raise ValueError("a model needs at least one head: lm_head or value_head")
        if self.lora_rank < 0:
            raise ValueError(f"lora_rank={self.lora_rank}: the adapters' rank must be >= 1 (0: no adapters)")
        unknown = set(self.lora_targets) - set(LORA_TARGETS)
        if unknown:
            raise ValueError(f"lora_targets {sorted(unknown)} are not projections of the model; choose from "
                             f"{LORA_TARGETS}")

    @property
    def types(self) -> tuple[LayerType, ...]:
        """The type of every layer ("full" when layer_types is empty)."""
        return self.layer_types or ("full",) * self.n_layers

    @property
    def query_scale(self) -> float:
        return (self.attn_scale if self.attn_scale is not None else self.head_dim) ** -0.5

    @property
    def compute_dtype(self):
        return jnp.dtype(self.dtype)

    @property
    def weight_dtype(self):
        return jnp.dtype(self.param_dtype)

    def replace(self, **changes) -> "ModelConfig":
        return dataclasses.replace(self, **changes)


def _gemma3_layer_types(n_layers: int, pattern: int = 6) -> tuple[LayerType, ...]:
    """Gemma 3 interleaves `pattern - 1` sliding layers with one full (global) layer."""
    return tuple("full" if (i + 1) % pattern == 0 else "sliding" for i in range(n_layers))


# What each family's checkpoints share; a preset adds its sizes.
_QWEN = dict(vocab_size=151936, norm_eps=1e-6, rope_theta=1_000_000.0)
_QWEN2_5 = dict(_QWEN, qkv_bias=True, max_seq_len=32768)  # q/k/v biases
_QWEN3 = dict(_QWEN, qk_norm=True, max_seq_len=40960)  # QK-norm, no biases
_LLAMA3 = dict(vocab_size=128256, norm_eps=1e-5, rope_theta=500_000.0, max_seq_len=131072)
# Gemma 3: GELU, (1 + scale) norms before and after each sublayer, QK-norm, embeddings scaled by
# sqrt(D), scores by 1/sqrt(256); 5 sliding layers (RoPE base 10k) : 1 global (base 1M).
_GEMMA3 = dict(activation="gelu_tanh", norm_eps=1e-6, norm_plus_one=True, qk_norm=True, post_norms=True,
               scale_embeddings=True, attn_scale=256.0, rope_theta=1_000_000.0, local_rope_theta=10_000.0)


def _llama3_rope(factor: float) -> RopeScaling:
    return RopeScaling(kind="llama3", factor=factor, low_freq_factor=1.0, high_freq_factor=4.0,
                       original_max_position=8192)


PRESETS: dict[str, ModelConfig] = {
    # A tiny Llama-style model (with GQA) for tests and CPU experiments.
    "tiny": ModelConfig(),
    # HuggingFaceTB/SmolLM2-135M(-Instruct): Llama architecture.
    "smollm2-135m": ModelConfig(
        vocab_size=49152, d_model=576, n_layers=30, n_heads=9, n_kv_heads=3, head_dim=64,
        mlp_dim=1536, norm_eps=1e-5, rope_theta=100_000.0, max_seq_len=8192,
    ),
    # Qwen/Qwen2.5-0.5B, -1.5B, -3B (tied embeddings) and -7B (untied LM head, a larger vocabulary).
    "qwen2.5-0.5b": ModelConfig(**_QWEN2_5, d_model=896, n_layers=24, n_heads=14, n_kv_heads=2, head_dim=64,
                                mlp_dim=4864),
    "qwen2.5-1.5b": ModelConfig(**_QWEN2_5, d_model=1536, n_layers=28, n_heads=12, n_kv_heads=2, head_dim=128,
                                mlp_dim=8960),
    "qwen2.5-3b": ModelConfig(**_QWEN2_5, d_model=2048, n_layers=36, n_heads=16, n_kv_heads=2, head_dim=128,
                              mlp_dim=11008),
    "qwen2.5-7b": ModelConfig(**dict(_QWEN2_5, vocab_size=152064, max_seq_len=131072), d_model=3584, n_layers=28,
                              n_heads=28, n_kv_heads=4, head_dim=128, mlp_dim=18944, tie_embeddings=False),
    # Qwen/Qwen3-0.6B (head_dim 128 > D / N) and Qwen3-8B (untied LM head).
    "qwen3-0.6b": ModelConfig(**_QWEN3, d_model=1024, n_layers=28, n_heads=16, n_kv_heads=8, head_dim=128,
                              mlp_dim=3072),
    "qwen3-8b": ModelConfig(**_QWEN3, d_model=4096, n_layers=36, n_heads=32, n_kv_heads=8, head_dim=128,
                            mlp_dim=12288, tie_embeddings=False),
    # meta-llama/Llama-3.2-1B (RoPE scaled 32x) and Llama-3.1-8B (8x, untied LM head).
    "llama3.2-1b": ModelConfig(**_LLAMA3, d_model=2048, n_layers=16, n_heads=32, n_kv_heads=8, head_dim=64,
                               mlp_dim=8192, rope_scaling=_llama3_rope(32.0)),
    "llama3.1-8b": ModelConfig(**_LLAMA3, d_model=4096, n_layers=32, n_heads=32, n_kv_heads=8, head_dim=128,
                               mlp_dim=14336, rope_scaling=_llama3_rope(8.0), tie_embeddings=False),
    # google/gemma-3-1b-pt (window 512) and the language model of gemma-3-4b-pt (window 1024, the
    # global layers' positions interpolated 8x).
    "gemma3-1b": ModelConfig(**_GEMMA3, vocab_size=262144, d_model=1152, n_layers=26, n_heads=4, n_kv_heads=1,
                             head_dim=256, mlp_dim=6912, sliding_window=512, layer_types=_gemma3_layer_types(26),
                             max_seq_len=32768),
    "gemma3-4b": ModelConfig(**_GEMMA3, vocab_size=262208, d_model=2560, n_layers=34, n_heads=8, n_kv_heads=4,
                             head_dim=256, mlp_dim=10240, sliding_window=1024, layer_types=_gemma3_layer_types(34),
                             rope_scaling=RopeScaling(kind="linear", factor=8.0), max_seq_len=131072),
}


def get_config(name: str, **overrides) -> ModelConfig:
    """Returns the preset `name` ("tiny", "smollm2-135m", "qwen2.5-0.5b", "qwen3-0.6b",
    "llama3.2-1b", "gemma3-1b", "qwen2.5-1.5b", "qwen2.5-3b", "gemma3-4b", "qwen2.5-7b",
    "llama3.1-8b", "qwen3-8b"), with any field overridden by keyword."""
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name].replace(**overrides)


def embedding_scale(cfg: ModelConfig) -> float:
    return math.sqrt(cfg.d_model) if cfg.scale_embeddings else 1.0
