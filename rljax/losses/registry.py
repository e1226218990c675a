"""The one registry of policy-gradient estimators: names -> pure functions of arrays.

An RL update composes three independent choices:

  advantage  how rewards become advantages: a row of `ADVANTAGES`
  surrogate  the loss whose gradient updates the policy: a row of `SURROGATES`
  kl         where a KL penalty toward π_ref goes: "none", "reward" (Ziegler et al. 2019: each
             token pays β·kl_t in the reward) or "loss" (Shao et al. 2024: + β·aggregate(kl_t)),
             with an estimator of `kl.KL_KINDS`

so the named algorithms of the literature are compositions, not flags:

  GRPO (Shao et al. 2024)         advantage "grpo",  surrogate "ppo", kl in the loss (k3)
  Dr. GRPO (Liu et al. 2025)      advantage "dr_grpo", surrogate "ppo", agg seq-mean-token-sum-norm
  DAPO (Yu et al. 2025)           advantage "grpo",  surrogate "ppo" with clip_eps_high=0.28
  RLOO (Ahmadian et al. 2024)     advantage "rloo",  surrogate "reinforce"
  PPO (Ouyang et al. 2022)        advantage "gae" (a critic), surrogate "ppo", kl in the reward (k1)

A row is a pure function plus what it asks of the run; its hyperparameters are its keyword-only
arguments, and their defaults are the paper's. A new estimator is one row here and its pure
function in `rljax.losses`. Both the trainer (`rljax.train`) and the estimator study
(`rljax.estimators`) read this table.

Advantage rows take an `AdvantageInputs` and return (advantages [B] or [B, T], returns [B, T]
or None); surrogate rows take (logp, old_logp, advantages, mask) and the aggregation keywords of
`aggregate` and return (loss, metrics), like the losses they wrap.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp

from .advantages import gae, group_advantages, reinforce_pp_advantages, remax_advantages, rloo_advantages, whiten
from .aggregation import seq_sum
from .policy import cispo_loss, gspo_loss, ppo_policy_loss, reinforce_loss


class AdvantageInputs(NamedTuple):
    """What an advantage estimator may read; B = P·G rows, groups of G consecutive rows.

    rewards: [B] sequence rewards (KL-shaped with the KL in the reward: minus β·Σ_t kl_t).
    token_rewards: [B, T] the same rewards per token: each row's reward on its last loss-mask
      token (or per-turn rewards on each turn's last token), minus β·kl_t on every loss-mask token
      with the KL in the reward; rewards = Σ_t token_rewards.
    mask: [B, T] the loss mask, True on the tokens the policy sampled.
    values: [B, T] the critic's V(tokens[<t]) (0 off the mask), or None without a critic.
    baseline: [B] a baseline given with the rollout (ReMax: the reward of the greedy response to
      the row's prompt), or None.
    group_size: G, a Python int.
    """

    rewards: jax.Array
    token_rewards: jax.Array
    mask: jax.Array
    values: jax.Array | None
    baseline: jax.Array | None
    group_size: int


@dataclasses.dataclass(frozen=True)
class Advantage:
    """An advantage estimator: `fn(inputs, **hparams) -> (advantages, returns or None)`.

    min_group: the smallest G it works with (a group-relative baseline needs two samples).
    needs_critic: reads `inputs.values` and returns the critic's regression targets.
    needs_baseline: reads `inputs.baseline` (a rollout must supply it, e.g. greedy rewards).
    """

    fn: Callable[..., tuple[jax.Array, jax.Array | None]]
    paper: str
    min_group: int = 1
    needs_critic: bool = False
    needs_baseline: bool = False

    @property
    def hparams(self) -> dict[str, Any]:
        return _keyword_defaults(self.fn)


@dataclasses.dataclass(frozen=True)
class Surrogate:
    """A surrogate loss: `fn(logp, old_logp, advantages, mask, **aggregation, **hparams) ->
    (loss, metrics)`. on_policy: it never reads old_logp (its gradient is REINFORCE's at π_θ)."""

    fn: Callable[..., tuple[jax.Array, dict]]
    paper: str
    on_policy: bool = False

    @property
    def hparams(self) -> dict[str, Any]:
        return _keyword_defaults(self.fn)


# Keywords every surrogate passes through to its loss (`aggregate`'s and the loss extras).
AGGREGATION_KEYWORDS = ("agg", "norm_len", "num_tokens", "num_seqs", "is_weights", "entropy")


def _keyword_defaults(fn) -> dict[str, Any]:
    """A row's hyperparameters: the keyword-only arguments of its function, with their defaults."""
    return {name: p.default for name, p in inspect.signature(fn).parameters.items()
            if p.kind is inspect.Parameter.KEYWORD_ONLY and name not in AGGREGATION_KEYWORDS}


def _groups(x: AdvantageInputs) -> jax.Array:
    return x.rewards.reshape(-1, x.group_size)


# ------------------------------------------------------------------------------- advantages

def _grpo(x: AdvantageInputs, *, eps=1e-6):
    return group_advantages(_groups(x), normalize_std=True, eps=eps).reshape(-1), None


def _dr_grpo(x: AdvantageInputs):
    return group_advantages(_groups(x), normalize_std=False).reshape(-1), None


def _rloo(x: AdvantageInputs):
    return rloo_advantages(_groups(x)).reshape(-1), None


def _reinforce_pp(x: AdvantageInputs, *, eps=1e-8):
    return reinforce_pp_advantages(x.rewards, eps=eps), None


def _reinforce_pp_baseline(x: AdvantageInputs, *, eps=1e-8):
    return reinforce_pp_advantages(_groups(x), group_baseline=True, eps=eps).reshape(-1), None


def _remax(x: AdvantageInputs):
    return remax_advantages(x.rewards, x.baseline), None


def _batch_mean(x: AdvantageInputs):
    # One group spanning the batch: r − mean over all B responses (a plain baseline).
    return group_advantages(x.rewards[None], normalize_std=False)[0], None


def _none(x: AdvantageInputs):
    return jnp.asarray(x.rewards, jnp.float32), None


def _gae(x: AdvantageInputs, *, gamma=1.0, lam=0.95, whiten_advantages=True):
    advantages, returns = gae(x.token_rewards, x.values, x.mask, gamma, lam)
    if whiten_advantages:
        advantages = whiten(advantages, x.mask)
    return advantages, returns


ADVANTAGES: dict[str, Advantage] = {
    "grpo": Advantage(_grpo, "Shao et al. 2024, DeepSeekMath: (r − mean_G) / (std_G + eps)", min_group=2),
    "dr_grpo": Advantage(_dr_grpo, "Liu et al. 2025, Dr. GRPO: r − mean_G", min_group=2),
    "rloo": Advantage(_rloo, "Kool et al. 2019; Ahmadian et al. 2024: r_i − mean_{j≠i} r_j", min_group=2),
    "reinforce_pp": Advantage(_reinforce_pp, "Hu 2025, REINFORCE++: r whitened over the batch"),
    "reinforce_pp_baseline": Advantage(_reinforce_pp_baseline, "Hu 2025: (r − mean_G) whitened over the batch",
                                       min_group=2),
    "remax": Advantage(_remax, "Li et al. 2023, ReMax: r − r(greedy response)", needs_baseline=True),
    "batch_mean": Advantage(_batch_mean, "REINFORCE with a batch-mean baseline: r − mean_batch"),
    "gae": Advantage(_gae, "Schulman et al. 2016, GAE(γ, λ) on token rewards and a critic, whitened over "
                     "the batch's tokens", needs_critic=True),
    "none": Advantage(_none, "Williams 1992, REINFORCE: A = r"),
}


# ------------------------------------------------------------------------------- surrogates

def _reinforce(logp, old_logp, advantages, mask, **aggregation):
    del old_logp  # on-policy: ∇ = −A·∇log π_θ
    return reinforce_loss(logp, advantages, mask, **aggregation)


def _seq_is(logp, old_logp, advantages, mask, *, is_weights=None, **aggregation):
    """REINFORCE weighted by the sequence ratio w = π_θ(y)/π_old(y) (gradient stopped): the exact
    off-policy correction of samples from π_old, the stale surrogates' unclipped control."""
    weights = jnp.exp(seq_sum(jax.lax.stop_gradient(logp) - old_logp, mask))
    if is_weights is not None:
        weights = weights[:, None] * is_weights if jnp.ndim(is_weights) == 2 else weights * is_weights
    return reinforce_loss(logp, advantages, mask, is_weights=weights, **aggregation)


def _ppo(logp, old_logp, advantages, mask, *, clip_eps=0.2, clip_eps_high=None, dual_clip=None, **aggregation):
    return ppo_policy_loss(logp, old_logp, advantages, mask, clip_eps, clip_eps_high, dual_clip, **aggregation)


def _gspo(logp, old_logp, advantages, mask, *, clip_eps=3e-4, clip_eps_high=4e-4, variant="sequence",
          **aggregation):
    return gspo_loss(logp, old_logp, advantages, mask, clip_eps, clip_eps_high, variant, **aggregation)


def _cispo(logp, old_logp, advantages, mask, *, clip_eps_low=None, clip_eps_high=0.28, **aggregation):
    return cispo_loss(logp, old_logp, advantages, mask, clip_eps_low, clip_eps_high, **aggregation)


SURROGATES: dict[str, Surrogate] = {
    "reinforce": Surrogate(_reinforce, "Williams 1992: −A·log π_θ", on_policy=True),
    "ppo": Surrogate(_ppo, "Schulman et al. 2017: clipped ratio (+ clip-higher, dual-clip)"),
    "gspo": Surrogate(_gspo, "Zheng et al. 2025, GSPO: clipped length-normalised sequence ratio"),
    "cispo": Surrogate(_cispo, "MiniMax 2025, CISPO: clipped IS weight on REINFORCE"),
    "seq_is": Surrogate(_seq_is, "REINFORCE with the exact sequence importance weight (a control)"),
}

KL_PLACEMENTS = ("none", "reward", "loss")


def _lookup(table: Mapping[str, Any], kind: str, name: str):
    if name not in table:
        raise ValueError(f"unknown {kind} {name!r}; choose one of {sorted(table)}")
    return table[name]


def advantage(name: str) -> Advantage:
    """The `ADVANTAGES` row `name` (ValueError naming the choices otherwise)."""
    return _lookup(ADVANTAGES, "advantage estimator", name)


def surrogate(name: str) -> Surrogate:
    """The `SURROGATES` row `name` (ValueError naming the choices otherwise)."""
    return _lookup(SURROGATES, "surrogate", name)


def check_hparams(kind: str, name: str, given: Mapping[str, Any], key: str = "hparams") -> list[str]:
    """Problems with the hyperparameters `given` (at config key `key`) to row `name` of kind
    "advantage" or "surrogate": one line per name the row does not take, naming the ones it does."""
    known = (advantage(name) if kind == "advantage" else surrogate(name)).hparams
    return [f"{key}.{h}: the {name!r} {kind} has no such hyperparameter; its hyperparameters are "
            f"{', '.join(sorted(known)) or 'none'}" for h in given if h not in known]


def compute_advantages(name: str, inputs: AdvantageInputs, **hparams):
    """Row `name`'s (advantages, returns or None) of `inputs`, with `hparams` over its defaults."""
    return advantage(name).fn(inputs, **hparams)


def surrogate_loss(name: str, logp, old_logp, advantages, mask, **kwargs):
    """Row `name`'s (loss, metrics); kwargs are its hyperparameters and `AGGREGATION_KEYWORDS`."""
    return surrogate(name).fn(logp, old_logp, advantages, mask, **kwargs)
