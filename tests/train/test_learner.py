"""The jitted learner: what it computes (the objective against `grpo_loss` on full logits, PPO's
KL-shaped GAE against a float64 NumPy reference), and that its plans agree: the one update of a
rollout from its own forward pass equals the update after a separate old pass; micro-batches equal
one batch in every aggregation mode; the scanned epochs x minibatches equal a Python loop of
updates; masked tokens get exactly zero gradient; critics (shared trunk or separate) learn."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rljax import losses, models
from rljax.train.config import KLConfig, RLConfig
from rljax.train.learner import Learner
from rljax.train.networks import Forward, Networks, state_values
from rljax.train import steps
from rljax.train.state import TrainState
from rljax.train.trajectories import TrajectoryBatch

CFG = models.get_config("tiny", d_model=32, n_layers=1, n_heads=2, n_kv_heads=1, head_dim=16, mlp_dim=64,
                        vocab_size=64)
P_, G, T, PROMPT = 2, 4, 10, 4  # prompts, group size, tokens, prompt tokens
B = P_ * G
CLOSE = dict(rtol=1e-5, atol=1e-6)


def _rollout(seed=0, sampler_shift=0.0) -> TrajectoryBatch:
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, CFG.vocab_size, (B, T)).astype(np.int32)
    lengths = rng.integers(1, T - PROMPT + 1, B)  # completion lengths differ per row
    attention = np.arange(T)[None] < (PROMPT + lengths)[:, None]
    attention[1, :2] = False  # a left-padded prompt
    loss_mask = attention & (np.arange(T)[None] >= PROMPT)
    sampler_logp = rng.normal(-4.0, 0.3, (B, T)) + sampler_shift
    return TrajectoryBatch.from_rows(tokens, attention, loss_mask, sampler_logp, rng.normal(size=B), G, 0)


def _rl(**kwargs) -> RLConfig:
    return RLConfig(**{"prompts_per_step": P_, "group_size": G, **kwargs})


def _learner(rl: RLConfig, cfg=CFG, critic_cfg=None, optimizer=None, old_pass=None) -> Learner:
    learner = Learner(Networks(cfg, critic_cfg), rl, optimizer or optax.adam(1e-2), norm_len=T - PROMPT)
    if old_pass is None:
        return learner
    # The same learner with its plan forced, to compare the two paths.
    forced = type("Forced", (Learner,), {"old_pass": property(lambda self: old_pass)})
    return forced(learner.networks, rl, learner.optimizer, learner.norm_len)


def _state(learner: Learner, seed=1, critic_params=None) -> TrainState:
    nets = learner.networks
    params = models.init(nets.cfg, jax.random.PRNGKey(seed))
    reference = models.init(nets.cfg, jax.random.PRNGKey(seed + 10)) if learner.rl.kl.active else None
    return nets.init_state(learner.optimizer, jax.random.PRNGKey(0), params, critic_params, reference)


def _learn(learner, state, batch, key=3):
    return jax.jit(learner.learn)(state, batch, jax.random.PRNGKey(key))


def _assert_trees_close(a, b, **tol):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, **(tol or CLOSE)), a, b)


GRPO_KL = dict(advantage="grpo", surrogate="ppo", surrogate_hparams={"clip_eps": 0.2, "clip_eps_high": 0.3},
               kl=KLConfig(placement="loss", estimator="k3", coef=0.05))
PPO_KL = dict(advantage="gae", surrogate="ppo", agg="token-mean", advantage_hparams={"lam": 0.9},
              kl=KLConfig(placement="reward", estimator="k1", coef=0.1))


@pytest.mark.parametrize("kind", ["grpo", "ppo"])
def test_one_update_from_its_own_pass_equals_one_after_an_old_pass(kind):
    cfg = CFG.replace(value_head=kind == "ppo")
    rl = _rl(**(GRPO_KL if kind == "grpo" else PPO_KL))
    in_step, separate = _learner(rl, cfg), _learner(rl, cfg, old_pass=True)
    assert not in_step.old_pass and in_step.advantages_in_step == (kind == "ppo")
    batch = _rollout(sampler_shift=0.25)
    (s_in, m_in), (s_sep, m_sep) = (_learn(learner, _state(learner), batch) for learner in (in_step, separate))
    _assert_trees_close(s_in.params, s_sep.params, rtol=1e-4, atol=1e-5)
    for k in ("mismatch/kl", "mismatch/max_abs", "loss", "kl", "clipfrac_low", "ratio_max", "grad_norm"):
        np.testing.assert_allclose(m_in[k], m_sep[k], rtol=1e-5, atol=1e-6, err_msg=k)
    assert float(m_in["kl"]) > 0 and float(m_in["mismatch/kl"]) > 0


def test_the_objective_is_grpo_loss_on_the_policys_full_logits():
    learner = _learner(_rl(**GRPO_KL, agg="seq-mean-token-mean"))
    state, batch = _state(learner), _rollout()
    rng = np.random.default_rng(5)
    old = np.where(batch.loss_mask, rng.normal(-4.0, 0.3, (B, T)), 0.0).astype(np.float32)
    ref = np.where(batch.loss_mask, rng.normal(-4.0, 0.3, (B, T)), 0.0).astype(np.float32)
    prepared, _ = learner.prepare(batch, jnp.asarray(old), jnp.zeros((B, T)), jnp.asarray(ref))
    counts = losses.global_counts(batch.loss_mask)
    loss, metrics = learner.objective(learner._forward(state.params, state.frozen, batch), prepared, counts)

    logits, _ = models.apply(CFG, state.params["policy"], batch.tokens, mask=batch.attention_mask)
    logp = models.next_token_logprobs(logits, batch.tokens)
    want, want_metrics = losses.grpo_loss(logp, old, ref, prepared.advantages, batch.loss_mask, clip_eps=0.2,
                                          clip_eps_high=0.3, beta=0.05, kl="k3", agg="seq-mean-token-mean",
                                          **counts)
    np.testing.assert_allclose(loss, want, rtol=1e-5)
    np.testing.assert_allclose(metrics["clipfrac_high"], want_metrics["clipfrac_high"], rtol=1e-6)
    # The advantages are GRPO's of the rollout's rewards, per sequence.
    r = np.asarray(batch.rewards, np.float64).reshape(P_, G)
    np.testing.assert_allclose(prepared.advantages, ((r - r.mean(1, keepdims=True)) /
                                                     (r.std(1, ddof=1, keepdims=True) + 1e-6)).reshape(-1), rtol=1e-5)


@pytest.mark.parametrize("entropy_coef", [0.0, 0.01], ids=["no-bonus", "entropy-bonus"])
def test_an_update_equals_the_full_logits_update(entropy_coef):
    """The update (fused head over the loss mask, with the entropy) is the update that the plain
    path (full logits, log-softmax and entropy at every position) makes."""
    optimizer = optax.sgd(1.0)
    learner = _learner(_rl(**GRPO_KL, entropy_coef=entropy_coef), optimizer=optimizer)
    state, batch = _state(learner), _rollout()
    rng = np.random.default_rng(3)
    old = jnp.asarray(rng.normal(-4.0, 0.3, (B, T)), jnp.float32) * batch.loss_mask
    ref = learner.networks.reference_logp(state.frozen, batch.tokens, batch.attention_mask, batch.loss_mask)
    prepared, _ = learner.prepare(batch, old, jnp.zeros((B, T)), ref)

    def plain_step(state, b):
        counts = losses.global_counts(b.loss_mask)

        def loss_fn(p, mb):
            logits = models.forward(CFG, p["policy"], mb.tokens, mask=mb.attention_mask).logits
            fwd = Forward(models.next_token_logprobs(logits, mb.tokens), models.next_token_entropy(logits),
                          jnp.zeros((B, T)))
            return learner.objective(fwd, mb, counts)

        loss, metrics, grads = steps.accumulate_gradients(loss_fn, state.params, b, 1)
        return steps.apply_update(state, optimizer, loss, metrics, grads)

    with jax.default_matmul_precision("highest"):
        want, want_metrics = jax.jit(plain_step)(state, prepared)
        got, got_metrics = jax.jit(learner.update)(state, prepared)
    np.testing.assert_allclose(got_metrics["loss"], want_metrics["loss"], rtol=1e-5)
    np.testing.assert_allclose(got_metrics["grad_norm"], want_metrics["grad_norm"], rtol=1e-4)
    np.testing.assert_allclose(got_metrics["entropy"], want_metrics["entropy"], rtol=1e-5)
    _assert_trees_close(got.params, want.params, rtol=1e-4, atol=1e-6)


def _numpy_ppo_advantages(scores, logp, ref_logp, values, mask, beta, gamma, lam):
    """Float64 reference: r_t = −β(log π − log π_ref) + [t = last]·score, GAE over the real
    tokens of each row, whitened over all real tokens (sample variance)."""
    rewards = np.where(mask, -beta * (logp - ref_logp), 0.0)
    adv = np.zeros_like(rewards)
    for b in range(len(scores)):
        real = np.flatnonzero(mask[b])
        rewards[b, real[-1]] += scores[b]
        next_value = next_adv = 0.0
        for t in real[::-1]:
            next_adv = rewards[b, t] + gamma * next_value - values[b, t] + gamma * lam * next_adv
            adv[b, t], next_value = next_adv, values[b, t]
    returns = np.where(mask, adv + values, 0.0)
    real = adv[mask]
    return np.where(mask, (adv - real.mean()) / np.sqrt(real.var(ddof=1) + 1e-8), 0.0), returns


def test_ppo_advantages_match_a_numpy_reference():
    cfg = CFG.replace(value_head=True)
    learner = _learner(_rl(**PPO_KL), cfg)
    state, batch = _state(learner), _rollout()
    old = learner._forward(state.params, state.frozen, batch)
    ref = learner.networks.reference_logp(state.frozen, batch.tokens, batch.attention_mask, batch.loss_mask)
    prepared, metrics = learner.prepare(batch, old.logp, old.values, ref)

    def reference(p):  # log π(tokens[t] | tokens[<t]) from the full logits, and the value head, float64
        out = models.forward(cfg, p, batch.tokens, mask=batch.attention_mask)
        logits, values = np.asarray(out.logits, np.float64), np.asarray(out.values, np.float64)
        top = logits.max(-1, keepdims=True)
        logp = logits - top - np.log(np.exp(logits - top).sum(-1, keepdims=True))
        picked = np.take_along_axis(logp[:, :-1], batch.tokens[:, 1:, None], axis=-1)[..., 0]
        return np.pad(picked, ((0, 0), (1, 0))), np.pad(values[:, :-1], ((0, 0), (1, 0)))

    mask = batch.loss_mask
    logp, values = reference(state.params["policy"])
    ref_logp, _ = reference(state.frozen["reference"])
    np.testing.assert_allclose(np.where(mask, prepared.old_logp, 0), np.where(mask, logp, 0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(float(metrics["kl"]), (logp - ref_logp)[mask].mean(), rtol=1e-4)
    want_adv, want_ret = _numpy_ppo_advantages(np.float64(batch.rewards), logp, ref_logp, values, mask, 0.1, 1.0, 0.9)
    np.testing.assert_allclose(prepared.advantages, want_adv, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(prepared.returns, want_ret, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("old_pass", [False, True], ids=["own-pass", "old-pass"])
@pytest.mark.parametrize("agg", losses.AGG_MODES)
def test_micro_batches_give_the_update_of_one_batch(agg, old_pass):
    rl = _rl(**GRPO_KL, agg=agg)
    results = [_learn(learner, _state(learner), _rollout())
               for learner in (_learner(rl, optimizer=optax.sgd(1.0), old_pass=old_pass),
                               _learner(dataclasses.replace(rl, micro_batches=4), optimizer=optax.sgd(1.0),
                                        old_pass=old_pass))]
    (full, m_full), (acc, m_acc) = results
    np.testing.assert_allclose(m_acc["loss"], m_full["loss"], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(m_acc["grad_norm"], m_full["grad_norm"], rtol=1e-4)
    _assert_trees_close(acc.params, full.params, rtol=1e-4, atol=1e-6)


def test_micro_batches_must_divide_the_batch():
    learner = _learner(_rl(**GRPO_KL, micro_batches=3, epochs=2))
    with pytest.raises(ValueError, match="not divisible by micro_batches=3"):
        learner.learn(_state(learner), _rollout(), jax.random.PRNGKey(0))


def test_scanned_epochs_and_minibatches_equal_a_loop_of_updates():
    rl = _rl(**GRPO_KL, epochs=2, minibatches=2)
    learner = _learner(rl)
    state, batch, key = _state(learner), _rollout(), jax.random.PRNGKey(3)
    scanned, metrics = _learn(learner, state, batch)
    assert metrics["nonfinite"].shape == (4,) and int(scanned.step) == 4

    old = learner._forward(state.params, state.frozen, batch)
    ref = learner.networks.reference_logp(state.frozen, batch.tokens, batch.attention_mask, batch.loss_mask)
    prepared, _ = learner.prepare(batch, old.logp, old.values, ref)
    looped = state
    for epoch_key in jax.random.split(key, rl.epochs):
        order = np.asarray(jax.random.permutation(epoch_key, B))
        for part in np.split(order, rl.minibatches):
            looped, _ = jax.jit(learner.update)(looped, jax.tree.map(lambda x: x[part], prepared))
    _assert_trees_close(scanned.params, looped.params, rtol=1e-5, atol=1e-6)


def test_tokens_off_the_loss_mask_get_exactly_zero_gradient():
    cfg = CFG.replace(value_head=True)
    learner = _learner(_rl(**PPO_KL, entropy_coef=0.01), cfg)
    state, batch = _state(learner), _rollout()
    old = learner._forward(state.params, state.frozen, batch)
    prepared, _ = learner.prepare(batch, old.logp, old.values, jnp.zeros((B, T)))
    counts = losses.global_counts(batch.loss_mask)
    huge = jnp.where(batch.loss_mask, 0.0, 1e6)  # garbage off the mask must not leak in

    def loss(logp, entropy, values):
        fwd = Forward(logp + huge, entropy + huge, values + huge)
        return learner.objective(fwd, prepared, counts)[0]

    grads = jax.grad(loss, argnums=(0, 1, 2))(old.logp, old.entropy, old.values)
    for g in grads:
        assert np.all(np.asarray(g)[~batch.loss_mask] == 0.0)
        assert np.any(np.asarray(g)[batch.loss_mask] != 0.0)


@pytest.mark.parametrize("separate_critic", [False, True], ids=["shared-trunk", "separate-critic"])
def test_critics_learn_and_read_the_state_before_each_token(separate_critic):
    cfg = CFG.replace(value_head=not separate_critic)
    critic_cfg = CFG.replace(value_head=True, lm_head=False) if separate_critic else None
    critic = models.init(critic_cfg, jax.random.PRNGKey(2)) if separate_critic else None
    learner = _learner(_rl(advantage="gae", surrogate="ppo", agg="token-mean", value_clip=None), cfg, critic_cfg)
    state, batch = _state(learner, critic_params=critic), _rollout()
    value_losses = []
    for i in range(5):
        state, metrics = _learn(learner, state, batch, key=i)
        value_losses.append(float(metrics["value_loss"]))
    assert value_losses[-1] < value_losses[0]
    # Values are those of the state before each token: V(tokens[<t]), the value head at t - 1.
    fwd = learner._forward(state.params, state.frozen, batch)
    raw = models.forward(critic_cfg or cfg, state.params["critic" if separate_critic else "policy"], batch.tokens,
                         mask=batch.attention_mask).values
    np.testing.assert_allclose(fwd.values, jnp.where(batch.loss_mask, state_values(raw), 0.0), rtol=1e-6)


def test_a_critic_is_required_where_the_advantage_reads_one():
    with pytest.raises(ValueError, match="needs a critic"):
        _learner(_rl(advantage="gae"))


def test_a_stale_batch_is_measured_and_sampler_logprobs_can_be_pi_old():
    rl = _rl(advantage="grpo", surrogate="ppo", old_logp="sampler", epochs=2)
    learner = _learner(rl)
    batch = _rollout(sampler_shift=-2.0)  # the sampler's log-probs about 2 nats below the trainer's
    stale = batch.replace(policy_version=batch.policy_version - 3)
    _, metrics = _learn(learner, _state(learner), stale)
    np.testing.assert_allclose(metrics["staleness"], 3.0)
    assert float(metrics["ratio_mean"]) > 2.0  # π_old is the sampler's: ratios near e² on average


def test_with_lora_only_the_adapters_learn_and_the_base_is_the_reference():
    from rljax.models import lora

    cfg = lora.with_lora(CFG, rank=4)
    learner = _learner(_rl(**GRPO_KL), cfg)
    base = models.init(CFG, jax.random.PRNGKey(1))
    policy = {**base, models.ADAPTERS: lora.init_adapters(cfg, jax.random.PRNGKey(2))}
    state = learner.networks.init_state(learner.optimizer, jax.random.PRNGKey(0), policy)
    assert set(state.params) == {"policy"} and set(state.frozen) == {"base"}
    # Gradients and optimiser state exist for the adapters only.
    mu = state.opt_state[0].mu
    assert jax.tree.structure(mu) == jax.tree.structure({"policy": policy[models.ADAPTERS]})
    nbytes = lambda tree: sum(x.nbytes for x in jax.tree.leaves(tree))  # noqa: E731
    assert nbytes(state.opt_state[0].mu) == nbytes(state.opt_state[0].nu) == nbytes(policy[models.ADAPTERS])
    before = jax.tree.map(np.array, state)
    after, metrics = _learn(learner, state, _rollout())
    assert float(metrics["kl"]) == 0.0  # at step 0 the adapted policy is the reference, exactly
    jax.tree.map(np.testing.assert_array_equal, after.frozen, before.frozen)  # the base never moves
    moved = jax.tree.leaves(jax.tree.map(lambda a, b: bool(np.any(a != b)), after.params, before.params))
    assert any(moved)
    np.testing.assert_array_equal(before.params["policy"]["layers_0"]["attn"]["q"]["b"], 0.0)
