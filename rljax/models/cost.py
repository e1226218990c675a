"""What a forward pass, a train step and a decoding step cost, counted from the config.

For throughput ceilings: FLOPs over a measured matrix rate give the compute floor of a step
(model FLOPs utilisation, MFU), bytes over a measured copy bandwidth the memory floor of a
decoding step (the roofline of memory-bound generation). Shapes: B rows, T tokens per row.

The FLOPs are those of the matrix products (2 per multiply-add); norms, RoPE, softmax and the
optimiser are left out, as in the MFU of Chowdhery et al. 2022 (PaLM, appendix B):
    forward = B*T * (2 * P_matmul + 4 * L * T * N * H) + 2 * D * V * (rows given logits)
with P_matmul the weights of the layers' matrix products (embedding and LM head excluded) and
the attention score and value products over every key, as this implementation computes them
(masked, not skipped). A train step is 3x its forward pass (the backward pass computes the
gradients with respect to both operands of every product); recomputation is not counted.
"""

from __future__ import annotations

import numpy as np

from rljax.models.config import ModelConfig


def layer_matmul_params(cfg: ModelConfig) -> int:
    """Weights of one layer's matrix products: q, k, v, o and the gated MLP's three."""
    D, N, K, H, F = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.mlp_dim
    return D * N * H + 2 * D * K * H + N * H * D + 3 * D * F


def forward_flops(cfg: ModelConfig, batch: int, seq_len: int, logit_rows: int | None = None) -> int:
    """Matrix-product FLOPs of one forward pass over [batch, seq_len] tokens.

    logit_rows: token rows whose logits are computed (default every row, batch * seq_len; a
    train step's fused LM head computes only the scored ones, a prefill only the last).
    """
    if batch < 1 or seq_len < 1:
        raise ValueError(f"batch and seq_len must be >= 1, got {batch} and {seq_len}")
    tokens = batch * seq_len
    logit_rows = tokens if logit_rows is None else logit_rows
    trunk = 2 * cfg.n_layers * layer_matmul_params(cfg) * tokens
    attention = 4 * cfg.n_layers * tokens * seq_len * cfg.n_heads * cfg.head_dim
    head = 2 * cfg.d_model * cfg.vocab_size * logit_rows if cfg.lm_head else 0
    return trunk + attention + head


def decode_step_flops(cfg: ModelConfig, batch: int, context: float) -> float:
    """Matrix-product FLOPs of one decoding step: one new token in each of `batch` rows, which
    attends to `context` keys (the cached ones and its own), and its next-token logits:
        batch * (2 * P_matmul + 4 * L * context * N * H) + 2 * D * V * batch.
    """
    if batch < 1 or context < 1:
        raise ValueError(f"batch and context must be >= 1, got {batch} and {context}")
    trunk = 2 * cfg.n_layers * layer_matmul_params(cfg) * batch
    attention = 4 * cfg.n_layers * batch * context * cfg.n_heads * cfg.head_dim
    head = 2 * cfg.d_model * cfg.vocab_size * batch if cfg.lm_head else 0
    return trunk + attention + head


def train_step_flops(cfg: ModelConfig, batch: int, seq_len: int, logit_rows: int | None = None) -> int:
    """Model FLOPs of one optimiser step on [batch, seq_len]: forward and backward, 3x forward."""
    return 3 * forward_flops(cfg, batch, seq_len, logit_rows)


def weight_bytes(cfg: ModelConfig, n_params: int) -> int:
    """Bytes of the weights as a decoding step reads them: every parameter once, in the compute
    dtype (the tied embedding is read whole as the LM head)."""
    return n_params * np.dtype(cfg.dtype).itemsize


def kv_bytes(cfg: ModelConfig, batch: int, context: float) -> float:
    """Bytes of keys and values that one decoding step must read at `context` cached tokens."""
    per_token = 2 * cfg.n_layers * cfg.n_kv_heads * cfg.head_dim * np.dtype(cfg.dtype).itemsize
    return batch * context * per_token
