"""Offline preference optimisation of the policy: DPO (every loss type), IPO, KTO, SimPO, ORPO,
against a frozen reference model.

Batches of pairs are [B, 2, T] (axis 1: chosen, rejected), built by `encode_pairs`; KTO reads
unpaired rows [B, T] (`encode_unpaired`, from `rljax.data.preference.unpaired`). A response is
scored by its sequence log-probability under π,

    log π(y|x) = Σ_t m_t · log π(y_t | x, y_<t)         (DPO, KTO)
    or its length-normalised form Σ_t m_t · log π(·) / Σ_t m_t   (IPO, SimPO, ORPO)

with m the response's loss mask, and the losses are those of `rljax.losses.preference`:

  dpo    dpo_loss(loss_type=sigmoid | ipo | hinge | robust)  Rafailov et al. 2023 (and variants)
  ipo    dpo_loss(loss_type="ipo") on length-normalised log-probs   Azar et al. 2023
  kto    kto_loss, z0 from mismatched (x_i, y_{i+1}) pairs          Ethayarajh et al. 2024
  simpo  simpo_loss (no reference)                                  Meng et al. 2024
  orpo   orpo_loss (no reference)                                   Hong et al. 2024

Reference log-probs are computed outside the step (`sequence_logps` on the frozen reference's
params, gradient-free) and read from the batch ("ref_logp"), so the step stays a pure
`step(state, batch, key) -> (state, metrics)`.

The config-driven stages (pairs, this loss, a reward model) are `rljax.train.experiment`'s
`run_preference`.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from rljax import losses, models
from rljax.data.batching import pad_sft
from rljax.models.config import ModelConfig
from rljax.models.head import head_logprobs
from rljax.train.state import TrainState
from rljax.train.steps import Batch, Step, accumulate_gradients, apply_update

PREFERENCE_LOSSES = ("dpo", "ipo", "kto", "simpo", "orpo")
LENGTH_NORMALISED = ("ipo", "simpo", "orpo")
REFERENCE_FREE = ("simpo", "orpo")


# -- batches ----------------------------------------------------------------------------------------
def encode_pairs(tokenizer, pairs: Sequence[Mapping[str, Any]], multiple_of: int = 8) -> dict[str, np.ndarray]:
    """Pairs -> tokens, attention_mask, loss_mask, each [B, 2, T] (axis 1: chosen, rejected):
    prompt + response + EOS, right-padded (`pad_sft`) to T, the longest row rounded up to
    `multiple_of` (few distinct shapes to compile); loss_mask on the response."""
    prompts = [tokenizer.encode(p["prompt"]) for p in pairs]
    responses = [tokenizer.encode(p[k]) + [tokenizer.eos_id] for k in ("chosen", "rejected") for p in pairs]
    arrays = pad_sft(prompts + prompts, responses, pad_id=tokenizer.pad_id, multiple_of=multiple_of)
    names = ("tokens", "attention_mask", "loss_mask")
    return {k: a.reshape(2, len(pairs), -1).transpose(1, 0, 2) for k, a in zip(names, arrays)}


def encode_unpaired(tokenizer, rows: Sequence[Mapping[str, Any]], multiple_of: int = 8) -> dict[str, np.ndarray]:
    """Unpaired rows (`unpaired(pairs)`) -> tokens, attention_mask, loss_mask [B, T], desirable [B],
    and KTO's mismatched pairs (x_i, y_{i+1 mod B}) as kl_tokens, kl_attention_mask, kl_loss_mask
    (T as in `encode_pairs`, over both)."""
    prompts = [tokenizer.encode(r["prompt"]) for r in rows]
    responses = [tokenizer.encode(r["completion"]) + [tokenizer.eos_id] for r in rows]
    names = ("tokens", "attention_mask", "loss_mask")
    shifted = responses[1:] + responses[:1]
    arrays = pad_sft(prompts + prompts, responses + shifted, pad_id=tokenizer.pad_id, multiple_of=multiple_of)
    batch = {k: a[:len(rows)] for k, a in zip(names, arrays)}
    batch.update({f"kl_{k}": a[len(rows):] for k, a in zip(names, arrays)})
    batch["desirable"] = np.array([bool(r["desirable"]) for r in rows])
    return batch


def sequence_logps(cfg: ModelConfig, params, tokens: jax.Array, attention_mask: jax.Array, loss_mask: jax.Array,
                   average: bool = False) -> jax.Array:
    """log π(response | prompt) of rows [..., T] -> [...]: the sum over the `loss_mask` tokens of
    log π(tokens[t] | tokens[<t]) (`losses.seq_sum`), or with `average` their mean (`seq_mean`)."""
    lead, T = tokens.shape[:-1], tokens.shape[-1]
    tokens, attention_mask, loss_mask = (x.reshape(-1, T) for x in (tokens, attention_mask, loss_mask))
    hidden = models.forward(cfg, params, tokens, mask=attention_mask).hidden
    logp = head_logprobs(cfg, params, hidden, tokens, loss_mask)
    reduce = losses.seq_mean if average else losses.seq_sum
    return reduce(logp, loss_mask).reshape(lead)


def add_reference_logps(cfg: ModelConfig, ref_params, batch: Batch, loss: str) -> dict:
    """The batch with the frozen reference's sequence log-probs: ref_logp ([B, 2] pairs, [B] KTO)
    and, for KTO, kl_ref_logp [B]. Reference-free losses get the batch back unchanged."""
    batch = dict(batch)
    if loss in REFERENCE_FREE:
        return batch
    average = loss in LENGTH_NORMALISED
    batch["ref_logp"] = _jit_logps(cfg, ref_params, batch["tokens"], batch["attention_mask"], batch["loss_mask"],
                                   average)
    if loss == "kto":
        batch["kl_ref_logp"] = _jit_logps(cfg, ref_params, batch["kl_tokens"], batch["kl_attention_mask"],
                                          batch["kl_loss_mask"], average)
    return batch


_jit_logps = jax.jit(sequence_logps, static_argnums=(0, 5))


# -- the step -------------------------------------------------------------------------------------
def preference_loss(loss: str, logp: jax.Array, batch: Batch, z0: jax.Array | None = None, **hparams):
    """The `loss` (one of `PREFERENCE_LOSSES`) of policy log-probs `logp` ([B, 2] pairs, [B] KTO)
    on `batch` (ref_logp, desirable as needed); hparams go to the `rljax.losses` function."""
    if loss == "kto":
        return losses.kto_loss(logp, batch["ref_logp"], batch["desirable"], z0=z0, **hparams)
    chosen, rejected = logp[:, 0], logp[:, 1]
    if loss in ("dpo", "ipo"):
        if loss == "ipo":
            hparams = {**hparams, "loss_type": "ipo"}
        ref = batch["ref_logp"]
        return losses.dpo_loss(chosen, rejected, ref[:, 0], ref[:, 1], **hparams)
    if loss == "simpo":
        return losses.simpo_loss(chosen, rejected, **hparams)
    if loss == "orpo":
        return losses.orpo_loss(chosen, rejected, **hparams)
    raise ValueError(f"unknown preference loss {loss!r}; choose one of {PREFERENCE_LOSSES}")


def make_preference_step(cfg: ModelConfig, optimizer: optax.GradientTransformation, loss: str = "dpo",
                         micro_batches: int = 1, **hparams) -> Step:
    """A step of the preference `loss` (see the module docstring) with exact gradient
    accumulation: the batch-mean losses of `micro_batches` slices along B are weighted by their
    share of B. KTO's reference point z0 (gradient-free) is taken over the whole batch first.

    Batch: tokens, attention_mask, loss_mask ([B, 2, T] pairs; [B, T] KTO) and, as the loss
    needs, ref_logp, desirable, kl_* (see `encode_unpaired`, `add_reference_logps`).
    """
    if loss not in PREFERENCE_LOSSES:
        raise ValueError(f"unknown preference loss {loss!r}; choose one of {PREFERENCE_LOSSES}")
    average = loss in LENGTH_NORMALISED

    def step(state: TrainState, batch: Batch, key: jax.Array):
        del key  # deterministic
        batch = dict(batch)
        total = batch["tokens"].shape[0]
        z0 = None
        if loss == "kto":
            kl = [batch.pop(k) for k in ("kl_tokens", "kl_attention_mask", "kl_loss_mask")]
            kl_logp = sequence_logps(cfg, state.params, *kl, average)
            z0 = jax.lax.stop_gradient(jnp.mean(kl_logp - batch.pop("kl_ref_logp")))

        def loss_fn(params, mb):
            logp = sequence_logps(cfg, params, mb["tokens"], mb["attention_mask"], mb["loss_mask"], average)
            value, metrics = preference_loss(loss, logp, mb, z0, **hparams)
            return value * (mb["tokens"].shape[0] / total), metrics

        value, metrics, grads = accumulate_gradients(loss_fn, state.params, batch, micro_batches)
        return apply_update(state, optimizer, value, metrics, grads)

    return step
