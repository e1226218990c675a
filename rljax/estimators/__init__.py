"""Policy-gradient estimators against exact gradients, on a testbed small enough to enumerate.

A tiny autoregressive policy (a tabular softmax or `rljax.models`' tiny transformer) answers a
few prompts with responses of at most L tokens over V tokens (V=4, L=4: 121 responses), each
scored by a verifiable reward. Every expectation over responses is then a finite sum, so

  J(θ) = E_x E_{y~π_θ}[R(x, y)] − β·KL(π_θ‖π_ref)

and its gradient are exact (`exact`), and each estimator (`estimators`, built from
`rljax.losses`) can be measured against ∇J: bias with a confidence bound, variance, cosine and
cost, over many seeds in one vmapped jit (`stats`, `study`).

    from rljax import estimators as E
    bed = E.make_testbed("tabular")                       # or "transformer"
    exact = E.exact_gradients(bed, bed.params, beta=0.0)["objective"]
    grad = E.make_estimator(bed, "grpo")(bed.params, key, 8)   # one estimate, G = 8
    stats = E.measure(E.make_estimator(bed, "grpo"), bed.params, exact, key, 8, n_seeds=1000)

Modules: sequences (the response space), policies (tabular, transformer), testbed (prompts,
rewards, sampling), exact (J and its gradients by enumeration), estimators (Spec, ESTIMATORS,
rollout + gradient_from_rollout = estimate_gradient), stats (bias/variance/cosine), study (all
estimators × group sizes).
"""

from rljax.estimators.estimators import (
    ADVANTAGES,
    ESTIMATORS,
    KL_MODES,
    SURROGATES,
    Rollout,
    Spec,
    cost,
    estimate_gradient,
    gradient_from_rollout,
    kl_loss,
    make_estimator,
    resolve,
    rollout,
    sequence_rewards,
)
from rljax.estimators.exact import exact_gradients, expected_gradient, flatten, objective_terms
from rljax.estimators.policies import Policy, perturb, tabular_policy, transformer_policy
from rljax.estimators.sequences import EOS, enumerate_responses, response_mask
from rljax.estimators.stats import measure, sample_estimates, summarize
from rljax.estimators.study import PANELS, evaluate, kl_loss_table
from rljax.estimators.testbed import DEFAULT_TASKS, VERIFIERS, Batch, Testbed, make_testbed, verifiable_reward

__all__ = [
    "ADVANTAGES",
    "Batch",
    "DEFAULT_TASKS",
    "EOS",
    "ESTIMATORS",
    "KL_MODES",
    "PANELS",
    "Policy",
    "Rollout",
    "SURROGATES",
    "Spec",
    "Testbed",
    "VERIFIERS",
    "cost",
    "enumerate_responses",
    "estimate_gradient",
    "evaluate",
    "exact_gradients",
    "expected_gradient",
    "flatten",
    "gradient_from_rollout",
    "kl_loss",
    "kl_loss_table",
    "make_estimator",
    "make_testbed",
    "measure",
    "objective_terms",
    "perturb",
    "resolve",
    "response_mask",
    "rollout",
    "sample_estimates",
    "sequence_rewards",
    "summarize",
    "tabular_policy",
    "transformer_policy",
    "verifiable_reward",
]
