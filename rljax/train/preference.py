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

`run_stages` is the config-driven stage of `rljax.train.experiment.run`: preference pairs,
then this stage and/or the reward model (`rljax.train.reward_model`), each checkpointed and
resumable, with their metrics in `workdir/<stage>/metrics.jsonl` and `curves.png`.
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from rljax import losses, models
from rljax.data.batching import pad_sft
from rljax.data.preference import load_preferences, sampled_pairs_file, unpaired
from rljax.data.sampler import PromptSampler
from rljax.models.config import ModelConfig
from rljax.rewards import task_rewards
from rljax.train.metrics import plot_curves, read_jsonl
from rljax.train import reward_model as rm
from rljax.train.optim import make_optimizer
from rljax.train.state import TrainState
from rljax.train.steps import Batch, Step, _update, accumulate_gradients, head_logprobs

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
        return _update(state, optimizer, value, metrics, grads)

    return step


# -- the config-driven stages ----------------------------------------------------------------------
def _train_loop(stage, steps: int, batch_size: int, make_batch: Callable, step: Callable, key, prefix: str,
                evaluate: Callable | None = None, eval_every: int = 0):
    """Steps of a stage (a `rljax.train.experiment._Stage`) with metrics under `prefix/`;
    `evaluate(params)` after every `eval_every` iterations and the last. Returns the final state."""
    for it in range(stage.start, steps):
        batch = make_batch(stage.sampler.next_batch(batch_size))
        state, metrics = step(stage.state, batch, jax.random.fold_in(key, it))
        metrics = {f"{prefix}/{k}": v for k, v in metrics.items()}
        if evaluate is not None and ((eval_every and (it + 1) % eval_every == 0) or it + 1 == steps):
            metrics.update(evaluate(state.params))
        stage.log(it, metrics, keys=(f"{prefix}/loss",))
        stage.end_iteration(it, state)
    stage.close()
    return stage.state


def _curves(workdir: str, title: str) -> str:
    rows = read_jsonl(os.path.join(workdir, "metrics.jsonl"))
    keys = sorted({k for r in rows for k in r if k != "step"})
    return plot_curves(rows, os.path.join(workdir, "curves.png"), keys, title=title)


def preference_pairs(config, cfg, params, tokenizer, train_src, prompt_fn, seed: int):
    """The (train, test) preference pairs of `config.preference.pairs`: sampled from the policy on
    the task's training prompts (source "task"), or read from a JSONL file (source "jsonl")."""
    p = config.preference.pairs
    if p.source == "jsonl":
        path = p.path
    elif p.source == "task":
        reward_fns, _ = task_rewards(config.task.name, config.task.answer_format)
        examples = PromptSampler(train_src, seed=seed).next_batch(min(p.prompts, len(train_src)))
        path = sampled_pairs_file(cfg, params, tokenizer, examples, seed, data_dir=config.task.data_dir,
                                  name=config.task.name, prompt_fn=prompt_fn, reward_fn=reward_fns["correct"],
                                  samples_per_prompt=p.samples_per_prompt, pairs_per_prompt=p.pairs_per_prompt,
                                  max_new_tokens=p.max_new_tokens,
                                  temperature=p.temperature, prompt_len=config.data.max_prompt_tokens)
    else:
        raise ValueError(f"preference.pairs.source={p.source!r}: choose 'task' or 'jsonl'")
    return tuple(load_preferences(path, split, config.task.data_dir, test_size=p.test_size, seed=seed)
                 for split in ("train", "test"))


def run_stages(config, workdir: str, cfg: ModelConfig, params, tokenizer, train_src, prompt_fn,
               evaluate: Callable[[Any], dict], key, stage_cls) -> tuple[Any, Callable | None, dict]:
    """The preference stages of `config.preference` after the SFT warm start.

    1. pairs (`preference_pairs`);
    2. `policy` (steps > 0): the preference loss on the policy, the SFT policy as the frozen
       reference; greedy held-out accuracy (`evaluate`) before and after;
    3. `reward_model` (steps > 0): a Bradley-Terry reward model (`rljax.train.reward_model`) with
       held-out pairwise accuracy (the experiment makes it the RL reward with `use_in_rl`, and
       PPO's critic with `init_critic`).
    `stage_cls` is the experiment's checkpointing stage (`rljax.train.experiment._Stage`).
    Returns (policy params, the reward model as (cfg, params) or None, results).
    """
    pref = config.preference
    t0 = time.perf_counter()
    k_policy, k_rm = jax.random.split(key)
    train_pairs, test_pairs = preference_pairs(config, cfg, params, tokenizer, train_src, prompt_fn, config.seed)
    results: dict[str, Any] = {"preference_pairs": {"train": len(train_pairs), "test": len(test_pairs)},
                               "preference_pairs_seconds": time.perf_counter() - t0}
    reward_model = None

    if (p := pref.policy).steps > 0:
        loss, hparams = p.loss, dict(p.hparams)
        optimizer = make_optimizer(p.learning_rate, total_steps=p.steps, warmup_steps=p.warmup_steps,
                                   decay="cosine", weight_decay=p.weight_decay)
        step = jax.jit(make_preference_step(cfg, optimizer, loss, p.micro_batches, **hparams), donate_argnums=0)
        ref_params = jax.tree.map(jnp.copy, params)  # the step donates the policy's buffers
        if loss == "kto":
            source = unpaired(train_pairs)
            encode = lambda rows: encode_unpaired(tokenizer, rows)  # noqa: E731
        else:
            source = train_pairs
            encode = lambda rows: encode_pairs(tokenizer, rows)  # noqa: E731
        make_batch = lambda rows: add_reference_logps(cfg, ref_params, encode(rows), loss)  # noqa: E731
        stage_dir = os.path.join(workdir, "preference")
        state_key, k_policy = jax.random.split(k_policy)
        stage = stage_cls("preference", config, stage_dir, p.steps,
                          TrainState.create(params, optimizer, state_key),
                          PromptSampler(source, seed=config.seed + 2), 0)
        results["accuracy_before_preference"] = evaluate(ref_params)["eval/accuracy"]  # the SFT policy
        params = _train_loop(stage, p.steps, p.batch_size, make_batch, step, k_policy, loss, evaluate,
                             config.eval.every).params
        results["accuracy_after_preference"] = evaluate(params)["eval/accuracy"]
        results["preference_curves"] = _curves(stage_dir, f"{config.task.name}: {loss}")

    if (r := pref.reward_model).steps > 0:
        rm_cfg, rm_params = rm.init_reward_model(cfg, params, k_rm, lm_head=bool(r.hparams.get("sft_coef")))
        optimizer = make_optimizer(r.learning_rate, total_steps=r.steps, warmup_steps=r.warmup_steps,
                                   decay="cosine", weight_decay=r.weight_decay)
        step = jax.jit(rm.make_reward_model_step(rm_cfg, optimizer, r.micro_batches, **dict(r.hparams)),
                       donate_argnums=0)
        held_out = [encode_pairs(tokenizer, test_pairs[i:i + r.batch_size])
                    for i in range(0, len(test_pairs), r.batch_size)]
        accuracy = lambda rm_p: {"eval/pairwise_accuracy": rm.pairwise_accuracy(rm_cfg, rm_p, held_out)}  # noqa: E731
        stage_dir = os.path.join(workdir, "reward_model")
        state_key, k_rm = jax.random.split(k_rm)
        stage = stage_cls("reward_model", config, stage_dir, r.steps,
                          TrainState.create(rm_params, optimizer, state_key),
                          PromptSampler(train_pairs, seed=config.seed + 3), 0)
        encode = lambda rows: encode_pairs(tokenizer, rows)  # noqa: E731
        state = _train_loop(stage, r.steps, r.batch_size, encode, step, k_rm, "rm", accuracy, r.eval_every)
        results["pairwise_accuracy"] = accuracy(state.params)["eval/pairwise_accuracy"]
        results["reward_model_curves"] = _curves(stage_dir, f"{config.task.name}: reward model")
        reward_model = (rm_cfg, state.params)
    results["preference_seconds"] = time.perf_counter() - t0
    return params, reward_model, results
