"""An experiment from a config: tokenizer, model, optional SFT warm start, RL, evaluation.

`run(config, workdir)` is what `experiments/train.py` calls. Each stage checkpoints into
`workdir/checkpoints/<stage>` and resumes from there, so rerunning with the same workdir
continues where a run stopped; finished stages are not repeated. The run's devices are
config.mesh (`build_mesh`): on more than one, the params are sharded and the SFT and RL steps,
generation and the log-prob passes are SPMD programs over the mesh (`rljax.train.sharded`).
Outputs in workdir: metrics.jsonl, tensorboard/, curves.png, results.json.

Several processes (`rljax.sharding.initialize_distributed`) run the same `run` with the same
config and workdir, a filesystem they share (orbax writes every process's shards into one
checkpoint). What the host reads (generated tokens to decode and score, metrics) is gathered
whole on every process (`rljax.sharding.to_host`), so all of them take the same steps; process 0
alone writes the outputs above.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from rljax import models, sharding
from rljax.data import tokenizers
from rljax.data.batching import pad_sft
from rljax.data.corpus import tokenizer_corpus
from rljax.data.prompts import chat_messages, plain_prompt, plain_target
from rljax.data.sampler import PromptSampler
from rljax.data.tasks import load_task
from rljax.rewards import task_rewards
from rljax.train.checkpoint import Checkpointer, abstract_like
from rljax.train.config_check import check_config
from rljax.train.faults import NonFiniteGuard, Preempted, Preemption
from rljax.train.metrics import MetricsLogger, plot_curves, read_jsonl, to_python
from rljax.train import preference
from rljax.train import reward_model as reward_model_lib
from rljax.train.optim import make_optimizer
from rljax.train.rl import RLConfig, RLTrainer, evaluate
from rljax.train.sharded import MeshStep
from rljax.train.state import TrainState
from rljax.train.steps import make_sft_step

CURVES = ("sft/loss", "reward_mean", "eval/accuracy", "kl", "entropy", "response_length", "loss", "grad_norm",
          "clipfrac", "generate_tokens_per_s")


def _plain(config) -> dict:
    return config.to_dict() if hasattr(config, "to_dict") else dict(config)


# -- setup ----------------------------------------------------------------------------------------
def build_tokenizer(config, workdir: str):
    """A SentencePiece tokenizer trained on the task corpus (from-scratch models), or the one
    inside the GGUF file of a pretrained model."""
    kind = config.tokenizer.kind
    if kind == "gguf":
        return models.load_gguf_tokenizer(config.model.path or models.gguf.smollm2_gguf_path())
    if kind != "sentencepiece":
        raise ValueError(f"tokenizer.kind={kind!r}: choose 'sentencepiece' or 'gguf'")
    prefix = os.path.join(workdir, "tokenizer")
    if not os.path.exists(prefix + ".model"):
        texts = tokenizer_corpus(config.task.name, "train", data_dir=config.task.data_dir, **config.task.knobs)
        tokenizers.train_sentencepiece(texts, prefix, vocab_size=config.tokenizer.vocab_size)
    return tokenizers.SentencePieceTokenizer(prefix + ".model")


def build_data(config, workdir: str):
    """(tokenizer, train split, test split). On several processes process 0 builds them first
    (`sharding.process_0_first`): it trains the tokenizer into the workdir and prepares the task
    into the data dir, and the others then read those files instead of writing them too."""
    task = config.task

    def build():
        tokenizer = build_tokenizer(config, workdir)
        return (tokenizer, *(load_task(task.name, split, data_dir=task.data_dir, **task.knobs)
                             for split in ("train", "test")))

    return sharding.process_0_first("tokenizer and task", build)


def build_mesh(config) -> Mesh:
    """The run's devices, from config.mesh (`sharding.make_mesh`'s data, fsdp, tensor). All sizes 1,
    the default, is this process's first device alone, whatever the host has: the one-device run
    of before meshes. Any other mesh spans every device of every process."""
    sizes = dict(config.mesh)
    return sharding.one_device_mesh() if set(sizes.values()) == {1} else sharding.make_mesh(**sizes)


def build_model(config, tokenizer, key):
    """(cfg, params): a preset initialised from scratch, or a pretrained GGUF / HF checkpoint."""
    m = config.model
    overrides = dict(m.overrides)
    if m.source == "scratch":
        cfg = models.get_config(m.preset, vocab_size=tokenizer.vocab_size, **overrides)
        return cfg, models.init(cfg, key)
    if m.source == "gguf":
        cfg, params, _ = models.load_gguf(m.path or models.gguf.smollm2_gguf_path(), **overrides)
    elif m.source == "hf":
        cfg, params = models.load_hf(m.path, **overrides)
    else:
        raise ValueError(f"model.source={m.source!r}: choose 'scratch', 'gguf' or 'hf'")
    if cfg.vocab_size < tokenizer.vocab_size:
        raise ValueError(f"the tokenizer has {tokenizer.vocab_size} ids but the model only "
                         f"{cfg.vocab_size}: use the model's own tokenizer (tokenizer.kind='gguf')")
    return cfg, params


def prompt_function(config, tokenizer) -> Callable[[dict], str]:
    if config.task.prompt == "plain":
        return plain_prompt
    if config.task.prompt == "chat":
        fmt = config.task.answer_format

        def chat(example):
            return tokenizer.apply_chat_template(chat_messages(example, fmt), add_generation_prompt=True)

        return chat
    raise ValueError(f"task.prompt={config.task.prompt!r}: choose 'plain' or 'chat'")


def rl_config(config) -> RLConfig:
    known = {f.name for f in dataclasses.fields(RLConfig)}
    given = _plain(config.rl)
    if unknown := sorted(set(given) - known):
        raise ValueError(f"unknown rl keys {unknown}; known: {sorted(known)}")
    return RLConfig(**given)


# -- stages ---------------------------------------------------------------------------------------
class _Stage:
    """Checkpointing and logging shared by the SFT and RL stages.

    Iteration `it` is logged at x = log_offset + it on the run's shared step axis, so the SFT
    and RL curves of one run sit side by side in metrics.jsonl and TensorBoard. A stage that logs
    rows of its own before iteration 0 (the RL stage's evaluation of its starting policy) puts
    them at x >= `first_logged`, so that a stage restarted from scratch drops them with the rest
    of its rows instead of logging them twice. With a `preemption` flag, an iteration that ends
    after SIGTERM saves a checkpoint and raises `Preempted`.
    """

    def __init__(self, name: str, config, workdir: str, total: int, state: TrainState, sampler: PromptSampler,
                 log_offset: int, preemption: Preemption | None = None, first_logged: int | None = None):
        self.name, self.total, self.log_offset, self.preemption = name, total, log_offset, preemption
        self.ckpt = Checkpointer(os.path.join(workdir, "checkpoints", name), save_every=config.checkpoint.every,
                                 keep=config.checkpoint.keep)
        self.start, self.state, self.sampler = 0, state, sampler
        if self.ckpt.latest_step() is not None:
            self.state, meta = self.ckpt.restore(abstract_like(state))
            self.start = meta["iteration"]
            sampler.position = meta["data_position"]
        self.logger = None
        if self.start < total:
            start_step = log_offset + self.start if self.start or first_logged is None else first_logged
            self.logger = MetricsLogger(workdir, total_steps=total, start_step=start_step,
                                        done_steps=self.start, tensorboard=config.log.tensorboard,
                                        progress=config.log.progress, description=name)

    def log(self, it: int, metrics: dict, keys=()):
        self.logger.log(self.log_offset + it, to_python(metrics), progress_keys=keys)

    def end_iteration(self, it: int, state: TrainState):
        self.state = state
        stop = self.preemption is not None and self.preemption.should_stop()
        self.ckpt.maybe_save(it + 1, state, {"iteration": it + 1, "data_position": self.sampler.position},
                             force=stop or it + 1 == self.total)
        if stop:
            self.ckpt.wait()
            raise Preempted(self.name, it + 1, self.ckpt.directory)

    def close(self):
        self.ckpt.close()
        if self.logger is not None:
            self.logger.close()


def run_sft(config, workdir, cfg, params, tokenizer, train_src, key, mesh: Mesh,
            preemption: Preemption | None = None) -> tuple[Any, dict]:
    """Supervised warm start on (prompt, answer + EOS) pairs of the training split, on `mesh`."""
    sft = config.sft
    optimizer = make_optimizer(sft.learning_rate, total_steps=sft.steps, warmup_steps=sft.warmup_steps,
                               decay=sft.lr_decay, final_fraction=sft.lr_final_fraction,
                               weight_decay=sft.weight_decay)
    step = MeshStep(make_sft_step(cfg, optimizer, sft.micro_batches), mesh, models.param_axes(cfg))
    sampler = PromptSampler(train_src, seed=config.seed)
    # The state's own key is split off: the step donates the state, and with it that key's buffer.
    state_key, key = jax.random.split(key)
    state = step.place_state(TrainState.create(params, optimizer, state_key))
    stage = _Stage("sft", config, workdir, sft.steps, state, sampler, 0, preemption)
    guard = NonFiniteGuard(config.faults.max_consecutive_nonfinite)
    length = config.data.max_prompt_tokens + config.data.max_answer_tokens
    t0 = time.perf_counter()
    pending = None  # metrics are fetched one step late, so the host does not wait on the device

    def log_pending():
        nonlocal pending
        (it, metrics), pending = pending, None
        metrics = to_python(metrics)
        guard.observe(metrics["sft/nonfinite"], where=f"SFT step {it}")
        stage.log(it, metrics, keys=("sft/loss",))

    try:
        for it in range(stage.start, sft.steps):
            examples = sampler.next_batch(sft.batch_size)
            prompts = [tokenizer.encode(plain_prompt(e)) for e in examples]
            answers = [tokenizer.encode(plain_target(e)) + [tokenizer.eos_id] for e in examples]
            tokens, mask, loss_mask = pad_sft(prompts, answers, pad_id=tokenizer.pad_id, length=length)
            batch = {"tokens": tokens, "attention_mask": mask, "loss_mask": loss_mask}
            state, metrics = step(stage.state, batch, jax.random.fold_in(key, it))
            if pending is not None:
                log_pending()
            pending = (it, {f"sft/{k}": v for k, v in metrics.items()})
            stage.end_iteration(it, state)
    finally:  # a preempted or failed run still logs the last step it took
        if pending is not None:
            log_pending()
        stage.close()
    return stage.state.params, {"sft_seconds": time.perf_counter() - t0}


def run(config, workdir: str, defaults=None) -> dict:
    """Runs the experiment `config` in `workdir` and returns (and writes) its results.

    The config is checked first (`config_check.check_config`; with `defaults`, the config it was
    derived from, unknown keys and wrong types too). SIGTERM during the run makes the current
    stage save a checkpoint and raise `Preempted`."""
    check_config(config, defaults)
    with Preemption() as preemption:
        return _run(config, workdir, preemption)


def _run(config, workdir: str, preemption: Preemption) -> dict:
    os.makedirs(workdir, exist_ok=True)
    rl = rl_config(config)
    t_start = time.perf_counter()
    key = jax.random.PRNGKey(config.seed)
    k_model, k_sft, k_rl = jax.random.split(key, 3)

    tokenizer, train_src, eval_src = build_data(config, workdir)
    task = config.task
    eval_examples = [eval_src[i] for i in range(min(config.eval.num_examples, len(eval_src)))]
    reward_fns, reward_weights = task_rewards(task.name, task.answer_format)
    cfg, params = build_model(config, tokenizer, k_model)
    mesh = build_mesh(config)
    if mesh.size > 1:  # every process built the same params from the same seed or file
        params = sharding.shard_params(cfg, params, mesh)
    prompt_fn = prompt_function(config, tokenizer)
    results: dict[str, Any] = {"config": _plain(config), "model_params": models.count_params(params)}

    if config.sft.steps > 0:
        params, sft_info = run_sft(config, workdir, cfg, params, tokenizer, train_src, k_sft, mesh, preemption)
        results.update(sft_info)

    # PPO's critic: the policy's value head, or a separate network that starts as a copy of the
    # reward model the preference stage trains (InstructGPT's).
    init_critic = "preference" in config and config.preference.reward_model.init_critic
    critic_cfg = reward_model_lib.value_model_config(cfg) if init_critic else None
    trainer = RLTrainer(rl, cfg, tokenizer, reward_fns, reward_weights, config.data.max_prompt_tokens,
                        critic_cfg=critic_cfg, guard=NonFiniteGuard(config.faults.max_consecutive_nonfinite),
                        mesh=mesh)
    critic_params = None
    evaluate_now = lambda p: evaluate(trainer, p, eval_examples, prompt_fn, config.eval.batch_size)  # noqa: E731
    if "preference" in config:  # offline preference training and/or a learned RL reward (issue 7)
        params, reward_model, preference_info = preference.run_stages(
            config, workdir, cfg, params, tokenizer, train_src, prompt_fn, evaluate_now,
            jax.random.fold_in(key, 3), functools.partial(_Stage, preemption=preemption))
        results.update(preference_info)
        if init_critic:  # config_check made sure that there is a reward model
            critic_params = reward_model_lib.critic_from_reward_model(critic_cfg, reward_model[1])
        if reward_model is not None and config.preference.reward_model.use_in_rl:
            trainer.reward_model = reward_model_lib.reward_function(*reward_model)
    before = evaluate_now(params)
    results["accuracy_before_rl"] = before["eval/accuracy"]
    # The frozen reference is the policy at the start of RL: a copy, since the train step donates
    # (and so invalidates) the buffers of the params it updates.
    ref_params = jax.tree.map(jnp.copy, params)
    sampler = PromptSampler(train_src, seed=config.seed + 1)
    # RL iteration `it` is logged after its update, at x = sft.steps + 1 + it; x = sft.steps holds
    # the evaluation of the starting policy.
    state_key, k_rl = jax.random.split(k_rl)
    stage = _Stage("rl", config, workdir, rl.steps, trainer.init_state(params, state_key, critic_params), sampler,
                   config.sft.steps + 1, preemption, first_logged=config.sft.steps)
    if stage.start == 0 and stage.logger is not None:
        stage.logger.log(config.sft.steps, before, advance=False)
    t_rl = time.perf_counter()
    try:
        for it in range(stage.start, rl.steps):
            state, metrics, sample = trainer.iteration(stage.state, sampler, prompt_fn, ref_params,
                                                       jax.random.fold_in(k_rl, it))
            if config.eval.every and ((it + 1) % config.eval.every == 0 or it + 1 == rl.steps):
                metrics.update(evaluate_now(trainer.policy_params(state)))
            stage.log(it, metrics, keys=("reward_mean", "eval/accuracy", "kl"))
            stage.end_iteration(it, state)
    finally:
        stage.close()
    after = evaluate_now(trainer.policy_params(stage.state))
    results.update({
        "accuracy_after_rl": after["eval/accuracy"],
        "rl_seconds": time.perf_counter() - t_rl,
        "wall_seconds": time.perf_counter() - t_start,
        "eval_examples": len(eval_examples),
    })
    if jax.process_index() == 0:  # the one writer, as of metrics.jsonl (MetricsLogger)
        rows = read_jsonl(os.path.join(workdir, "metrics.jsonl"))
        results["curves"] = plot_curves(rows, os.path.join(workdir, "curves.png"), CURVES,
                                        title=f"{task.name}: {rl.algorithm}/{rl.estimator}")
        with open(os.path.join(workdir, "results.json"), "w") as f:
            json.dump(results, f, indent=2, default=str)
    return results
