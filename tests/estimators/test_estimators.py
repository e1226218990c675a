"""Known facts about policy-gradient estimators, checked against exact gradients by enumeration.

Monte Carlo checks use fixed keys and a 99% bound on the error of a mean of n estimates,
2.576·sqrt(tr Cov/n) (`rljax.estimators.stats`); a check that the bias is zero passes when the
bias is below the bound, a check that it is not when it is far above it. Exact checks (no
sampling) compute an estimator's expected gradient as a finite sum over every response.
"""

import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rljax import losses
from rljax.losses import registry
from rljax import estimators as E
from rljax.estimators import estimators as est

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
G, N_SEEDS = 4, 1000


def _estimates(bed, specs, beta, group_size=G, n_seeds=N_SEEDS, seed=1):
    """{name: [n, D]} for every spec, in one jit (fixed keys)."""
    estimators = {name: est.make_estimator(bed, spec, beta) for name, spec in specs.items()}
    keys = jax.random.split(jax.random.key(seed), n_seeds)
    return jax.jit(lambda params, keys: E.sample_estimates(estimators, params, keys, group_size))(bed.params, keys)


@pytest.fixture(scope="module")
def bed():
    return E.make_testbed("tabular")


@pytest.fixture(scope="module")
def exact(bed):
    return E.exact_gradients(bed, bed.params, 0.0)


@pytest.fixture(scope="module")
def baselines(bed):
    """Reward-only (β = 0) estimates at G = 4 from the baseline family, with common keys."""
    names = ("reinforce", "batch_mean", "rloo", "grpo", "dr_grpo", "remax")
    return _estimates(bed, {n: n for n in names}, beta=0.0)


def _rel(a, b):
    return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


# ------------------------------------------------------------------------------ testbed


def test_responses_and_sampling_follow_the_policy(bed):
    tokens, mask = E.enumerate_responses(4, 4)
    assert tokens.shape == (121, 4) and len({tuple(t[m]) for t, m in zip(tokens, mask)}) == 121
    n = 4000
    prob, batch = jax.jit(lambda p, k: (jnp.exp(bed.sequence_logprobs(p)), bed.sample(p, k, n)))(
        bed.params, jax.random.key(0)
    )
    np.testing.assert_allclose(prob.sum(-1), 1.0, rtol=1e-5)
    index = {tuple(t): i for i, t in enumerate(tokens)}
    rows = np.array([index[tuple(t)] for t in np.asarray(batch.tokens)]).reshape(4, n)
    freq = np.stack([np.bincount(r, minlength=121) / n for r in rows])
    z = np.abs(freq - prob) / np.sqrt(prob * (1 - prob) / n + 1e-12)
    assert z.max() < 5, z.max()


def test_prompts_differ_in_reward_variance(bed):
    """The premise of the GRPO check: reward std under θ spans more than 10x across prompts."""

    @jax.jit
    def reward_std(params):
        prob, rewards = jnp.exp(bed.sequence_logprobs(params)), bed.rewards()
        mean = jnp.sum(prob * rewards, -1, keepdims=True)
        return jnp.sqrt(jnp.sum(prob * (rewards - mean) ** 2, -1))

    std = reward_std(bed.params)
    assert std.max() / std.min() > 10, std


def test_token_logprobs_equal_the_library(bed):
    @jax.jit
    def both(params, key):
        batch = bed.sample(params, key, 8)
        logits = bed.policy.logits(params, batch.prompts, batch.tokens)
        return bed.token_logprobs(params, batch.prompts, batch.tokens), losses.token_logprobs(logits, batch.tokens)

    ours, library = both(bed.params, jax.random.key(1))
    np.testing.assert_allclose(ours, library, rtol=1e-6, atol=1e-6)


def test_exact_gradient_matches_finite_differences():
    """Central differences of J = E[R] − β·KL (and of each term) along random directions, in
    float64: the enumeration and its jax.grad agree to 1e-7."""
    with jax.enable_x64(True):
        bed = E.make_testbed("tabular")
        beta = 0.5
        grads = E.exact_gradients(bed, bed.params, beta)
        flat, unravel = jax.flatten_util.ravel_pytree(bed.params)
        terms = jax.jit(lambda x: E.objective_terms(bed, unravel(x), beta))
        h = 1e-5
        for i in range(3):
            v = jax.random.normal(jax.random.PRNGKey(i), flat.shape, flat.dtype)
            plus, minus = terms(flat + h * v), terms(flat - h * v)
            for name in ("reward", "kl", "objective"):
                fd = (plus[name] - minus[name]) / (2 * h)
                np.testing.assert_allclose(grads[name] @ v, fd, rtol=1e-7, atol=1e-10)


def test_transformer_exact_gradient_and_vmap_over_seeds():
    """The transformer testbed: the exact gradient agrees with finite differences (float32
    logits, so a loose tolerance), and estimates vmapped over keys equal those of a sequential
    loop over the same keys (the study relies on both). One program, to compile once."""
    bed = E.make_testbed("transformer", d_model=16, n_layers=1, n_heads=2, n_kv_heads=1, head_dim=8, mlp_dim=32)
    fn = E.make_estimator(bed, "kl_reward_k1", 0.5)
    h = 1e-2

    @jax.jit
    def check(params, keys):
        grad = E.exact_gradients(bed, params, 0.5)["objective"]
        flat, unravel = jax.flatten_util.ravel_pytree(params)
        v = grad / jnp.linalg.norm(grad)
        objective = lambda x: E.objective_terms(bed, unravel(x), 0.5)["objective"]  # noqa: E731
        fd = (objective(flat + h * v) - objective(flat - h * v)) / (2 * h)
        one = lambda k: fn(params, k, 2)  # noqa: E731
        return jnp.linalg.norm(grad), fd, jax.vmap(one)(keys), jax.lax.map(one, keys)

    norm, fd, batched, looped = check(bed.params, jax.random.split(jax.random.key(0), 2))
    np.testing.assert_allclose(fd, norm, rtol=2e-2)
    np.testing.assert_allclose(batched, looped, rtol=1e-4, atol=1e-6)


# ------------------------------------------------------------------------ baselines


def test_rloo_and_batch_mean_baseline_are_unbiased(bed, exact, baselines):
    """RLOO (Kool et al. 2019) is unbiased for ∇J. A batch-mean baseline includes each sample
    in its own baseline, so E ĝ = (1 − 1/N)·∇J exactly (N = P·G responses): unbiased in
    direction, and unbiased for the rescaled gradient."""
    rloo = E.summarize(baselines["rloo"], exact["reward"])
    assert rloo["bias"] < rloo["bias_bound"], rloo
    n = bed.num_prompts * G
    mean = E.summarize(baselines["batch_mean"], (1 - 1 / n) * exact["reward"])
    assert mean["bias"] < mean["bias_bound"], mean
    raw = E.summarize(baselines["batch_mean"], exact["reward"])
    assert raw["direction_bias"] < raw["direction_bound"], raw


def test_grpo_std_normalisation_is_biased_and_dr_grpo_is_not(bed, exact, baselines):
    """GRPO (Shao et al. 2024) divides each prompt's advantages by that prompt's reward std,
    reweighting prompts by 1/σ_x: with σ_x spanning >10x, E ĝ points elsewhere than ∇J. Dr. GRPO
    (Liu et al. 2025) drops the std and sums tokens over a constant L, so E ĝ = (G−1)/(G·L)·∇J:
    a constant rescaling, no direction bias."""
    grpo = E.summarize(baselines["grpo"], exact["reward"])
    assert grpo["direction_bias"] > 5 * grpo["direction_bound"], grpo
    assert grpo["cosine_of_mean"] < 0.9, grpo
    dr = E.summarize(baselines["dr_grpo"], (G - 1) / (G * bed.max_len) * exact["reward"])
    assert dr["bias"] < dr["bias_bound"], dr
    # Per sample, Dr. GRPO is RLOO times (G−1)/(G·L): the same estimator up to a constant.
    np.testing.assert_allclose(
        baselines["dr_grpo"], (G - 1) / (G * bed.max_len) * baselines["rloo"], rtol=1e-4, atol=1e-7
    )


def test_baselines_reduce_variance(baselines):
    """Every baseline lowers the variance of REINFORCE without one (Williams 1992); here the
    prompts' mean rewards differ, so per-prompt baselines (RLOO, ReMax) help more than one
    batch-wide mean."""
    var = {k: float(E.summarize(v, jnp.ones(v.shape[1]))["variance"]) for k, v in baselines.items()}
    assert var["rloo"] < 0.75 * var["reinforce"], var
    assert var["remax"] < 0.75 * var["reinforce"], var
    assert var["batch_mean"] < 0.9 * var["reinforce"], var
    assert var["rloo"] < var["batch_mean"], var


# ------------------------------------------------------------------------------- KL


def _kl_loss_expectation(bed, params, kind, agg):
    def per_response(logp, ref_logp, mask):
        return jax.vmap(lambda a, b, m: est.kl_loss(a[None], b[None], m[None], kind, agg))(logp, ref_logp, mask)

    return E.expected_gradient(bed, params, per_response)


def _per_token_kl_gradient(bed, params, reverse=False):
    """Σ_t E_{y<t ~ π}[∇_θ KL_t], KL_t = KL(π(·|x,y<t) ‖ π_ref(·|x,y<t)) (reverse: KL(π_ref ‖ π)),
    with the prefix distribution held fixed: the "partial gradient" of Tang & Munos 2025."""
    batch = bed.enumerated()
    weights = jax.lax.stop_gradient(jnp.exp(bed.sequence_logprobs(params))).reshape(-1) / bed.num_prompts
    ref = jax.nn.log_softmax(bed.policy.logits(bed.ref_params, batch.prompts, batch.tokens))

    def loss(p):
        logp = jax.nn.log_softmax(bed.policy.logits(p, batch.prompts, batch.tokens))
        a, b = (ref, logp) if reverse else (logp, ref)
        kl_t = jnp.sum(jnp.exp(a) * (a - b), axis=-1)
        return jnp.sum(weights * losses.seq_sum(kl_t, batch.mask))

    return E.flatten(jax.grad(loss)(params))


def test_kl_in_the_loss_exact_expectations(bed):
    """Exactly, by enumeration, on-policy:
    - k1 in the loss, summed over tokens: E∇ = E[∇log π(y)] = 0;
    - k2 of the sequence log-ratio D = Σ_t d_t, ½D² averaged over responses: E∇ = E[D·∇log π(y)]
      = ∇KL(π‖π_ref), exactly;
    - k2 per token, summed over tokens (seq-mean-token-sum): E∇ = Σ_t E[d_t ∇log π_t], which
      drops the cross terms E[d_s ∇log π_t], s > t: the gradient of the per-token KLs with the
      prefix distribution held fixed, not ∇KL (Tang & Munos 2025);
    - k3 per token: likewise the per-token gradient of the reverse KL(π_ref‖π);
    - k1 under seq-mean-token-mean: weights ∇log π(y) by 1/|y|, so E∇ = ∇E[1/|y|] ≠ 0."""

    @jax.jit
    def grads(params):
        kinds = ("k1", "k2", "k3", "seq-k2")
        sums = {kind: _kl_loss_expectation(bed, params, kind, "seq-mean-token-sum") for kind in kinds}
        return {
            "kl": E.exact_gradients(bed, params, 0.0)["kl"],
            "per_token": _per_token_kl_gradient(bed, params),
            "per_token_reverse": _per_token_kl_gradient(bed, params, reverse=True),
            "k1_token_mean": _kl_loss_expectation(bed, params, "k1", "seq-mean-token-mean"),
            **sums,
        }

    g = grads(bed.params)
    scale = float(jnp.linalg.norm(g["kl"]))
    assert float(jnp.linalg.norm(g["k1"])) < 1e-5 * scale
    assert _rel(g["seq-k2"], g["kl"]) < 1e-5
    assert _rel(g["k2"], g["kl"]) > 0.2
    assert _rel(g["k2"], g["per_token"]) < 1e-5
    assert _rel(g["k3"], g["per_token_reverse"]) < 1e-5
    assert float(jnp.linalg.norm(g["k1_token_mean"])) > 0.5 * scale


def test_kl_in_the_loss_monte_carlo():
    """The same facts from samples: with R ≡ 0, J = −β·KL; k1 in the loss averages to 0, k2 of
    the sequence log-ratio and the k1 penalty in the reward are unbiased for −β∇KL, per-token k2
    is not."""
    bed = E.make_testbed("tabular", tasks=((("count_a", 0.0),),) * 4)
    beta = 1.0
    target = -beta * E.exact_gradients(bed, bed.params, 0.0)["kl"]
    names = ("kl_loss_k1", "kl_loss_seq_k2", "kl_reward_k1", "kl_loss_k2")
    samples = _estimates(bed, {n: n for n in names}, beta)
    zero = E.summarize(samples["kl_loss_k1"], jnp.zeros_like(target))
    assert zero["bias"] < zero["bias_bound"], zero
    for name in ("kl_loss_seq_k2", "kl_reward_k1"):
        s = E.summarize(samples[name], target)
        assert s["bias"] < s["bias_bound"], (name, s)
    k2 = E.summarize(samples["kl_loss_k2"], target)
    assert k2["bias"] > 3 * k2["bias_bound"], k2


# ------------------------------------------------------------------- composition, study


def test_composed_loss_equals_grpo_loss(bed):
    """PPO surrogate + β·kl_loss(k3) with seq-mean-token-mean is `losses.grpo_loss`."""
    agg = "seq-mean-token-mean"

    @jax.jit
    def both(params, key):
        batch = bed.sample(bed.old_params, key, 4)
        old = bed.token_logprobs(bed.old_params, batch.prompts, batch.tokens)
        ref = bed.token_logprobs(bed.ref_params, batch.prompts, batch.tokens)
        adv = jax.random.normal(key, batch.prompts.shape)

        def composed(p):
            logp = bed.token_logprobs(p, batch.prompts, batch.tokens)
            value, _ = registry.surrogate_loss("ppo", logp, old, adv, batch.mask, agg=agg)
            return value + 0.3 * est.kl_loss(logp, ref, batch.mask, "k3", agg)

        def library(p):
            logp = bed.token_logprobs(p, batch.prompts, batch.tokens)
            return losses.grpo_loss(logp, old, ref, adv, batch.mask, beta=0.3, kl="k3", agg=agg)[0]

        return [(f(params), E.flatten(jax.grad(f)(params))) for f in (composed, library)]

    (value, grad), (ref_value, ref_grad) = both(bed.params, jax.random.key(2))
    np.testing.assert_allclose(value, ref_value, rtol=1e-6)
    np.testing.assert_allclose(grad, ref_grad, rtol=1e-5, atol=1e-8)


def test_summarize_bound_covers_unbiased_and_flags_biased():
    """The 99% bound: unbiased Gaussian estimates with a lopsided covariance exceed it in about
    1% of trials (at most ~2.2% whatever the spectrum); a bias of ten noise levels is flagged."""
    d, n, trials = 50, 200, 400
    scales = jnp.linspace(0.1, 3.0, d)
    target = jnp.ones(d)
    noise = jnp.sqrt(jnp.sum(scales**2) / n)

    @jax.jit
    def exceed(keys, shift):
        draw = lambda k: target + shift / jnp.sqrt(d) + scales * jax.random.normal(k, (n, d))  # noqa: E731
        out = jax.vmap(lambda k: E.summarize(draw(k), target))(keys)
        return jnp.mean(out["bias"] > out["bias_bound"])

    keys = jax.random.split(jax.random.key(0), trials)
    assert float(exceed(keys, 0.0)) < 0.03
    assert float(exceed(keys, 10 * noise)) > 0.99


def test_study_config_runs(tmp_path):
    """configs/estimator_study.py parses and the driver runs it at tiny size end to end."""

    def load(name, *path):
        spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, *path))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    config = load("estimator_study", "configs", "estimator_study.py").get_config()
    config.group_sizes = (2,)
    config.panels = ("stale",)
    config.tabular.n_seeds = 16
    config.transformer.enabled = False
    run_study = load("run_study", "experiments", "estimators", "run_study.py")
    results = run_study.run(config)
    files = run_study.write_outputs(results, str(tmp_path))
    rows = results["policies"]["tabular"]["rows"]
    assert {r["estimator"] for r in rows} == set(E.PANELS["stale"])
    assert all(np.isfinite(r["cosine"]) for r in rows)
    # The study's shared rollouts give the numbers of the estimator run on its own keys.
    bed = run_study.build_testbed(config, "tabular")
    alone = E.measure(E.make_estimator(bed, "ppo_clip"), bed.params, E.exact_gradients(bed, bed.params, 0.0)["reward"],
                      jax.random.key(config.seed), 2, 16)
    row = next(r for r in rows if r["estimator"] == "ppo_clip")
    np.testing.assert_allclose([row["bias"], row["cosine"]], [alone["bias"], alone["cosine"]], rtol=1e-5)
    assert (tmp_path / "tables.md").exists() and all((tmp_path / f).exists() for f in files)
