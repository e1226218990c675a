"""A decoder-only transformer in Flax Linen, covering Llama 3, Qwen 2/2.5/3, Gemma 1/2/3 and SmolLM2.

Every parameter carries logical axis names (`nn.with_logical_partitioning`); `rljax.sharding`
maps them to mesh axes. Activations are constrained at block boundaries with logical names too.
Shapes: B batch, T new tokens, S cache slots, D model, N query heads, K kv heads, G = N / K,
H head dim, F MLP hidden, V vocab, L layers.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from rljax.models import cache as kv_cache
from rljax.models.config import ModelConfig, embedding_scale
from rljax.models.head import head_logits
from rljax.models.rope import apply_rope, inverse_frequencies, rope_angles

# Logical names of the activations at block boundaries.
ACT_AXES = ("batch", "length", "act_embed")
# Large negative score for disallowed keys: finite, so a query with no allowed key (a padding
# query) gets a uniform distribution instead of NaN.
_MASKED_SCORE = -0.7 * float(jnp.finfo(jnp.float32).max)


class RMSNorm(nn.Module):
    """x / rms(x) * w (Zhang & Sennrich 2019), computed in float32; Gemma scales by (1 + w)."""

    eps: float
    plus_one: bool
    axis_name: str = "embed"
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        init = nn.initializers.zeros if self.plus_one else nn.initializers.ones
        scale = self.param(
            "scale", nn.with_logical_partitioning(init, (self.axis_name,)), (x.shape[-1],), self.param_dtype
        )
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.eps)
        weight = scale.astype(jnp.float32) + (1.0 if self.plus_one else 0.0)
        return (normed * weight).astype(self.dtype)


class Linear(nn.Module):
    """y = einsum(spec, x, W) (+ b), W initialised with variance 1 / fan_in over the contracted axes.

    With `lora_rank` r > 0 and adapters in the "lora" collection (LoRA, Hu et al. 2021,
    `rljax.models.lora`): y += (α/r)·(x·A)·B, with A [contracted dims..., r] and B [r, output
    dims...] (B initialised to 0, so the adapted model starts as the base); the low-rank path is
    computed as two products, so the frozen W needs no gradient of its own.
    """

    spec: str  # e.g. "BTD,DNH->BTNH"
    shape: tuple[int, ...]
    axes: tuple[str, ...]
    use_bias: bool = False
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32
    lora_rank: int = 0
    lora_alpha: float = 16.0

    @nn.compact
    def __call__(self, x):
        x_letters, rest = self.spec.split(",")
        w_letters, y_letters = rest.split("->")
        fan_in = math.prod(n for letter, n in zip(w_letters, self.shape) if letter in x_letters)
        kernel = self.param(
            "kernel",
            nn.with_logical_partitioning(nn.initializers.normal(fan_in**-0.5), self.axes),
            self.shape,
            self.param_dtype,
        )
        y = _einsum_rows(self.spec, x.astype(self.dtype), kernel.astype(self.dtype))
        if self.lora_rank and (self.has_variable("lora", "a") or self.is_mutable_collection("lora")):
            y = y + self._lora_delta(x.astype(self.dtype), x_letters, w_letters, y_letters, fan_in)
        if self.use_bias:
            out_dims = [(letter, n, a) for letter, n, a in zip(w_letters, self.shape, self.axes)
                        if letter in y_letters]
            bias = self.param(
                "bias",
                nn.with_logical_partitioning(nn.initializers.zeros, tuple(a for _, _, a in out_dims)),
                tuple(n for _, n, _ in out_dims),
                self.param_dtype,
            )
            y = y + bias.astype(self.dtype)
        return y

    def _lora_delta(self, x, x_letters, w_letters, y_letters, fan_in):
        """(α/r)·(x·A)·B: A over the kernel's contracted dims, B over its output dims."""
        contracted = [(c, n, a) for c, n, a in zip(w_letters, self.shape, self.axes) if c in x_letters]
        outputs = [(c, n, a) for c, n, a in zip(w_letters, self.shape, self.axes) if c not in x_letters]
        r = self.lora_rank
        a = self.variable("lora", "a", lambda: nn.with_logical_partitioning(
            nn.initializers.normal(fan_in**-0.5), tuple(ax for _, _, ax in contracted) + (None,))(
                self.make_rng("params"), tuple(n for _, n, _ in contracted) + (r,), jnp.float32))
        b = self.variable("lora", "b", lambda: nn.with_logical_partitioning(
            nn.initializers.zeros, (None,) + tuple(ax for _, _, ax in outputs))(
                None, (r,) + tuple(n for _, n, _ in outputs), jnp.float32))
        a, b = nn.meta.unbox(a.value).astype(self.dtype), nn.meta.unbox(b.value).astype(self.dtype)
        a_letters = "".join(c for c, _, _ in contracted) + "Z"
        b_letters = "Z" + "".join(c for c, _, _ in outputs)
        low = _einsum_rows(f"{x_letters},{a_letters}->{x_letters[:2]}Z", x, a)
        return _einsum_rows(f"{x_letters[:2]}Z,{b_letters}->{y_letters}", low, b) * (self.lora_alpha / r)


def _lora(cfg: ModelConfig, name: str) -> dict:
    """The LoRA fields of projection `name`'s `Linear` (none when it is not a target)."""
    if not cfg.lora_rank or name not in cfg.lora_targets:
        return {}
    return dict(lora_rank=cfg.lora_rank, lora_alpha=cfg.lora_alpha)


def _einsum_rows(spec: str, x, w):
    """einsum(spec, x, w), with the leading token axes "BT" of x and of the result flattened into
    one row axis when the spec has them ("BTD,DF->BTF" is computed as "RD,DF->RF").

    The same product. The point is the backward pass on CPU: the weight's gradient contracts x
    and the output's cotangent over the token axes, and XLA:CPU feeds that dot through copies that
    transpose [B, T, F] arrays to [F, B, T] with a slow strided loop (fused with the elementwise
    producers of the cotangent, such as SwiGLU's derivative); contracting over one row axis, the
    copies become plain 2-D transposes. Measured on the shape-A GRPO step of
    experiments/bench_train.py: the copies took ~20% of the step before this change.
    """
    x_letters, rest = spec.split(",")
    w_letters, y_letters = rest.split("->")
    if not (x_letters.startswith("BT") and y_letters.startswith("BT")) or {"B", "T"} & set(w_letters):
        return jnp.einsum(spec, x, w)
    B, T = x.shape[:2]
    y = jnp.einsum(f"R{x_letters[2:]},{w_letters}->R{y_letters[2:]}", x.reshape(B * T, *x.shape[2:]), w)
    return y.reshape(B, T, *y.shape[1:])


class Embed(nn.Module):
    """Token embedding [V, D]; `attend` is the tied LM head (`head.head_logits` on the table)."""

    cfg: ModelConfig

    def setup(self):
        cfg = self.cfg
        self.embedding = self.param(
            "embedding",
            nn.with_logical_partitioning(nn.initializers.normal(cfg.d_model**-0.5), ("vocab", "embed")),
            (cfg.vocab_size, cfg.d_model),
            cfg.weight_dtype,
        )

    def __call__(self, tokens):
        # Gather from a table whole along D (only the vocabulary stays sharded): with the table
        # split over D and the tokens over the batch, XLA would replicate the gathered activations.
        table = nn.with_logical_constraint(self.embedding, ("vocab", None))
        x = jnp.take(table, tokens, axis=0).astype(self.cfg.compute_dtype)
        # Gemma multiplies by sqrt(D) rounded to the compute dtype, as its reference code does.
        return x * jnp.asarray(embedding_scale(self.cfg), self.cfg.compute_dtype)

    def attend(self, x):
        return head_logits(self.cfg, self.embedding, x)


class UntiedHead(nn.Module):
    """The untied LM head: its kernel W [D, V] (initialised with variance 1 / D, like `Linear`'s),
    applied by `head.head_logits`."""

    cfg: ModelConfig

    @nn.compact
    def __call__(self, x):
        cfg = self.cfg
        kernel = self.param(
            "kernel",
            nn.with_logical_partitioning(nn.initializers.normal(cfg.d_model**-0.5), ("embed", "vocab")),
            (cfg.d_model, cfg.vocab_size),
            cfg.weight_dtype,
        )
        return head_logits(cfg, kernel, x)


class Attention(nn.Module):
    """Grouped-query attention (Ainslie et al. 2023) with RoPE, optional QK-norm and soft-capping.

    Returns the output [B, T, D] and, with a cache, this layer's new keys [B, K, H, T] and values
    [B, K, T, H] for the Transformer to write. The layer's cache (keys [B, K, H, S], values
    [B, K, S, H]; see `rljax.models.cache`) is only read here, as it was before this call: the T
    new keys and values are attended to beside it, not written into it first. Written first, the
    cache would be read after its update, and XLA would copy it to keep it; read as it is, the
    dots read it in place.
    """

    cfg: ModelConfig

    @nn.compact
    def __call__(self, x, sin, cos, allowed, layer_cache):
        """allowed: {"new": [B, T, T], and with a cache "cache": [B, T, S]} bool."""
        cfg = self.cfg
        D, N, K, H = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        dense = dict(dtype=cfg.compute_dtype, param_dtype=cfg.weight_dtype, use_bias=cfg.qkv_bias)
        q = Linear("BTD,DNH->BTNH", (D, N, H), ("embed", "q_heads", "head_dim"), name="q", **dense,
                   **_lora(cfg, "q"))(x)
        k = Linear("BTD,DKH->BTKH", (D, K, H), ("embed", "kv_heads", "head_dim"), name="k", **dense,
                   **_lora(cfg, "k"))(x)
        v = Linear("BTD,DKH->BTKH", (D, K, H), ("embed", "kv_heads", "head_dim"), name="v", **dense,
                   **_lora(cfg, "v"))(x)
        if cfg.qk_norm:
            norm = dict(eps=cfg.norm_eps, plus_one=cfg.norm_plus_one, axis_name="head_dim",
                        dtype=cfg.compute_dtype, param_dtype=cfg.weight_dtype)
            q = RMSNorm(name="q_norm", **norm)(q)
            k = RMSNorm(name="k_norm", **norm)(k)
        q = apply_rope(q, sin, cos)
        k = apply_rope(k, sin, cos)

        B, T = q.shape[:2]
        q = q.reshape(B, T, K, N // K, H).transpose(0, 2, 3, 1, 4)  # [B, K, G, T, H]
        k, v = k.transpose(0, 2, 3, 1), v.swapaxes(1, 2)  # [B, K, H, T] and [B, K, T, H]
        if layer_cache is None:
            new_kv, keys, values, masks = None, [k], [v], [allowed["new"]]
        else:
            cached_k, cached_v = layer_cache
            new_kv = k, v = k.astype(cached_k.dtype), v.astype(cached_v.dtype)
            keys, values, masks = [cached_k, k], [cached_v, v], [allowed["cache"], allowed["new"]]
        scores = jnp.concatenate([jnp.einsum("BKGTH,BKHS->BKGTS", q, x, preferred_element_type=jnp.float32)
                                  for x in keys], axis=-1) * cfg.query_scale
        if cfg.attn_softcap is not None:
            scores = cfg.attn_softcap * jnp.tanh(scores / cfg.attn_softcap)
        scores = jnp.where(jnp.concatenate(masks, axis=-1)[:, None, None], scores, _MASKED_SCORE)
        probs = jax.nn.softmax(scores, axis=-1).astype(cfg.compute_dtype)
        probs = jnp.split(probs, np.cumsum([x.shape[2] for x in values])[:-1], axis=-1)
        # The product in the operands' own order, then the transpose: asked for [B, T, K, G, H]
        # directly, XLA:CPU multiplied transposed copies of both operands instead (SmolLM2 decode at
        # batch 64: 293 ms a step against 215).
        out = sum(jnp.einsum("BKGTS,BKSH->BKGTH", p, x.astype(cfg.compute_dtype)) for p, x in zip(probs, values))
        out = Linear("BTNH,NHD->BTD", (N, H, D), ("q_heads", "head_dim", "embed"), name="o", **_lora(cfg, "o"),
                     dtype=cfg.compute_dtype, param_dtype=cfg.weight_dtype)(
                         out.transpose(0, 3, 1, 2, 4).reshape(B, T, N, H))
        return out, new_kv


class Mlp(nn.Module):
    """Gated MLP (Shazeer 2020): down(act(x W_gate) * (x W_up)); SwiGLU or GeGLU (tanh GELU)."""

    cfg: ModelConfig

    @nn.compact
    def __call__(self, x):
        cfg = self.cfg
        dense = dict(dtype=cfg.compute_dtype, param_dtype=cfg.weight_dtype)
        gate = Linear("BTD,DF->BTF", (cfg.d_model, cfg.mlp_dim), ("embed", "mlp"), name="gate", **dense,
                      **_lora(cfg, "gate"))(x)
        up = Linear("BTD,DF->BTF", (cfg.d_model, cfg.mlp_dim), ("embed", "mlp"), name="up", **dense,
                    **_lora(cfg, "up"))(x)
        act = jax.nn.silu if cfg.activation == "silu" else lambda g: jax.nn.gelu(g, approximate=True)
        h = act(gate) * up
        return Linear("BTF,FD->BTD", (cfg.mlp_dim, cfg.d_model), ("mlp", "embed"), name="down", **dense,
                      **_lora(cfg, "down"))(h)


class Block(nn.Module):
    """Pre-norm residual block; Gemma 2/3 add a norm on each branch's output ("sandwich")."""

    cfg: ModelConfig

    @nn.compact
    def __call__(self, x, rope_sin, rope_cos, allowed, type_id, layer_cache=None):
        """x -> (x, this layer's new keys and values): the carry/output form that `nn.scan`
        expects; `layer_cache` (keys, values) is read, not changed (see `Attention`)."""
        cfg = self.cfg
        norm = dict(eps=cfg.norm_eps, plus_one=cfg.norm_plus_one, dtype=cfg.compute_dtype,
                    param_dtype=cfg.weight_dtype)
        h = RMSNorm(name="attn_norm", **norm)(x)
        h, new_kv = Attention(cfg, name="attn")(
            h, rope_sin[type_id], rope_cos[type_id], jax.tree.map(lambda m: m[type_id], allowed), layer_cache
        )
        if cfg.post_norms:
            h = RMSNorm(name="post_attn_norm", **norm)(h)
        x = x + h
        h = Mlp(cfg, name="mlp")(RMSNorm(name="mlp_norm", **norm)(x))
        if cfg.post_norms:
            h = RMSNorm(name="post_mlp_norm", **norm)(h)
        x = nn.with_logical_constraint(x + h, ACT_AXES)
        return x, new_kv


def _rope_tables(cfg: ModelConfig, type_names, positions):
    """(sin, cos) stacked over layer types: [n_types, B, T, H/2] each."""
    tables = []
    for name in type_names:
        if name == "sliding" and cfg.local_rope_theta is not None:
            inv_freq = inverse_frequencies(cfg.head_dim, cfg.local_rope_theta)  # Gemma 3 local layers
        else:
            inv_freq = inverse_frequencies(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling)
        tables.append(rope_angles(positions, inv_freq))
    return jnp.stack([s for s, _ in tables]), jnp.stack([c for _, c in tables])


class Transformer(nn.Module):
    """tokens [B, T] -> ({"hidden" [B,T,D], "logits" [B,T,V] float32, "values" [B,T] float32}, cache).

    With `last_only`, the outputs are computed at the last position only (T becomes 1): a
    generation prefill needs the next-token logits of its last token alone, and the LM head over
    every prompt position would cost B*T*D*V multiply-adds for nothing.
    """

    cfg: ModelConfig

    @nn.compact
    def __call__(self, tokens, positions, mask, cache, last_only: bool = False):
        cfg = self.cfg
        B, T = tokens.shape
        embed = Embed(cfg, name="embed")
        x = nn.with_logical_constraint(embed(tokens), ACT_AXES)

        # Layers of the same type share their RoPE table and attention masks: compute each once.
        type_names = sorted(set(cfg.types))
        type_ids = jnp.asarray([type_names.index(t) for t in cfg.types], jnp.int32)
        rope_sin, rope_cos = _rope_tables(cfg, type_names, positions)
        windows = [cfg.sliding_window if name == "sliding" else None for name in type_names]
        # What the T new tokens may attend to, [n_types, B, T, T] among themselves and, with a
        # cache, [n_types, B, T, S] over the slots filled before them (the cache's mask before
        # this call's tokens are written in: False from slot `index` on).
        new_slots = jnp.arange(T)
        allowed = {"new": jnp.stack([kv_cache.attention_mask(new_slots, positions, new_slots, mask, positions, w)
                                     for w in windows])}
        if cache is not None:
            q_slots = cache["index"] + new_slots
            kv_slots = jnp.arange(cache["mask"].shape[1])
            allowed["cache"] = jnp.stack([
                kv_cache.attention_mask(q_slots, positions, kv_slots, cache["mask"], cache["positions"], w)
                for w in windows])
            cache = kv_cache.write_tokens(cache, mask, positions)

        # Under scan, remat must not prevent CSE (it would block the loop's optimisations).
        block = nn.remat(Block, prevent_cse=not cfg.scan_layers) if cfg.remat else Block
        if cfg.scan_layers:
            if cache is not None:
                raise ValueError("a cache needs the per-layer layout: models.forward and generate switch a "
                                 "scan_layers config to it (models.per_layer_layout)")
            layers = nn.scan(
                block,
                variable_axes={"params": 0, "lora": 0},
                split_rngs={"params": True},
                in_axes=(nn.broadcast, nn.broadcast, nn.broadcast, 0),
                length=cfg.n_layers,
                metadata_params={nn.PARTITION_NAME: "layers"},
            )(cfg, name="layers")
            x, _ = layers(x, rope_sin, rope_cos, allowed, type_ids)
        else:
            new_kv = []
            for i in range(cfg.n_layers):
                layer_cache = None if cache is None else (cache["k"][i], cache["v"][i])
                x, layer_kv = block(cfg, name=f"layers_{i}")(x, rope_sin, rope_cos, allowed, type_ids[i], layer_cache)
                new_kv.append(layer_kv)
            if cache is not None:
                # Every layer's new keys/values are written after every layer has read the cache.
                cache = kv_cache.write_keys_values(cache, *zip(*new_kv))

        if last_only:
            x = x[:, -1:]
        x = RMSNorm(cfg.norm_eps, cfg.norm_plus_one, dtype=cfg.compute_dtype,
                    param_dtype=cfg.weight_dtype, name="final_norm")(x)
        outputs = {"hidden": x}
        if cfg.lm_head:
            outputs["logits"] = embed.attend(x) if cfg.tie_embeddings else UntiedHead(cfg, name="lm_head")(x)
        if cfg.value_head:
            values = Linear("BTD,DO->BTO", (cfg.d_model, 1), ("embed", "head_out"), use_bias=True,
                            dtype=jnp.float32, param_dtype=cfg.weight_dtype, name="value_head")(x)
            outputs["values"] = values[..., 0]
        if cache is not None:
            cache = kv_cache.advance(cache, T)
        return outputs, cache
