"""The testbed: prompts with verifiable rewards, a policy, a reference and a stale copy of it.

Each prompt x has a verifier (a deterministic function of the response, as in RL from
verifiable rewards) and a scale: R(x, y) = scale_x · verifier_x(y). The default prompts are
chosen so that, under the initial policy, their reward distributions differ in mean and by more
than an order of magnitude in standard deviation: that heterogeneity is what separates GRPO's
per-prompt std normalisation from the gradient of the expected reward.

Tokens: 0 is EOS (".") and 1, 2, 3 are "a", "b", "c". Verifiers see only real tokens.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from rljax import losses
from rljax.estimators.policies import Policy, perturb, tabular_policy, transformer_policy
from rljax.estimators.sequences import EOS, enumerate_responses, response_mask

A, B, C = 1, 2, 3


def count_a(tokens, mask):
    """Number of "a" tokens: a graded count reward."""
    return jnp.sum((tokens == A) & mask, axis=-1).astype(jnp.float32)


def has_ab(tokens, mask):
    """1 if the response contains "a b" (adjacent): a pattern reward."""
    pair = (tokens[:, :-1] == A) & (tokens[:, 1:] == B) & mask[:, 1:]
    return jnp.any(pair, axis=-1).astype(jnp.float32)


def exact_cab(tokens, mask):
    """1 for exactly the answer "c a b ." and 0 otherwise: a rare exact-match reward."""
    target = jnp.asarray(([C, A, B] + [EOS] * tokens.shape[-1])[: tokens.shape[-1]], jnp.int32)
    return jnp.all(jnp.where(mask, tokens, EOS) == target, axis=-1).astype(jnp.float32)


def length(tokens, mask):
    """Number of non-EOS tokens: a verbosity reward (it correlates with length by design)."""
    return jnp.sum((tokens != EOS) & mask, axis=-1).astype(jnp.float32)


def terminated(tokens, mask):
    """1 if the response ends with EOS within L tokens: a format reward."""
    return jnp.any((tokens == EOS) & mask, axis=-1).astype(jnp.float32)


VERIFIERS = {"count_a": count_a, "has_ab": has_ab, "exact_cab": exact_cab, "length": length,
             "terminated": terminated}

# One task per prompt: R(x, y) = Σ_k scale_k · verifier_k(y) over the task's (verifier, scale)
# terms. Under the default tabular initial policy the reward standard deviations span ~30x:
# prompts 2 and 3 have much lower variance than prompts 0 and 1.
DEFAULT_TASKS = (
    (("count_a", 1.0), ("terminated", 1.0)),  # graded count plus a format reward
    (("has_ab", 2.0),),  # a pattern, all or nothing
    (("exact_cab", 1.0), ("terminated", 0.1)),  # a rare exact match plus a small format reward
    (("length", 0.05),),  # a small verbosity reward
)


def verifiable_reward(prompts, tokens, mask, tasks=DEFAULT_TASKS):
    """R(x, y) = Σ_k scale_k · verifier_k(y) over the terms of prompt x's task, for prompts
    [B], tokens [B, L], mask [B, L] -> [B]."""
    per_task = [sum(scale * VERIFIERS[name](tokens, mask) for name, scale in task) for task in tasks]
    return jnp.take_along_axis(jnp.stack(per_task, axis=-1), prompts[:, None], axis=-1)[:, 0]


class Batch(NamedTuple):
    """Responses with their prompts: prompts [B], tokens [B, L], mask [B, L]. A sampled batch
    holds G responses per prompt, prompt i in rows i·G … i·G+G−1 (as `generate` orders them)."""

    prompts: jax.Array
    tokens: jax.Array
    mask: jax.Array


@dataclasses.dataclass(frozen=True, eq=False)
class Testbed:
    """A policy over the enumerable responses to a few prompts, with its reward, the reference
    policy π_ref and a stale sampler π_old (perturbed copies of the initial parameters).

    The methods are pure functions of `params`, usable under jit, vmap and grad.
    """

    policy: Policy
    tasks: tuple
    responses: Batch  # every response, prompts unset (0): tokens [N, L], mask [N, L]
    params: Any  # θ: where gradients are taken
    ref_params: Any  # π_ref
    old_params: Any  # π_old, the stale sampler of the off-policy estimators

    @property
    def num_prompts(self):
        return self.policy.num_prompts

    @property
    def max_len(self):
        return self.policy.max_len

    def reward(self, prompts, tokens, mask):
        """R(x, y), [B]."""
        return verifiable_reward(prompts, tokens, mask, self.tasks)

    def token_logprobs(self, params, prompts, tokens):
        """log π(y_t | x, y_<t) of every token, [B, L] (padding included; mask it downstream).

        The value of `losses.token_logprobs`, computed directly: its chunking (lax.map under
        jax.checkpoint) saves memory at V ≈ 150k, and at V = 4 only adds compile time (1.7x
        for the study's programs).
        """
        logits = self.policy.logits(params, prompts, tokens)
        return jnp.take_along_axis(jax.nn.log_softmax(logits), tokens[..., None], axis=-1)[..., 0]

    def enumerated(self):
        """Every (prompt, response) pair: a Batch of P·N rows, prompt-major."""
        n = self.responses.tokens.shape[0]
        prompts = jnp.repeat(jnp.arange(self.num_prompts), n)
        tile = lambda x: jnp.tile(x, (self.num_prompts, 1))  # noqa: E731
        return Batch(prompts, tile(self.responses.tokens), tile(self.responses.mask))

    def sequence_logprobs(self, params):
        """log π(y|x) of every response to every prompt, [P, N]; Σ_y π(y|x) = 1 for each x."""
        batch = self.enumerated()
        logp = losses.seq_sum(self.token_logprobs(params, batch.prompts, batch.tokens), batch.mask)
        return logp.reshape(self.num_prompts, -1)

    def rewards(self):
        """R(x, y) of every response to every prompt, [P, N]."""
        return self.reward(*self.enumerated()).reshape(self.num_prompts, -1)

    def sample(self, params, key, group_size):
        """G responses per prompt drawn from π_params(·|x), as a Batch of P·G rows.

        Exact ancestral sampling: a response is drawn from its enumerated probability
        Π_t π(y_t|x, y_<t), the distribution token-by-token sampling produces, by inverting the
        CDF at a uniform draw. Under vmap over keys the enumeration does not depend on the key,
        so it runs once.
        """
        prob = jnp.exp(jax.lax.stop_gradient(self.sequence_logprobs(params)))  # [P, N]
        cdf = jnp.cumsum(prob, axis=-1)
        u = jax.random.uniform(key, (self.num_prompts, group_size, 1)) * cdf[:, None, -1:]
        idx = jnp.sum(cdf[:, None, :] <= u, axis=-1).reshape(-1)  # #{i: cdf_i ≤ u}, in [0, N)
        prompts = jnp.repeat(jnp.arange(self.num_prompts), group_size)
        return Batch(prompts, jnp.asarray(self.responses.tokens)[idx], jnp.asarray(self.responses.mask)[idx])

    def greedy(self, params):
        """The greedy (argmax) response to each prompt, decoded one token at a time: a Batch of
        P rows (ReMax's baseline rollout, L forward passes)."""
        prompts = jnp.arange(self.num_prompts)
        tokens = jnp.zeros((self.num_prompts, self.max_len), jnp.int32)
        for t in range(self.max_len):
            step = jnp.argmax(self.policy.logits(params, prompts, tokens)[:, t], axis=-1)
            tokens = tokens.at[:, t].set(step.astype(jnp.int32))
        mask = response_mask(tokens)
        return Batch(prompts, jnp.where(mask, tokens, EOS), mask)


def make_testbed(
    policy="tabular", key=None, tasks=DEFAULT_TASKS, vocab_size=4, max_len=4, ref_scale=0.5,
    stale_scale=0.15, **policy_kwargs,
):
    """Builds a Testbed: one prompt per entry of `tasks`.

    Args:
      policy: "tabular", "transformer", or a `Policy`.
      key: PRNG key for θ, π_ref and π_old (default PRNGKey(0)).
      tasks: ((verifier name, scale), ...), one per prompt (see `VERIFIERS`).
      vocab_size, max_len: V (token 0 is EOS) and L.
      ref_scale: π_ref = perturb(θ, ref_scale); stale_scale: π_old = perturb(θ, stale_scale).
      policy_kwargs: to `tabular_policy` (init_scale) or `transformer_policy` (config overrides).
    """
    key = jax.random.PRNGKey(0) if key is None else key
    if isinstance(policy, str):
        make = {"tabular": tabular_policy, "transformer": transformer_policy}[policy]
        policy = make(len(tasks), vocab_size, max_len, **policy_kwargs)
    if policy.num_prompts != len(tasks):
        raise ValueError(f"{len(tasks)} tasks for a policy over {policy.num_prompts} prompts")

    @jax.jit
    def init(key):
        k_init, k_ref, k_old = jax.random.split(key, 3)
        params = policy.init(k_init)
        return params, perturb(params, k_ref, ref_scale), perturb(params, k_old, stale_scale)

    params, ref_params, old_params = init(key)
    tokens, mask = enumerate_responses(policy.vocab_size, policy.max_len)
    return Testbed(
        policy=policy,
        tasks=tuple(tasks),
        responses=Batch(None, tokens, mask),
        params=params,
        ref_params=ref_params,
        old_params=old_params,
    )
