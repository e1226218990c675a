"""An experiment from a config: tokenizer, model, SFT warm start, preference stages, RL, evaluation.

`run(config, workdir)` is what `experiments/train.py` calls. The config is checked first
(`rljax.train.config.experiment_config`: every problem at once, one line each), before anything
is built or written. Each stage is a `rljax.train.stage.Stage` (checkpoints in
`workdir/checkpoints/<stage>`, resume, metrics one iteration late), so rerunning with the same
workdir continues where a run stopped and finished stages are not repeated.

Splits: the last `task.validation_size` examples of the task's train split are the validation
split. Evaluations during training (and so any sweep) read it; the test split is read once, at
the end, for the policy before and after RL (`eval.final_test`).

The run's devices are config.mesh (`build_mesh`): on more than one, the params are sharded and
every step, generation and the learner are SPMD programs over the mesh. Several processes
(`rljax.sharding.initialize_distributed`) run the same `run` with the same config and a workdir
they share; what the host reads is gathered whole on every process (`rljax.sharding.to_host`), so
all of them take the same steps, and process 0 alone writes the outputs: metrics.jsonl,
tensorboard/, curves.png, results.json.
"""

from __future__ import annotations

import json
import os
import resource
import time
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from rljax import models, sharding
from rljax.models import lora
from rljax.data import tokenizers
from rljax.data.batching import pad_sft
from rljax.data.corpus import tokenizer_corpus
from rljax.data.preference import load_preferences, unpaired
from rljax.data.prompts import plain_prompt, plain_target, task_messages
from rljax.data.sampler import PromptSampler
from rljax.data.tasks import TASKS, hold_out, load_task
from rljax.rewards import task_rewards
from rljax.train import agentic
from rljax.train import preference as preference_lib
from rljax.train import preflight
from rljax.train import reward_model as reward_model_lib
from rljax.train.config import ExperimentConfig, as_dict, experiment_config
from rljax.train.export import export_policy
from rljax.train.faults import NonFiniteGuard, Preemption
from rljax.train.learner import Learner
from rljax.train.metrics import plot_curves, read_jsonl
from rljax.train.networks import Networks
from rljax.train.pairs import sampled_pairs_file
from rljax.train.rollout import Collector, evaluate
from rljax.train.sharded import MeshStep
from rljax.train.stage import Stage
from rljax.train.state import TrainState
from rljax.train.steps import make_sft_step
from rljax.train.workdir import check_inputs, prepare_workdir

CURVES = ("sft/loss", "reward_mean", "eval/accuracy", "kl", "entropy", "response_length", "loss", "grad_norm",
          "clipfrac_high", "generate_tokens_per_s")


class Splits(NamedTuple):
    train: Sequence
    validation: Sequence
    test: Sequence


# -- set-up ---------------------------------------------------------------------------------------
def build_tokenizer(config: ExperimentConfig, workdir: str):
    """A SentencePiece tokenizer trained on the task corpus (from-scratch models), or the one
    inside the GGUF file of a pretrained model."""
    if config.tokenizer.kind == "gguf":
        return models.load_gguf_tokenizer(config.model.path or models.gguf.smollm2_gguf_path())
    prefix = os.path.join(workdir, "tokenizer")
    if not os.path.exists(prefix + ".model"):
        task = config.task
        if config.env is not None:  # what the model reads and writes: the expert's conversations
            texts = agentic.demonstration_corpus(config.env, load_task(task.name, "train", task.data_dir, **task.knobs))
        else:
            texts = tokenizer_corpus(task.name, "train", data_dir=task.data_dir, **task.knobs)
        tokenizers.train_sentencepiece(texts, prefix, vocab_size=config.tokenizer.vocab_size,
                                       **config.tokenizer.options)
    return tokenizers.SentencePieceTokenizer(prefix + ".model")


def build_data(config: ExperimentConfig, workdir: str) -> tuple[Any, Splits]:
    """(tokenizer, splits). On several processes process 0 builds them first
    (`sharding.process_0_first`): it trains the tokenizer into the workdir and prepares the task
    into the data dir, and the others then read those files instead of writing them too."""

    def build():
        return build_tokenizer(config, workdir), task_splits(config.task)

    return sharding.process_0_first("tokenizer and task", build)


def task_splits(task) -> Splits:
    """The train, validation and test examples of `task` (a `TaskConfig` section): a task that
    draws its own validation split apart from train and test (`HAS_VALIDATION`) gives it;
    otherwise it is the last `task.validation_size` examples of the train split."""
    if TASKS[task.name].HAS_VALIDATION:
        knobs = {**task.knobs, "validation_size": task.validation_size}
        return Splits(*(load_task(task.name, split, data_dir=task.data_dir, **knobs)
                        for split in ("train", "validation", "test")))
    train, test = (load_task(task.name, split, data_dir=task.data_dir, **task.knobs) for split in ("train", "test"))
    return Splits(*hold_out(train, task.validation_size), test)


def build_mesh(config: ExperimentConfig) -> Mesh:
    """The run's devices, from config.mesh (`sharding.make_mesh`'s data, fsdp, tensor). All sizes 1,
    the default, is this process's first device alone, whatever the host has: the one-device run
    of before meshes. Any other mesh spans every device of every process."""
    m = config.mesh
    return sharding.one_device_mesh() if m.one_device else sharding.make_mesh(m.data, m.fsdp, m.tensor)


def build_model(config: ExperimentConfig, tokenizer, key):
    """(cfg, params): a preset initialised from scratch, or a pretrained GGUF / HF checkpoint;
    with `model.lora.rank` > 0, the base (stored in `model.lora.base_dtype`) with fresh adapters
    under `models.ADAPTERS`."""
    m = config.model
    if m.source == "scratch":
        cfg = models.get_config(m.preset, vocab_size=tokenizer.vocab_size, **m.overrides)
        params = models.init(cfg, key)
    elif m.source == "gguf":
        cfg, params, _ = models.load_gguf(m.path or models.gguf.smollm2_gguf_path(), **m.overrides)
    else:
        cfg, params = models.load_hf(m.path, **m.overrides)
    if cfg.vocab_size < tokenizer.vocab_size:
        raise ValueError(f"the tokenizer has {tokenizer.vocab_size} ids but the model only "
                         f"{cfg.vocab_size}: use the model's own tokenizer (tokenizer.kind='gguf')")
    if not m.lora.rank:
        return cfg, params
    if m.lora.base_dtype is not None:
        params = jax.tree.map(lambda x: x.astype(m.lora.base_dtype), params)
        cfg = cfg.replace(param_dtype=m.lora.base_dtype)
    cfg = lora.with_lora(cfg, m.lora.rank, m.lora.alpha, m.lora.targets)
    return cfg, {**params, models.ADAPTERS: lora.init_adapters(cfg, jax.random.fold_in(key, 1))}


def prompt_function(config: ExperimentConfig, tokenizer) -> Callable[[dict], str]:
    """Example -> prompt text: `Q: ... A:` (plain), or the chat template's rendering (with its
    default system prompt) of the question with the answer format's instruction (chat) or of
    the question alone (chat_question), the assistant's turn opened."""
    task = config.task
    if task.prompt == "plain":
        return plain_prompt
    return lambda example: tokenizer.apply_chat_template(
        task_messages(example, task.prompt, task.answer_format), add_generation_prompt=True)


class Context(NamedTuple):
    """What every stage of one run shares."""

    config: ExperimentConfig
    workdir: str
    cfg: models.ModelConfig
    tokenizer: Any
    splits: Splits
    prompt_fn: Callable[[dict], str]
    mesh: Mesh
    preemption: Preemption

    def stage(self, name: str, total: int, state: TrainState, sampler, workdir: str | None = None,
              **kwargs) -> Stage:
        c = self.config
        return Stage(name, workdir or self.workdir, total, state, sampler, checkpoint=c.checkpoint, log=c.log,
                     preemption=self.preemption, **kwargs)

    def guard(self) -> NonFiniteGuard:
        return NonFiniteGuard(self.config.faults.max_consecutive_nonfinite)


class Rollouts(NamedTuple):
    """How a run samples from its policy: collect(params, sampler, key, policy_version) -> (a
    `TrajectoryBatch`, metrics), one RL iteration's; evaluate(params, examples) -> greedy
    evaluation metrics."""

    collect: Callable
    evaluate: Callable


def rollouts(ctx: Context, reward_model: Callable | None = None) -> Rollouts:
    """Multi-turn conversations with the `env` section's environments, or single-turn prompts
    scored by the task's rewards (or by a learned `reward_model`, (tokens, mask) -> [B])."""
    c = ctx.config
    if c.env is not None:
        envs = agentic.EnvCollector(ctx.cfg, ctx.tokenizer, c.env, c.rl, ctx.mesh)
        return Rollouts(lambda params, sampler, key, version: envs.collect(params, sampler, key, version),
                        lambda params, examples: envs.evaluate(params, examples, c.eval.batch_size))
    prompts = Collector(ctx.cfg, ctx.tokenizer, *task_rewards(c.task.name, c.task.answer_format),
                        c.data.max_prompt_tokens, c.rl, reward_model=reward_model, mesh=ctx.mesh)
    return Rollouts(lambda params, sampler, key, version: prompts.collect(params, sampler, ctx.prompt_fn, key, version),
                    lambda params, examples: evaluate(prompts, params, examples, ctx.prompt_fn, c.eval.batch_size))


# -- stages ---------------------------------------------------------------------------------------
def run_sft(ctx: Context, params, key) -> tuple[Any, dict]:
    """Supervised warm start on (prompt, answer + EOS) pairs of the training split."""
    sft, data, tokenizer = ctx.config.sft, ctx.config.data, ctx.tokenizer
    optimizer = sft.optim.make(sft.steps)
    step = MeshStep(make_sft_step(ctx.cfg, optimizer, sft.micro_batches), ctx.mesh, models.param_axes(ctx.cfg))
    sampler = PromptSampler(ctx.splits.train, seed=ctx.config.seed)
    # The state's own key is split off: the step donates the state, and with it that key's buffer.
    state_key, key = jax.random.split(key)
    stage = ctx.stage("sft", sft.steps, step.place_state(TrainState.create(params, optimizer, state_key)), sampler,
                      prefix="sft/")
    length = data.max_prompt_tokens + data.max_answer_tokens

    def batch(examples) -> dict:
        if ctx.config.env is not None:  # multi-turn: imitate the scripted expert's conversations
            return agentic.demonstration_batch(tokenizer, ctx.config.env, examples)
        prompts = [tokenizer.encode(plain_prompt(e)) for e in examples]
        answers = [tokenizer.encode(plain_target(e)) + [tokenizer.eos_id] for e in examples]
        tokens, mask, loss_mask = pad_sft(prompts, answers, pad_id=tokenizer.pad_id, length=length)
        return {"tokens": tokens, "attention_mask": mask, "loss_mask": loss_mask}

    def body(state, it):
        return step(state, batch(sampler.next_batch(sft.batch_size)), jax.random.fold_in(key, it))

    t0 = time.perf_counter()
    state = stage.run(body, guard=ctx.guard(), progress_keys=("sft/loss",))
    return state.params, {"sft_seconds": time.perf_counter() - t0}


def _preference_pairs(ctx: Context, params):
    """The (train, test) preference pairs of `preference.pairs`: sampled from the policy on the
    training prompts (source "task"), or read from a JSONL file."""
    p, task, seed = ctx.config.preference.pairs, ctx.config.task, ctx.config.seed
    path = p.path
    if p.source == "task":
        reward_fns, _ = task_rewards(task.name, task.answer_format)
        examples = PromptSampler(ctx.splits.train, seed=seed).next_batch(min(p.prompts, len(ctx.splits.train)))
        path = sampled_pairs_file(ctx.cfg, params, ctx.tokenizer, examples, seed, data_dir=task.data_dir,
                                  name=task.name, prompt_fn=ctx.prompt_fn, reward_fn=reward_fns["correct"],
                                  samples_per_prompt=p.samples_per_prompt, pairs_per_prompt=p.pairs_per_prompt,
                                  max_new_tokens=p.max_new_tokens, temperature=p.temperature,
                                  prompt_len=ctx.config.data.max_prompt_tokens)
    return tuple(load_preferences(path, split, task.data_dir, test_size=p.test_size, seed=seed)
                 for split in ("train", "test"))


def _curves(workdir: str, title: str) -> str:
    rows = read_jsonl(os.path.join(workdir, "metrics.jsonl"))
    keys = sorted({k for r in rows for k, v in r.items() if k != "step" and isinstance(v, (int, float))})
    return plot_curves(rows, os.path.join(workdir, "curves.png"), keys, title=title)


def run_preference(ctx: Context, params, evaluate_policy: Callable, key) -> tuple[Any, Any, dict]:
    """The stages of `preference` after the SFT warm start: pairs; then the policy's preference
    loss against the frozen SFT policy (`rljax.train.preference`), evaluated on the validation
    split as it goes; then a Bradley-Terry reward model (`rljax.train.reward_model`)
    with held-out pairwise accuracy. Returns (policy params, the reward model as (cfg, params)
    or None, results)."""
    pref, tokenizer, seed = ctx.config.preference, ctx.tokenizer, ctx.config.seed
    t0 = time.perf_counter()
    k_policy, k_rm = jax.random.split(key)
    train_pairs, test_pairs = _preference_pairs(ctx, params)
    results: dict[str, Any] = {"preference_pairs": {"train": len(train_pairs), "test": len(test_pairs)},
                               "preference_pairs_seconds": time.perf_counter() - t0}
    reward_model = None

    if (p := pref.policy).steps > 0:
        optimizer = p.optim.make(p.steps)
        step = MeshStep(preference_lib.make_preference_step(ctx.cfg, optimizer, p.loss, p.micro_batches, **p.hparams),
                        ctx.mesh, models.param_axes(ctx.cfg))
        ref_params = jax.tree.map(jnp.copy, params)  # the step donates the policy's buffers
        kto = p.loss == "kto"
        source = unpaired(train_pairs) if kto else train_pairs
        encode = preference_lib.encode_unpaired if kto else preference_lib.encode_pairs
        sampler = PromptSampler(source, seed=seed + 2)
        state_key, k_policy = jax.random.split(k_policy)
        stage = ctx.stage("preference", p.steps, step.place_state(TrainState.create(params, optimizer, state_key)),
                          sampler, workdir=os.path.join(ctx.workdir, "preference"), prefix=f"{p.loss}/")

        def body(state, it):
            batch = preference_lib.add_reference_logps(ctx.cfg, ref_params, encode(tokenizer, sampler.next_batch(
                p.batch_size)), p.loss)
            return step(state, batch, jax.random.fold_in(k_policy, it))

        params = stage.run(body, guard=ctx.guard(), evaluate=lambda s: evaluate_policy(s.params),
                           eval_every=ctx.config.eval.every, progress_keys=(f"{p.loss}/loss",)).params
        results["preference_curves"] = _curves(os.path.join(ctx.workdir, "preference"), f"{ctx.config.task.name}: "
                                               f"{p.loss}")

    if (r := pref.reward_model).steps > 0:
        rm_cfg, rm_params = reward_model_lib.init_reward_model(ctx.cfg, params, k_rm,
                                                               lm_head=bool(r.hparams.get("sft_coef")))
        optimizer = r.optim.make(r.steps)
        step = MeshStep(reward_model_lib.make_reward_model_step(rm_cfg, optimizer, r.micro_batches, **r.hparams),
                        ctx.mesh, models.param_axes(rm_cfg))
        held_out = [preference_lib.encode_pairs(tokenizer, test_pairs[i:i + r.batch_size])
                    for i in range(0, len(test_pairs), r.batch_size)]

        def accuracy(state):
            return {"eval/pairwise_accuracy": reward_model_lib.pairwise_accuracy(rm_cfg, state.params, held_out)}

        sampler = PromptSampler(train_pairs, seed=seed + 3)
        state_key, k_rm = jax.random.split(k_rm)
        stage = ctx.stage("reward_model", r.steps,
                          step.place_state(TrainState.create(rm_params, optimizer, state_key)), sampler,
                          workdir=os.path.join(ctx.workdir, "reward_model"), prefix="rm/")

        def rm_body(state, it):
            batch = preference_lib.encode_pairs(tokenizer, sampler.next_batch(r.batch_size))
            return step(state, batch, jax.random.fold_in(k_rm, it))

        state = stage.run(rm_body, guard=ctx.guard(), evaluate=accuracy, eval_every=r.eval_every,
                          progress_keys=("rm/loss",))
        results["pairwise_accuracy"] = accuracy(state)["eval/pairwise_accuracy"]
        results["reward_model_curves"] = _curves(os.path.join(ctx.workdir, "reward_model"),
                                                 f"{ctx.config.task.name}: reward model")
        reward_model = (rm_cfg, state.params)
    results["preference_seconds"] = time.perf_counter() - t0
    return params, reward_model, results


def run_rl(ctx: Context, params, evaluate_policy: Callable, key, reward_model=None,
           start_metrics: dict | None = None) -> tuple[Any, dict]:
    """The RL stage: each iteration a rollout (`rljax.train.rollout.Collector`) and one call of
    the jitted learner (`rljax.train.learner.Learner.learn`) through the mesh step.
    `start_metrics`, the evaluation of the starting policy, is logged before iteration 0."""
    config, rl = ctx.config, ctx.config.rl
    rm = config.preference.reward_model if config.preference is not None else None
    critic_cfg = critic_params = None
    if rm is not None and rm.init_critic:  # PPO's critic starts as a copy of the reward model (InstructGPT)
        critic_cfg = reward_model_lib.value_model_config(ctx.cfg)
        critic_params = reward_model_lib.critic_from_reward_model(critic_cfg, reward_model[1])
    networks = Networks(ctx.cfg, critic_cfg)
    optimizer = rl.optim.make(rl.steps * rl.updates_per_rollout)
    turns = config.env.max_turns if config.env is not None else 1
    learner = Learner(networks, rl, optimizer, norm_len=turns * rl.sampling.max_new_tokens)
    # The frozen reference is the policy at the start of RL: a copy, since the learner donates
    # (and so invalidates) the buffers of the params it updates.
    state_key, key = jax.random.split(key)
    copy_reference = rl.kl.active and not networks.adapters  # with LoRA the frozen base is π_ref
    state = networks.init_state(optimizer, state_key, params, critic_params,
                                jax.tree.map(jnp.copy, params) if copy_reference else None)
    step = MeshStep(learner.learn, ctx.mesh, networks.param_axes(), networks.frozen_axes(state.frozen))
    nbytes = lambda tree: sum(x.nbytes for x in jax.tree.leaves(tree))  # noqa: E731
    info = {"trainable_params": models.count_params(state.params), "frozen_params": models.count_params(state.frozen),
            "optimizer_state_bytes": nbytes(state.opt_state)}
    sampler = PromptSampler(ctx.splits.train, seed=config.seed + 1)
    learned = reward_model_lib.reward_function(*reward_model) if rm is not None and rm.use_in_rl else None
    collect = rollouts(ctx, learned).collect
    state = step.place_state(state)
    if ctx.mesh.devices.flat[0].platform in ("gpu", "tpu"):  # the HBM preflight: stop now rather than die at step 1
        preflight.check_rl_memory(step, state, preflight.batch_like(rl, config.data.max_prompt_tokens),
                                  jax.ShapeDtypeStruct((2,), jnp.uint32), ctx.cfg,
                                  networks.generation_params(state.params, state.frozen), ctx.mesh, rl,
                                  config.data.max_prompt_tokens, ctx.tokenizer.eos_ids, ctx.tokenizer.pad_id)
    # Iteration `it` is logged after its update, at x = sft.steps + 1 + it; x = sft.steps holds
    # the evaluation of the starting policy.
    stage = ctx.stage("rl", rl.steps, state, sampler, log_offset=config.sft.steps + 1, first_logged=config.sft.steps)
    if stage.start == 0 and not stage.done:
        stage.log_row(config.sft.steps, start_metrics if start_metrics is not None else evaluate_policy(params))

    def body(state, it):
        key_it = jax.random.fold_in(key, it)
        t0 = time.perf_counter()
        batch, metrics = collect(networks.generation_params(state.params, state.frozen), sampler, key_it,
                                 int(state.step))
        t1 = time.perf_counter()
        state, learn_metrics = step(state, batch, jax.random.fold_in(key_it, 1 << 20))
        jax.block_until_ready(state)  # the iteration's train time, not its dispatch
        t2 = time.perf_counter()
        lengths = batch.loss_mask.sum(axis=1)
        return state, {
            **{k: v for k, v in metrics.items() if k != "sample_completion"}, **learn_metrics,
            "reward_mean": float(batch.rewards.mean()), "reward_std": float(batch.rewards.std()),
            "response_length": float(lengths.mean()),
            "time/generate_s": t1 - t0, "time/train_s": t2 - t1,
            "generate_tokens_per_s": int(lengths.sum()) * metrics["sampling_rounds"] / max(t1 - t0, 1e-9),
            "train_tokens_per_s": rl.epochs * int(batch.attention_mask.sum()) / max(t2 - t1, 1e-9),
        }

    t0 = time.perf_counter()
    state = stage.run(body, guard=ctx.guard(),
                      evaluate=lambda s: evaluate_policy(networks.generation_params(s.params, s.frozen)),
                      eval_every=config.eval.every, progress_keys=("reward_mean", "eval/accuracy", "kl"))
    return networks.policy_params(state.params, state.frozen), {**info, "rl_seconds": time.perf_counter() - t0}


# -- the run --------------------------------------------------------------------------------------
def run(config, workdir: str, on_config_change: str = "stop") -> dict:
    """Runs the experiment `config` (a ConfigDict, dict or `ExperimentConfig`) in `workdir` and
    returns (and writes) its results. First, before anything is built: the config (`ConfigError`),
    the files it names (`InputError`) and the workdir, which remembers the config of the run it
    holds (`WorkdirError`; `on_config_change`: see `rljax.train.workdir`). SIGTERM during the run
    makes the current stage save a checkpoint and raise `Preempted`."""
    if not isinstance(config, ExperimentConfig):
        config = experiment_config(config)
    check_inputs(config)
    sharding.process_0_first("workdir", lambda: prepare_workdir(config, workdir, on_config_change))
    with Preemption() as preemption:
        return _run(config, workdir, preemption)


def _run(config: ExperimentConfig, workdir: str, preemption: Preemption) -> dict:
    t_start = time.perf_counter()
    k_model, k_sft, k_rl = jax.random.split(jax.random.PRNGKey(config.seed), 3)
    tokenizer, splits = build_data(config, workdir)
    cfg, params = build_model(config, tokenizer, k_model)
    mesh = build_mesh(config)
    if mesh.size > 1:  # every process built the same params from the same seed or file
        params = sharding.shard_params(cfg, params, mesh)
    ctx = Context(config, workdir, cfg, tokenizer, splits, prompt_function(config, tokenizer), mesh, preemption)
    results: dict[str, Any] = {"config": as_dict(config), "model_params": models.count_params(params)}

    if config.sft.steps > 0:
        params, info = run_sft(ctx, params, k_sft)
        results.update(info)
    # Greedy evaluation: the validation split during training, the test split once at the end.
    evaluator = rollouts(ctx)

    def evaluate_on(examples):
        return lambda p: evaluator.evaluate(p, examples)

    validate = evaluate_on(splits.validation)
    test = [splits.test[i] for i in range(min(config.eval.num_examples, len(splits.test)))]

    def evaluate_both(p) -> dict:
        """The policy `p` on the validation split, and once on the test split (`eval.final_test`);
        LoRA adapters merged first, so decoding runs at the base's speed."""
        p = lora.merge(cfg, p)
        return {"validation": validate(p)} | ({"test": evaluate_on(test)(p)} if config.eval.final_test else {})

    def record(stage: str, evaluations: dict) -> None:
        for split, metrics in evaluations.items():
            results[f"{'' if split == 'test' else 'validation_'}accuracy_{stage}"] = metrics["eval/accuracy"]

    after_sft = before = evaluate_both(params)
    record("after_sft", after_sft)
    reward_model = None
    if config.preference is not None:
        params, reward_model, info = run_preference(ctx, params, validate, jax.random.fold_in(k_rl, 3))
        results.update(info)
        before = evaluate_both(params)
    after = before
    if config.rl.steps > 0:  # the starting policy is evaluated first: RL donates its buffers
        params, info = run_rl(ctx, params, validate, k_rl, reward_model, start_metrics=before["validation"])
        results.update(info)
        after = evaluate_both(params)
    record("before_rl", before)
    record("after_rl", after)
    if config.export and jax.process_index() == 0:
        results["export"] = export_policy(cfg, params, tokenizer, os.path.join(workdir, "export"),
                                          base_model=config.model.path or "HuggingFaceTB/SmolLM2-135M-Instruct")
    results.update({"wall_seconds": time.perf_counter() - t_start, "validation_examples": len(splits.validation),
                    "test_examples": len(test) if config.eval.final_test else 0,
                    "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024})
    if jax.process_index() == 0:  # the one writer, as of metrics.jsonl (MetricsLogger)
        rows = read_jsonl(os.path.join(workdir, "metrics.jsonl"))
        for key in ("generate_tokens_per_s", "train_tokens_per_s", "time/generate_s", "time/train_s"):
            if values := [r[key] for r in rows if key in r]:
                results[f"median_{key.replace('time/', '')}"] = float(np.median(values))
        rl = config.rl
        results["curves"] = plot_curves(rows, os.path.join(workdir, "curves.png"), CURVES,
                                        title=f"{config.task.name}: {rl.advantage} + {rl.surrogate}")
        with open(os.path.join(workdir, "results.json"), "w") as f:
            json.dump(results, f, indent=2, default=str)
    return results
