"""Hugging Face checkpoints in and out: `config.json` + `*.safetensors` <-> (`ModelConfig`, params).

Supported `model_type`s: llama (also SmolLM2), qwen2 (Qwen2/2.5), qwen3, gemma, gemma2,
gemma3_text, and gemma3 (the multimodal wrapper: its `text_config` and language-model weights
are read, the vision tower is skipped). `config.json` may be in the transformers 4.x layout
(`rope_theta`, `rope_scaling`, `rope_local_base_freq`, `sliding_window_pattern`) or the 5.x one
(`rope_parameters`, per layer type for Gemma 3; `layer_types`).

Weights map by one table (`_layer_tensors` and `_TOP_TENSORS`) driven by the config's features,
not by per-family loaders. A Hugging Face linear weight is [out, in]; rljax kernels are
[in..., out...] (e.g. q_proj.weight [N*H, D] -> attn/q/kernel [D, N, H]), so kernels are
transposed and reshaped. Norm names differ between the pre-norm families (Llama's
post_attention_layernorm is the norm *before* the MLP) and Gemma 2/3's sandwich norms.

Memory: `load_hf` reads one tensor at a time (opening its file only for that read, so the memory
map of the checkpoint never accumulates in the resident set), converts it and places it on its
device(s) at once, so peak host memory is about the final parameters plus one tensor.
`save_hf` streams the other way: one tensor is fetched from the device(s) at a time.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import re
import struct
from pathlib import Path
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import ml_dtypes  # noqa: F401  (registers bfloat16 with numpy, so safetensors can return it)
import numpy as np
from safetensors import safe_open

from rljax.models import api
from rljax.models.config import ModelConfig, RopeScaling

# ----------------------------------------------------------------------------------------------
# Families: what each model_type fixes, and the defaults of its transformers config class.


@dataclasses.dataclass(frozen=True)
class _Family:
    architecture: str  # the transformers class written to config.json "architectures"
    features: dict  # ModelConfig fields that the architecture fixes
    defaults: dict  # transformers' class defaults, for keys a config.json may omit
    # config keys naming the MLP activation, the one the transformers class reads (and defaults) first
    act_keys: tuple[str, ...] = ("hidden_act",)
    sliding_pattern: int | None = None  # every n-th layer full, the others sliding (Gemma 2/3)
    gemma2_attention: bool = False  # query_pre_attn_scalar and logit soft-capping
    local_rope: bool = False  # sliding layers have their own RoPE base (Gemma 3)


_PLAIN = dict(qkv_bias=False, qk_norm=False, post_norms=False, norm_plus_one=False,
              scale_embeddings=False)
_GEMMA = dict(_PLAIN, norm_plus_one=True, scale_embeddings=True)
_COMMON_DEFAULTS = dict(rms_norm_eps=1e-6, rope_theta=10_000.0, num_key_value_heads=None,
                        head_dim=None, tie_word_embeddings=False)
_GEMMA2_DEFAULTS = dict(
    _COMMON_DEFAULTS, hidden_activation="gelu_pytorch_tanh", head_dim=256, num_key_value_heads=4,
    tie_word_embeddings=True, query_pre_attn_scalar=256, sliding_window=4096,
)

_FAMILIES: dict[str, _Family] = {
    "llama": _Family("LlamaForCausalLM", _PLAIN,
                     dict(_COMMON_DEFAULTS, hidden_act="silu", max_position_embeddings=2048)),
    "qwen2": _Family("Qwen2ForCausalLM", dict(_PLAIN, qkv_bias=True),
                     dict(_COMMON_DEFAULTS, hidden_act="silu", max_position_embeddings=32768,
                          num_key_value_heads=32)),
    "qwen3": _Family("Qwen3ForCausalLM", dict(_PLAIN, qk_norm=True),
                     dict(_COMMON_DEFAULTS, hidden_act="silu", max_position_embeddings=32768,
                          num_key_value_heads=32, head_dim=128)),
    "gemma": _Family("GemmaForCausalLM", _GEMMA,
                     dict(_COMMON_DEFAULTS, hidden_act="gelu_pytorch_tanh", head_dim=256,
                          num_key_value_heads=16, max_position_embeddings=8192,
                          tie_word_embeddings=True),
                     act_keys=("hidden_act", "hidden_activation")),
    "gemma2": _Family("Gemma2ForCausalLM", dict(_GEMMA, post_norms=True),
                      dict(_GEMMA2_DEFAULTS, max_position_embeddings=8192,
                           final_logit_softcapping=30.0, attn_logit_softcapping=50.0),
                      act_keys=("hidden_activation", "hidden_act"), sliding_pattern=2,
                      gemma2_attention=True),
    "gemma3_text": _Family("Gemma3ForCausalLM", dict(_GEMMA, post_norms=True, qk_norm=True),
                           dict(_GEMMA2_DEFAULTS, max_position_embeddings=131072,
                                final_logit_softcapping=None, attn_logit_softcapping=None,
                                rope_theta=1_000_000.0, rope_local_base_freq=10_000.0),
                           act_keys=("hidden_activation", "hidden_act"), sliding_pattern=6,
                           gemma2_attention=True, local_rope=True),
}

# transformers' activation names -> ModelConfig.activation. Gemma's original configs say "gelu"
# but mean the tanh approximation (transformers rewrites it so too); other families' "gelu" is
# the exact GELU, which the transformer does not implement.
_ACTIVATIONS = {"silu": "silu", "swish": "silu", "gelu_pytorch_tanh": "gelu_tanh",
                "gelu_new": "gelu_tanh"}
_LAYER_TYPES = {"full_attention": "full", "sliding_attention": "sliding"}
_REQUIRED_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                  "num_attention_heads")


def _family(model_type: str) -> _Family:
    if model_type not in _FAMILIES:
        raise ValueError(
            f"unsupported model_type {model_type!r}; supported: {sorted(_FAMILIES)} and gemma3"
        )
    return _FAMILIES[model_type]


# ----------------------------------------------------------------------------------------------
# config.json -> ModelConfig


def _rope(params: dict, default_theta: float, max_position: int) -> tuple[float, RopeScaling | None]:
    """One transformers RoPE dict ({"rope_type", "rope_theta", "factor", ...}) -> (theta, scaling)."""
    theta = float(params.get("rope_theta", default_theta))
    kind = params.get("rope_type", params.get("type", "default"))
    if kind == "default":
        return theta, None
    if kind == "linear":
        return theta, RopeScaling(kind="linear", factor=float(params["factor"]))
    if kind == "llama3":
        return theta, RopeScaling(
            kind="llama3", factor=float(params["factor"]),
            low_freq_factor=float(params["low_freq_factor"]),
            high_freq_factor=float(params["high_freq_factor"]),
            original_max_position=int(params.get("original_max_position_embeddings", max_position)),
        )
    raise ValueError(f"unsupported RoPE type {kind!r} (supported: default, linear, llama3)")


def _rope_fields(d: dict, fam: _Family, max_position: int) -> dict:
    """rope_theta / rope_scaling / local_rope_theta from either config layout."""
    theta = d.get("rope_theta", fam.defaults["rope_theta"])
    rope = d.get("rope_parameters")
    if rope is not None and ("full_attention" in rope or "sliding_attention" in rope):
        # 5.x, per layer type (Gemma 3): {"full_attention": {...}, "sliding_attention": {...}}.
        full, local = rope.get("full_attention") or {}, rope.get("sliding_attention")
    elif rope is not None:  # 5.x, one dict for every layer
        full, local = rope, None
    else:  # 4.x: rope_theta + rope_scaling (+ Gemma 3's rope_local_base_freq, unscaled)
        full, local = d.get("rope_scaling") or {}, None
        if fam.local_rope:
            local = {"rope_theta": d.get("rope_local_base_freq", fam.defaults["rope_local_base_freq"])}
    rope_theta, scaling = _rope(full, theta, max_position)
    local_theta = None
    if local is not None:
        if fam.local_rope:  # 5.x Gemma 3 without a theta for sliding layers: the class default
            theta = fam.defaults["rope_local_base_freq"]
        local_theta, local_scaling = _rope(local, theta, max_position)
        if (local_theta, local_scaling) == (rope_theta, scaling):
            local_theta = None  # the same RoPE on every layer
        elif local_scaling is not None:
            raise ValueError("RoPE scaling on sliding-window layers is not supported")
    return dict(rope_theta=float(rope_theta), rope_scaling=scaling, local_rope_theta=local_theta)


def _layer_types(d: dict, fam: _Family, n_layers: int) -> tuple[str, ...]:
    names = d.get("layer_types")
    if names is None and fam.sliding_pattern:  # 4.x: a period (Gemma 3's sliding_window_pattern)
        pattern = d.get("sliding_window_pattern", fam.sliding_pattern)
        names = ["full_attention" if (i + 1) % pattern == 0 else "sliding_attention"
                 for i in range(n_layers)]
    names = names or ["full_attention"] * n_layers
    unknown = sorted(set(names) - set(_LAYER_TYPES))
    if unknown:
        raise ValueError(f"unsupported layer types {unknown}; supported: {sorted(_LAYER_TYPES)}")
    return tuple(_LAYER_TYPES[n] for n in names)


def config_from_hf(config_dict: dict) -> ModelConfig:
    """A transformers `config.json` (as a dict) -> `ModelConfig`.

    Keys a config.json omits take the defaults of that model_type's transformers class, as
    transformers itself would. Architectures the transformer cannot express exactly (attention
    or MLP biases beyond Qwen2's q/k/v, exact GELU, bidirectional attention, other RoPE types,
    quantised weights) raise a ValueError rather than load into a different model.
    """
    d = dict(config_dict)
    if d.get("model_type") == "gemma3":  # the multimodal wrapper: read its language model
        text = d.get("text_config") or {}
        d = {"tie_word_embeddings": d.get("tie_word_embeddings", True), **text,
             "model_type": "gemma3_text"}
    if "model_type" not in d:
        raise ValueError("config.json has no model_type")
    fam = _family(d["model_type"])
    missing = [k for k in _REQUIRED_KEYS if k not in d]
    if missing:
        raise ValueError(f"{d['model_type']} config.json lacks {missing}")

    def get(key):
        return d.get(key, fam.defaults.get(key))

    for key in ("attention_bias", "mlp_bias", "use_bidirectional_attention", "use_sliding_window"):
        if d.get(key):
            raise ValueError(f"{d['model_type']} with {key}=True is not supported")
    if d.get("quantization_config"):
        raise ValueError("quantised checkpoints are not supported (quantization_config is set)")
    act_name = next((d[k] for k in fam.act_keys if d.get(k) is not None), fam.defaults[fam.act_keys[0]])
    activation = _ACTIVATIONS.get(act_name)
    if act_name == "gelu" and d["model_type"].startswith("gemma"):
        activation = "gelu_tanh"
    if activation is None:
        raise ValueError(f"unsupported activation {act_name!r}")

    d_model, n_heads, n_layers = d["hidden_size"], d["num_attention_heads"], d["num_hidden_layers"]
    max_position = get("max_position_embeddings")
    types = _layer_types(d, fam, n_layers) if fam.sliding_pattern else ()
    sliding = "sliding" in types
    extras = {}
    if fam.gemma2_attention:
        caps = {k: None if get(key) is None else float(get(key)) for k, key in
                (("attn_softcap", "attn_logit_softcapping"), ("final_softcap", "final_logit_softcapping"))}
        extras = dict(attn_scale=float(get("query_pre_attn_scalar")), **caps)
    rope = _rope_fields(d, fam, max_position)
    if not sliding:
        rope["local_rope_theta"] = None
    return ModelConfig(
        vocab_size=d["vocab_size"],
        d_model=d_model,
        n_layers=n_layers,
        n_heads=n_heads,
        n_kv_heads=get("num_key_value_heads") or n_heads,
        head_dim=get("head_dim") or d_model // n_heads,
        mlp_dim=d["intermediate_size"],
        activation=activation,
        norm_eps=float(get("rms_norm_eps")),
        tie_embeddings=bool(get("tie_word_embeddings")),
        sliding_window=get("sliding_window") if sliding else None,
        layer_types=types if sliding else (),
        max_seq_len=max_position,
        **fam.features,
        **extras,
        **rope,
    )


# ----------------------------------------------------------------------------------------------
# ModelConfig -> config.json


def _infer_model_type(cfg: ModelConfig) -> str:
    """The family whose fixed features (biases, norms, embedding scaling) cfg has."""
    for name, fam in _FAMILIES.items():
        if all(getattr(cfg, k) == v for k, v in fam.features.items()):
            return name
    raise ValueError("no supported Hugging Face model_type matches this config; pass model_type")


def _rope_scaling_dict(scaling: RopeScaling) -> dict:
    """The 4.x `rope_scaling` entry."""
    out = {"rope_type": scaling.kind, "factor": scaling.factor}
    if scaling.kind == "llama3":
        out.update(low_freq_factor=scaling.low_freq_factor, high_freq_factor=scaling.high_freq_factor,
                   original_max_position_embeddings=scaling.original_max_position)
    return out


def config_to_hf(cfg: ModelConfig, model_type: str) -> dict:
    """`ModelConfig` -> a transformers config.json dict for `model_type`.

    Written in the 4.x layout (`rope_theta`, `rope_scaling`, `rope_local_base_freq`), which
    transformers 4.x and 5.x both read. Raises a ValueError if `model_type` cannot express cfg.
    """
    fam = _family(model_type)
    problems = [f"{k}={getattr(cfg, k)} (needs {v})" for k, v in fam.features.items()
                if getattr(cfg, k) != v]
    if cfg.value_head or not cfg.lm_head:
        problems.append("a value head / no LM head (a causal-LM checkpoint has an LM head only)")
    if not fam.gemma2_attention:
        if cfg.attn_scale not in (None, cfg.head_dim):
            problems.append(f"attn_scale={cfg.attn_scale}")
        if cfg.attn_softcap is not None or cfg.final_softcap is not None:
            problems.append("logit soft-capping")
    if "sliding" in cfg.types and not fam.sliding_pattern:
        problems.append("sliding-window layers")
    if "sliding" in cfg.types:
        if cfg.local_rope_theta is not None and not fam.local_rope:
            problems.append("a separate RoPE base for sliding layers")
        if cfg.local_rope_theta is None and cfg.rope_scaling is not None and fam.local_rope:
            # Gemma 3 scales the RoPE of its full layers only; rljax would scale every layer.
            problems.append("RoPE scaling on sliding layers (set local_rope_theta)")
    if problems:
        raise ValueError(f"model_type {model_type!r} cannot express: " + "; ".join(problems))

    out: dict[str, Any] = {
        "architectures": [fam.architecture],
        "model_type": model_type,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "intermediate_size": cfg.mlp_dim,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads,
        "head_dim": cfg.head_dim,
        "rms_norm_eps": cfg.norm_eps,
        "max_position_embeddings": cfg.max_seq_len,
        "tie_word_embeddings": cfg.tie_embeddings,
        "rope_theta": cfg.rope_theta,
    }
    act = {"silu": "silu", "gelu_tanh": "gelu_pytorch_tanh"}[cfg.activation]
    out.update({k: act for k in fam.act_keys})
    if cfg.rope_scaling is not None:
        out["rope_scaling"] = _rope_scaling_dict(cfg.rope_scaling)
    if fam.gemma2_attention:
        scale = cfg.attn_scale or cfg.head_dim  # transformers' config class wants an int here
        out.update(query_pre_attn_scalar=int(scale) if float(scale).is_integer() else scale,
                   attn_logit_softcapping=cfg.attn_softcap,
                   final_logit_softcapping=cfg.final_softcap)
    if fam.sliding_pattern:
        out.update(sliding_window=cfg.sliding_window,
                   layer_types=[f"{t}_attention" for t in cfg.types])
    if fam.local_rope:
        out["rope_local_base_freq"] = cfg.local_rope_theta or cfg.rope_theta
    return out


# ----------------------------------------------------------------------------------------------
# The weight-name table.


class _Tensor(NamedTuple):
    """One Hugging Face tensor and the rljax parameter it becomes.

    kernel_in > 0: a linear weight, HF [out, in], whose first `kernel_in` rljax axes are `in`
    (the rljax kernel is [in..., out...]). kernel_in == 0: the same values in the same order
    (biases are flat in HF: [N*H] <-> [N, H]).
    """

    hf: str
    path: str
    kernel_in: int = 0


_TOP_TENSORS = (
    _Tensor("model.embed_tokens.weight", "embed/embedding"),
    _Tensor("model.norm.weight", "final_norm/scale"),
)
_LM_HEAD = _Tensor("lm_head.weight", "lm_head/kernel", 1)


def _layer_tensors(cfg: ModelConfig) -> tuple[_Tensor, ...]:
    """The tensors of one decoder layer, names relative to `model.layers.{i}.`."""
    t = [
        _Tensor("self_attn.q_proj.weight", "attn/q/kernel", 1),
        _Tensor("self_attn.k_proj.weight", "attn/k/kernel", 1),
        _Tensor("self_attn.v_proj.weight", "attn/v/kernel", 1),
        _Tensor("self_attn.o_proj.weight", "attn/o/kernel", 2),
        _Tensor("mlp.gate_proj.weight", "mlp/gate/kernel", 1),
        _Tensor("mlp.up_proj.weight", "mlp/up/kernel", 1),
        _Tensor("mlp.down_proj.weight", "mlp/down/kernel", 1),
        _Tensor("input_layernorm.weight", "attn_norm/scale"),
    ]
    if cfg.qkv_bias:
        t += [_Tensor(f"self_attn.{x}_proj.bias", f"attn/{x}/bias") for x in "qkv"]
    if cfg.qk_norm:
        t += [_Tensor(f"self_attn.{x}_norm.weight", f"attn/{x}_norm/scale") for x in "qk"]
    if cfg.post_norms:  # Gemma 2/3 sandwich: a norm before and after each branch
        t += [
            _Tensor("post_attention_layernorm.weight", "post_attn_norm/scale"),
            _Tensor("pre_feedforward_layernorm.weight", "mlp_norm/scale"),
            _Tensor("post_feedforward_layernorm.weight", "post_mlp_norm/scale"),
        ]
    else:  # Llama/Qwen/Gemma 1: "post_attention_layernorm" is the norm in front of the MLP
        t.append(_Tensor("post_attention_layernorm.weight", "mlp_norm/scale"))
    return tuple(t)


class _Leaf(NamedTuple):
    """One rljax parameter: its HF source tensors (one per layer, stacked, under scan_layers)."""

    path: str
    sources: tuple[str, ...]
    kernel_in: int
    stacked: bool


def _plan(cfg: ModelConfig) -> list[_Leaf]:
    top = _TOP_TENSORS + ((_LM_HEAD,) if cfg.lm_head and not cfg.tie_embeddings else ())
    leaves = [_Leaf(t.path, (t.hf,), t.kernel_in, False) for t in top]
    for t in _layer_tensors(cfg):
        names = tuple(f"model.layers.{i}.{t.hf}" for i in range(cfg.n_layers))
        if cfg.scan_layers:
            leaves.append(_Leaf(f"layers/{t.path}", names, t.kernel_in, True))
        else:
            leaves += [_Leaf(f"layers_{i}/{t.path}", (n,), t.kernel_in, False)
                       for i, n in enumerate(names)]
    return leaves


def _hf_shape(path: str, shape: tuple[int, ...], kernel_in: int) -> tuple[int, ...]:
    if kernel_in:
        return (math.prod(shape[kernel_in:]), math.prod(shape[:kernel_in]))
    return (math.prod(shape),) if path.endswith("bias") else tuple(shape)


def _flatten(tree: Mapping, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": x}} -> {"a/b": x}."""
    out = {}
    for k, v in tree.items():
        if isinstance(v, Mapping):
            out.update(_flatten(v, f"{prefix}{k}/"))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _unflatten(flat: dict[str, Any]) -> dict:
    tree: dict = {}
    for path, v in flat.items():
        *parents, name = path.split("/")
        node = tree
        for p in parents:
            node = node.setdefault(p, {})
        node[name] = v
    return tree


def _param_shapes(cfg: ModelConfig) -> dict[str, jax.ShapeDtypeStruct]:
    shapes = _flatten(jax.eval_shape(functools.partial(api.init, cfg), jax.random.PRNGKey(0)))
    planned = {leaf.path for leaf in _plan(cfg)}
    if planned != set(shapes):  # the table and the transformer must agree
        raise AssertionError(f"hf name table out of sync with the model: {sorted(planned ^ set(shapes))}")
    return shapes


# ----------------------------------------------------------------------------------------------
# Loading.

# Multimodal Gemma 3 keeps its language model under a prefix (4.x and 5.x spell it differently).
_PREFIXES = (("model.language_model.", "model."), ("language_model.model.", "model."),
             ("language_model.lm_head.", "lm_head."))
_IGNORED = re.compile(r"(^|\.)(vision_tower|multi_modal_projector)\.|rotary_emb\.inv_freq$")


def _canonical(name: str) -> str:
    for old, new in _PREFIXES:
        if name.startswith(old):
            return new + name[len(old):]
    return name


def _tensor_files(path: Path) -> dict[str, tuple[Path, str]]:
    """canonical tensor name -> (file, name in that file), from the index or every shard."""
    index = path / "model.safetensors.index.json"
    if index.exists():
        weight_map = json.loads(index.read_text())["weight_map"]
        located = {name: (path / file, name) for name, file in weight_map.items()}
    else:
        files = sorted(path.glob("*.safetensors"))
        if not files:
            raise FileNotFoundError(f"no *.safetensors files in {path}")
        located = {}
        for file in files:
            with safe_open(file, framework="numpy") as f:
                for name in f.keys():
                    if name in located:
                        raise ValueError(f"tensor {name} is in both {located[name][0]} and {file}")
                    located[name] = (file, name)
    return {_canonical(n): v for n, v in located.items() if not _IGNORED.search(n)}


def _read(location: tuple[Path, str], convert: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """Reads one tensor and converts it while its file is open.

    The file is opened for this tensor only: safetensors memory-maps it, and pages of a map that
    stays open count in the resident set, which would add the whole checkpoint to peak memory.
    `convert` must return a copy (the tensor it gets is a view of the map).
    """
    file, name = location
    with safe_open(file, framework="numpy") as f:
        return convert(f.get_tensor(name))


def _to_rljax(name: str, leaf: _Leaf, shape: tuple[int, ...], dtype) -> Callable:
    expected = _hf_shape(leaf.path, shape, leaf.kernel_in)

    def convert(w: np.ndarray) -> np.ndarray:
        if w.shape != expected:
            raise ValueError(f"{name} has shape {list(w.shape)}; the config implies {list(expected)}")
        return np.array(w.T if leaf.kernel_in else w, dtype=dtype, order="C").reshape(shape)

    return convert


def load_hf(path, dtype=None, shardings: Callable[[ModelConfig], Any] | None = None,
            **overrides) -> tuple[ModelConfig, dict]:
    """Loads a Hugging Face checkpoint directory: returns (cfg, params).

    path: a directory with config.json and one or more *.safetensors files (with or without
      model.safetensors.index.json); tensors may be float32, bfloat16 or float16.
    dtype: the dtype of the returned params (default: cfg.param_dtype, float32); cfg.param_dtype
      is set to it.
    shardings: if given, a function of the loaded cfg to a pytree of `jax.sharding.Sharding`s
      matching `models.init(cfg, key)`, e.g. `lambda cfg: sharding.param_shardings(cfg, mesh)`;
      each parameter is placed on its sharding as soon as it is read; otherwise on the default
      device. A function of cfg, since the shardings depend on the config read here; it keeps
      this layer free of `rljax.sharding`, which lies above it.
    overrides: ModelConfig fields to set (e.g. scan_layers=True, dtype="bfloat16", remat=True);
      with scan_layers the per-layer tensors are stacked as they are read.
    """
    path = Path(path)
    config_file = path / "config.json"
    if not config_file.exists():
        raise FileNotFoundError(f"{path} has no config.json (is it a Hugging Face checkpoint dir?)")
    cfg = config_from_hf(json.loads(config_file.read_text())).replace(**overrides)
    if dtype is not None:
        cfg = cfg.replace(param_dtype=np.dtype(dtype).name)
    dtype = cfg.weight_dtype

    files = _tensor_files(path)
    plan = _plan(cfg)
    needed = {name for leaf in plan for name in leaf.sources}
    missing = sorted(needed - set(files))
    if missing:
        raise ValueError(f"{path}: {len(missing)} tensors missing from the checkpoint: {missing}")
    unused = sorted(set(files) - needed - ({_LM_HEAD.hf} if cfg.tie_embeddings else set()))
    if unused:
        raise ValueError(f"{path}: tensors this config does not use (is config.json right?): {unused}")

    shapes = _param_shapes(cfg)
    placement = {} if shardings is None else _flatten(shardings(cfg))
    if shardings is not None and set(placement) != set(shapes):
        raise ValueError("shardings(cfg) does not match the parameters of models.init(cfg, key): "
                         f"{sorted(set(placement) ^ set(shapes))}")
    params = {}
    for leaf in plan:
        shape = shapes[leaf.path].shape
        if leaf.stacked:
            value = np.empty(shape, dtype)
            for i, name in enumerate(leaf.sources):
                value[i] = _read(files[name], _to_rljax(name, leaf, shape[1:], dtype))
        else:
            name = leaf.sources[0]
            value = _read(files[name], _to_rljax(name, leaf, shape, dtype))
        params[leaf.path] = jax.device_put(value, placement.get(leaf.path))
        del value  # the host copy goes now, not at the next iteration
    return cfg, _unflatten(params)


# ----------------------------------------------------------------------------------------------
# Saving.

_ST_DTYPES = {"float32": "F32", "bfloat16": "BF16", "float16": "F16", "float64": "F64"}


class _Out(NamedTuple):
    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    fetch: Callable[[], np.ndarray]  # the tensor in HF layout, fetched when it is written

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def _write_safetensors(file: Path, tensors: list[_Out]) -> None:
    """Writes a safetensors file tensor by tensor, so only one tensor is on the host at a time.

    Format: u64 little-endian header size, a JSON header of dtype/shape/byte offsets (padded with
    spaces to 8 bytes), then the raw little-endian tensor bytes in order (the host's byte order:
    rljax runs on little-endian machines only).
    """
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for t in tensors:
        header[t.name] = {"dtype": _ST_DTYPES[t.dtype.name], "shape": list(t.shape),
                          "data_offsets": [offset, offset + t.nbytes]}
        offset += t.nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with open(file, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for t in tensors:
            value = t.fetch()
            assert value.shape == t.shape and value.dtype == t.dtype, (t.name, value.shape, value.dtype)
            f.write(np.ascontiguousarray(value).reshape(-1).view(np.uint8))


def _hf_tensors(cfg: ModelConfig, params: dict, dtype) -> list[_Out]:
    """Every HF tensor of cfg, in HF order, each to be fetched from params when written."""
    flat = _flatten(params)
    shapes = _param_shapes(cfg)
    wrong = [f"{p}: {'missing' if p not in flat else list(flat[p].shape)} (expected {list(s.shape)})"
             for p, s in shapes.items() if p not in flat or flat[p].shape != s.shape]
    if wrong:
        raise ValueError(f"params do not match the config: {wrong}")
    out = []
    for leaf in _plan(cfg):
        value = flat[leaf.path]
        shape = shapes[leaf.path].shape[1:] if leaf.stacked else shapes[leaf.path].shape
        hf_shape = _hf_shape(leaf.path, shape, leaf.kernel_in)
        out_dtype = np.dtype(dtype or value.dtype)
        for i, name in enumerate(leaf.sources):
            fetch = functools.partial(_to_hf, value, i if leaf.stacked else None, leaf.kernel_in,
                                      hf_shape, out_dtype)
            out.append(_Out(name, hf_shape, out_dtype, fetch))
    return sorted(out, key=lambda t: _natural_key(t.name))


def _to_hf(value, layer: int | None, kernel_in: int, hf_shape, dtype) -> np.ndarray:
    """One parameter (layer `layer` of a stacked one) -> host array in HF layout and dtype."""
    x = np.asarray(jax.device_get(value if layer is None else value[layer]))
    if kernel_in:
        x = x.reshape(math.prod(x.shape[:kernel_in]), -1).T
    return np.asarray(x.reshape(hf_shape), dtype=dtype)


def _natural_key(name: str):
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def save_hf(cfg: ModelConfig, params: dict, path, model_type: str | None = None, dtype=None,
            max_shard_bytes: int = 5_000_000_000) -> Path:
    """Writes cfg and params as a Hugging Face checkpoint that
    `transformers.AutoModelForCausalLM.from_pretrained(path)` loads: config.json plus
    model.safetensors, or model-0000i-of-0000n.safetensors shards with
    model.safetensors.index.json when the tensors exceed max_shard_bytes.

    model_type: default inferred from cfg (llama, qwen2, qwen3, gemma, gemma2 or gemma3_text).
    dtype: the dtype of the saved tensors (default: each parameter's own dtype).
    Parameters are fetched one tensor at a time (sharded params are gathered per tensor); every
    device holding them must be addressable from this process. Returns the directory.
    """
    model_type = model_type or _infer_model_type(cfg)
    hf_config = config_to_hf(cfg, model_type)
    tensors = _hf_tensors(cfg, params, dtype)
    hf_config["dtype"] = tensors[0].dtype.name

    shards: list[list[_Out]] = [[]]
    for t in tensors:
        if shards[-1] and sum(x.nbytes for x in shards[-1]) + t.nbytes > max_shard_bytes:
            shards.append([])
        shards[-1].append(t)

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    # Remove what an earlier save_hf may have left here, which would mix with these files.
    for old in [*path.glob("model-*-of-*.safetensors"), path / "model.safetensors",
                path / "model.safetensors.index.json"]:
        old.unlink(missing_ok=True)
    if len(shards) == 1:
        _write_safetensors(path / "model.safetensors", shards[0])
    else:
        weight_map = {}
        for i, shard in enumerate(shards):
            file = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            _write_safetensors(path / file, shard)
            weight_map.update({t.name: file for t in shard})
        index = {"metadata": {"total_size": sum(t.nbytes for t in tensors)}, "weight_map": weight_map}
        (path / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    (path / "config.json").write_text(json.dumps(hf_config, indent=2, sort_keys=True))
    return path


# ----------------------------------------------------------------------------------------------
# LoRA adapters in PEFT's layout.

_LORA_MODULES = {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj",
                 "o": "self_attn.o_proj", "gate": "mlp.gate_proj", "up": "mlp.up_proj", "down": "mlp.down_proj"}


def save_peft(cfg: ModelConfig, params: dict, path, base_model: str = "") -> Path:
    """Writes the LoRA adapters of a policy's params (`rljax.models.lora`) as a PEFT adapter that
    `peft.PeftModel.from_pretrained(transformers_model, path)` loads onto the base model
    `save_hf` writes: adapter_config.json and adapter_model.safetensors with PEFT's names
    (`base_model.model.model.layers.{i}.self_attn.q_proj.lora_A.weight` [r, in] and `lora_B` [out, r]),
    so that ΔW = (α/r)·lora_B·lora_A is the rljax delta (α/r)·A·B transposed to HF's [out, in].
    """
    adapters = params.get(api.ADAPTERS)
    if adapters is None or not cfg.lora_rank:
        raise ValueError("save_peft needs LoRA adapters: params[models.ADAPTERS] and a config with lora_rank")
    kernel_in = {t.path: t.kernel_in for t in _layer_tensors(cfg)}
    tensors = []
    for i in range(cfg.n_layers):
        layer = jax.tree.map(lambda x, i=i: x[i], adapters["layers"]) if cfg.scan_layers else adapters[f"layers_{i}"]
        for target in cfg.lora_targets:
            group = "attn" if target in "qkvo" else "mlp"
            a, b = (np.asarray(jax.device_get(layer[group][target][k]), np.float32) for k in ("a", "b"))
            n_in = kernel_in[f"{group}/{target}/kernel"]
            a_flat, b_flat = a.reshape(math.prod(a.shape[:n_in]), -1), b.reshape(b.shape[0], -1)  # [in, r], [r, out]
            name = f"base_model.model.model.layers.{i}.{_LORA_MODULES[target]}"
            for suffix, value in (("lora_A.weight", a_flat.T), ("lora_B.weight", b_flat.T)):
                value = np.ascontiguousarray(value)
                tensors.append(_Out(f"{name}.{suffix}", value.shape, value.dtype, lambda v=value: v))
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    _write_safetensors(path / "adapter_model.safetensors", sorted(tensors, key=lambda t: _natural_key(t.name)))
    config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model,
              "r": cfg.lora_rank, "lora_alpha": cfg.lora_alpha, "lora_dropout": 0.0, "bias": "none",
              "target_modules": sorted(_LORA_MODULES[t].split(".")[-1] for t in cfg.lora_targets),
              "fan_in_fan_out": False, "use_rslora": False, "init_lora_weights": True, "inference_mode": True}
    (path / "adapter_config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    return path
