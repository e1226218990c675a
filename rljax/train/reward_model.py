"""Reward models: a scalar head on a transformer trunk, trained on preference pairs with the
Bradley-Terry loss, and used as the reward of RL.

The reward of a sequence (prompt + response + EOS) is the value head's output at its last real
token (`models.reward`, Ouyang et al. 2022). Under the Bradley-Terry model (Bradley & Terry 1952)

    P(y_w ≻ y_l | x) = σ(r(x, y_w) − r(x, y_l)),

so training minimises `losses.bradley_terry_loss(r_w, r_l)` = mean −log σ(r_w − r_l − m)
(+ optional reward centring), and the held-out check is the pairwise accuracy
mean 1[r(x, y_w) > r(x, y_l)]. Pairs are the [B, 2, T] batches of
`rljax.train.preference.encode_pairs`.

With `sft_coef` = α > 0 the reward model keeps its LM head and adds the chosen responses'
negative log-likelihood, α·mean_t −log π(y_w,t | x, y_w,<t), to the loss: the hidden-state
regulariser of Yang et al. 2024 ("Regularizing hidden states enables learning generalizable
reward model for LLMs", GRM), which keeps the trunk a language model of the preferred answers.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from rljax import losses, models
from rljax.models.config import ModelConfig
from rljax.models.head import head_logprobs
from rljax.train.state import TrainState
from rljax.train.steps import Batch, Step, accumulate_gradients, apply_update


def value_model_config(cfg: ModelConfig, lm_head: bool = False) -> ModelConfig:
    """`cfg`'s trunk with a scalar value head, and its LM head only with `lm_head`: the config
    of a reward model, or of a critic."""
    return dataclasses.replace(cfg, value_head=True, lm_head=lm_head)


def init_reward_model(cfg: ModelConfig, params, key: jax.Array, lm_head: bool = False) -> tuple[ModelConfig, dict]:
    """A reward model on the policy's trunk: `value_model_config(cfg, lm_head)` (the LM head for
    `sft_coef`), its other weights copied from `params` (e.g. the SFT policy, as in Ouyang et al.
    2022) and a freshly initialised value head."""
    rm_cfg = value_model_config(cfg, lm_head)
    fresh = models.init(rm_cfg, key)
    rm_params = {k: jax.tree.map(jnp.copy, params[k]) if k in params and k != "value_head" else v
                 for k, v in fresh.items()}
    return rm_cfg, rm_params


def critic_from_reward_model(critic_cfg: ModelConfig, rm_params) -> dict:
    """PPO's critic initialised from the reward model (Ouyang et al. 2022, InstructGPT: "we
    initialize the value function from the RM"): the params of `critic_cfg`
    (`value_model_config` of the reward model's trunk) copied from the reward model's, its LM
    head left out. A copy, so that training the critic leaves the reward model as it was."""
    wanted = jax.eval_shape(lambda: models.init(critic_cfg, jax.random.PRNGKey(0)))
    return {k: jax.tree.map(jnp.copy, rm_params[k]) for k in wanted}


def pair_rewards(cfg: ModelConfig, params, tokens: jax.Array, attention_mask: jax.Array) -> jax.Array:
    """Rewards of rows [..., T] (read at each row's last real token) -> [...]."""
    lead, T = tokens.shape[:-1], tokens.shape[-1]
    return models.reward(cfg, params, tokens.reshape(-1, T), attention_mask.reshape(-1, T)).reshape(lead)


def make_reward_model_step(cfg: ModelConfig, optimizer: optax.GradientTransformation, micro_batches: int = 1,
                           margin: float = 0.0, center_coef: float = 0.0, sft_coef: float = 0.0) -> Step:
    """A Bradley-Terry step on pairs (batch: tokens, attention_mask, and with `sft_coef`
    loss_mask, [B, 2, T]; axis 1 chosen, rejected), with exact gradient accumulation over
    `micro_batches` slices along B. Metrics: loss, grad_norm, `bradley_terry_loss`'s reward
    metrics (reward_accuracy: the training pairwise accuracy) and, with `sft_coef`, sft_nll."""
    if sft_coef and not cfg.lm_head:
        raise ValueError("sft_coef needs a reward model with its LM head (init_reward_model(..., lm_head=True))")

    def step(state: TrainState, batch: Batch, key: jax.Array):
        del key  # deterministic
        total = batch["tokens"].shape[0]
        counts = losses.global_counts(batch["loss_mask"][:, 0]) if sft_coef else {}

        def loss_fn(params, mb):
            B, _, T = mb["tokens"].shape
            tokens, attention = mb["tokens"].reshape(-1, T), mb["attention_mask"].reshape(-1, T)
            out = models.forward(cfg, params, tokens, mask=attention)
            r = models.last_token_values(out.values, attention).reshape(B, 2)
            value, metrics = losses.bradley_terry_loss(r[:, 0], r[:, 1], margin=margin, center_coef=center_coef)
            value = value * (B / total)
            if sft_coef:  # the chosen rows' NLL, normalised by the whole batch's token count
                chosen = mb["loss_mask"][:, 0]
                logp = head_logprobs(cfg, params, out.hidden.reshape(B, 2, T, -1)[:, 0], mb["tokens"][:, 0], chosen)
                nll, _ = losses.sft_loss(logp, chosen, **counts)
                value, metrics = value + sft_coef * nll, {**metrics, "sft_nll": nll * total / B}
            return value, metrics

        value, metrics, grads = accumulate_gradients(loss_fn, state.params, batch, micro_batches)
        return apply_update(state, optimizer, value, metrics, grads)

    return step


_jit_pair_rewards = jax.jit(pair_rewards, static_argnums=0)


def pairwise_accuracy(cfg: ModelConfig, params, batches: Iterable[Batch]) -> float:
    """Fraction of pairs whose chosen response gets the higher reward, over `batches` of pairs
    (tokens, attention_mask [B, 2, T]); a tie counts as wrong."""
    right, total = 0, 0
    for batch in batches:
        r = np.asarray(_jit_pair_rewards(cfg, params, batch["tokens"], batch["attention_mask"]))
        right += int(np.sum(r[:, 0] > r[:, 1]))
        total += r.shape[0]
    return right / total


def reward_function(cfg: ModelConfig, params) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """The learned reward as a host function: (tokens [B, T], attention_mask [B, T]) -> rewards [B]
    (float32), what `rljax.train.rollout.Collector(reward_model=...)` scores samples with."""
    return lambda tokens, attention_mask: np.asarray(_jit_pair_rewards(cfg, params, tokens, attention_mask),
                                                     np.float32)
