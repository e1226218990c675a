"""One GRPO train step (forward, backward, AdamW update) on CPU: rljax vs google-tunix vs TRL.

Shape A: a Qwen3-architecture model with random weights (4 layers, d_model 256, MLP 1024, 4 query
heads x 64, 2 KV heads, vocab 8192, tied embeddings, QK-norm, RoPE base 1e6), float32 everywhere.
Batch: 16 sequences x 128 tokens = 4 prompts x 4 samples, each a 64-token prompt slot (left-padded,
40-64 real tokens, shared within a group) and a 64-token completion slot (16-64 real tokens,
ending in EOS when shorter than 64, right-padded). The loss is GRPO with clip 0.2, beta 0.04 and
the k3 KL estimator against reference log-probs given as inputs, old log-probs given as inputs,
one group-normalised advantage per sequence, mean over sequences of the per-sequence token mean.
The optimiser is AdamW (lr 1e-5, betas 0.9/0.999, eps 1e-8, weight decay 0.01), no clipping.

What each timed region is (one call = one optimiser update on prepared inputs; no generation, no
reference or old-policy forward passes, no data loading):
  rljax  `jax.jit(Learner(...).update, donate_argnums=0)(state, batch)`: the learner's one
          optimiser update on a prepared `PolicyBatch` (what `learn` scans over), blocked on the
          new state and the metrics.
  tunix  the jitted train step of tunix's RL actor trainer (`tunix.rl.trainer.Trainer`, a
          `PeftTrainer`) with the GRPO loss wired exactly as `GRPOLearner.__init__` wires it
          (`function_registry.get_policy_loss_fn("grpo")`), obtained with
          `jit_train_and_eval_step(cache_nnx_graph=True)` as `PeftTrainer.train` does; tunix's own
          Qwen3 (`tunix.models.qwen3.model.Qwen3`). Blocked on the loss and the model's params.
  trl    `GRPOTrainer.training_step` (compute_loss = TRL's GRPO loss, then backward) with
          `_prepare_inputs` (generation and scoring) replaced by the identity, then
          `optimizer.step()`, `lr_scheduler.step()`, `optimizer.zero_grad()`, as the HF Trainer
          loop does; a `transformers` Qwen3ForCausalLM built from `Qwen3Config`, PyTorch CPU.

Each worker runs in a fresh subprocess (tunix with .venv-tunix's python); every framework runs
once per round and rounds interleave the frameworks, so that a change in the machine's load hits
them alike. Steps/s and tokens/s (B*T = 2048 positions per step, padding included; the scored
completion tokens per second are reported too) come from the median of the per-repeat mean step
times pooled over rounds, after a warm-up; the first call's time (tracing and compilation on the
JAX sides) is reported separately. The load average is recorded before and after every worker.

    python experiments/bench_train.py [--repeats 5] [--steps 8] [--rounds 2] [--only rljax,tunix,trl]
                                      [--baseline-rev <git rev>]

--baseline-rev also times rljax as of an older revision (its `rljax/` extracted with git archive),
e.g. the commit before an optimisation of the train step.

Writes experiments/results/bench_train.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import bench_common

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "experiments" / "results" / "bench_train.json"
TUNIX_PYTHON = ROOT / ".venv-tunix" / "bin" / "python"

# Shape A and the batch.
SHAPE = dict(vocab_size=8192, d_model=256, n_layers=4, n_heads=4, n_kv_heads=2, head_dim=64,
             mlp_dim=1024, rope_theta=1e6, norm_eps=1e-6)
B, PROMPT, COMPLETION, GROUP = 16, 64, 64, 4
T = PROMPT + COMPLETION
PAD_ID, EOS_ID = 0, 1
# Optimiser and loss.
LR, B1, B2, EPS, WD = 1e-5, 0.9, 0.999, 1e-8, 0.01
CLIP_EPS, BETA = 0.2, 0.04


# ----------------------------------------------------------------------------- shared inputs

TIMED_REGION = {
    "rljax": "jax.jit(Learner(...).update, donate_argnums=0)(state, batch), blocked on the new state and the "
             "metrics: forward over all 128 positions, log-probs and entropies of the loss-mask tokens (fused LM "
             "head), GRPO loss (PPO surrogate + k3 KL in the loss) and its metrics, backward, grad-norm metric, "
             "AdamW update",
    "tunix": "tunix.rl.trainer.Trainer (the actor PeftTrainer of tunix's RLCluster) jitted train step from "
             "jit_train_and_eval_step(cache_nnx_graph=True) (nnx.jit, optimizer donated), with the registered "
             "'grpo' policy loss wired as GRPOLearner.__init__ wires it; blocked on loss, aux, grad norm and "
             "params: tunix Qwen3 forward over all 128 positions (logits at every position), log-softmax of "
             "the 64 completion positions, GRPO loss with its entropy and diagnostic metrics, backward, grad "
             "norm, nnx.Optimizer AdamW update",
    "trl": "GRPOTrainer.training_step (TRL's compute_loss: Qwen3 backbone over all 128 positions, fused LM "
           "head on the completion tokens only, log-probs and entropy, GRPO loss and metrics; backward) with "
           "_prepare_inputs (generation, scoring) replaced by the identity, then optimizer.step() "
           "(adamw_torch_fused, TRL's default), lr_scheduler.step(), optimizer.zero_grad(); PyTorch eager",
    "rljax_baseline": "the rljax timed region with rljax as of --baseline-rev (a revision with the learner, "
                      "`rljax.train.learner`)",
}
FAIRNESS = [
    "float32 parameters, activations and optimizer state on every side",
    "the same model shape, the same token ids, masks, old/ref log-probs and advantages on every side",
    "AdamW with the same hyperparameters and no gradient clipping on every side",
    "no generation, reference-model or old-policy forward passes in any timed region",
    "JAX sides: one CPU device, XLA's default intra-op thread pool over the machine's cores; "
    "PyTorch: torch.get_num_threads() threads (recorded), the same cores",
    "TRL runs without gradient checkpointing (its default is on) and without torch.compile",
    "tunix's MLP kernels, which it initialises to zeros, are re-initialised to random normals",
    "each framework runs in its own fresh process, once per round, rounds interleaved; the step "
    "time is the median of the per-repeat mean step times pooled over rounds",
]


def make_batch(seed: int = 0, rows: int = B, prompt: int = PROMPT, completion: int = COMPLETION,
               group: int = GROUP, vocab: int = SHAPE["vocab_size"]) -> dict:
    """The prepared GRPO inputs, as NumPy arrays in the prompt/completion layout (tunix's and TRL's).

    prompt_ids/prompt_mask [rows, prompt] (left-padded, 5/8 to all of the slot real, shared
    within a group); completion_ids/completion_mask [rows, completion] (a quarter to all of the
    slot real, right-padded after EOS); old_logp/ref_logp [rows, completion], the log-prob of
    each completion token (0 on padding); advantages [rows], (r - mean_G r) / (std_G r + 1e-6)
    over groups of `group`.
    """
    rng = np.random.default_rng(seed)
    n_groups = rows // group
    prompt_len = np.repeat(rng.integers(prompt * 5 // 8, prompt + 1, n_groups), group)
    prompts = np.repeat(rng.integers(2, vocab, (n_groups, prompt)), group, axis=0)
    prompt_mask = np.arange(prompt)[None, :] >= (prompt - prompt_len)[:, None]
    prompt_ids = np.where(prompt_mask, prompts, PAD_ID)

    completion_len = rng.integers(completion // 4, completion + 1, rows)
    completion_mask = np.arange(completion)[None, :] < completion_len[:, None]
    completion_ids = rng.integers(2, vocab, (rows, completion))
    ends = completion_len < completion
    completion_ids[ends, completion_len[ends] - 1] = EOS_ID
    completion_ids = np.where(completion_mask, completion_ids, PAD_ID)

    # A random-weight model is near uniform: log-probs around -log(vocab) (-9.01 for 8192).
    old_logp = (-np.log(vocab) + 0.3 * rng.standard_normal((rows, completion))).astype(np.float32)
    ref_logp = (old_logp + 0.05 * rng.standard_normal((rows, completion))).astype(np.float32)
    old_logp, ref_logp = old_logp * completion_mask, ref_logp * completion_mask
    rewards = rng.random((n_groups, group))
    adv = (rewards - rewards.mean(1, keepdims=True)) / (rewards.std(1, ddof=1, keepdims=True) + 1e-6)
    return dict(prompt_ids=prompt_ids.astype(np.int32), prompt_mask=prompt_mask,
                completion_ids=completion_ids.astype(np.int32), completion_mask=completion_mask,
                old_logp=old_logp, ref_logp=ref_logp, advantages=adv.reshape(rows).astype(np.float32))


def rljax_batch(nb: dict) -> dict:
    """make_batch's arrays in rljax's layout: [rows, prompt + completion] sequences, the loss
    mask on the real completion tokens, log-probs 0 over the prompt slot."""
    rows, prompt = nb["prompt_ids"].shape
    zeros = np.zeros((rows, prompt), np.float32)
    return dict(
        tokens=np.concatenate([nb["prompt_ids"], nb["completion_ids"]], axis=1),
        attention_mask=np.concatenate([nb["prompt_mask"], nb["completion_mask"]], axis=1),
        loss_mask=np.concatenate([np.zeros((rows, prompt), bool), nb["completion_mask"]], axis=1),
        old_logp=np.concatenate([zeros, nb["old_logp"]], axis=1),
        ref_logp=np.concatenate([zeros, nb["ref_logp"]], axis=1),
        advantages=nb["advantages"])


def time_steps(run_step, repeats: int, steps: int) -> dict:
    """run_step() performs one update and waits for it. First call timed alone (compilation),
    then `steps` warm-up calls, then `repeats` x `steps` timed calls."""
    t0 = time.perf_counter()
    run_step()
    first = time.perf_counter() - t0
    for _ in range(steps):
        run_step()
    per_repeat, all_steps = [], []
    for _ in range(repeats):
        times = []
        for _ in range(steps):
            t0 = time.perf_counter()
            run_step()
            times.append(time.perf_counter() - t0)
        per_repeat.append(sum(times) / len(times))
        all_steps.extend(times)
    step_s = statistics.median(per_repeat)
    return dict(first_call_s=round(first, 3), compile_s=round(max(first - step_s, 0.0), 3),
                step_s_median=step_s, step_s_repeat_means=[round(x, 5) for x in per_repeat],
                step_s_min=min(all_steps), step_s_max=max(all_steps),
                steps_per_s=1.0 / step_s, tokens_per_s=B * T / step_s, repeats=repeats,
                steps_per_repeat=steps)


# ----------------------------------------------------------------------------- workers

def jax_threads() -> dict:
    """What sets a JAX worker's CPU parallelism."""
    import jax

    return dict(jax_cpu_devices=len(jax.devices()), os_cpus=os.cpu_count(),
                xla_flags=os.environ.get("XLA_FLAGS", ""))


def rljax_update(cfg, optimizer):
    """The rljax side's timed update: `Learner.update`, one GRPO optimiser step (PPO surrogate,
    k3 KL in the loss, the loss above) on a prepared batch, jitted with the state donated; and
    `to_batch`, make_batch's arrays (`rljax_batch`) as the `PolicyBatch` it takes."""
    import jax
    import jax.numpy as jnp

    from rljax.train.config import KLConfig, RLConfig
    from rljax.train.learner import Learner, PolicyBatch
    from rljax.train.networks import Networks

    rl = RLConfig(advantage="grpo", surrogate="ppo", surrogate_hparams={"clip_eps": CLIP_EPS},
                  kl=KLConfig(placement="loss", estimator="k3", coef=BETA), agg="seq-mean-token-mean")
    learner = Learner(Networks(cfg), rl, optimizer)

    def to_batch(arrays: dict) -> PolicyBatch:
        zeros = jnp.zeros(arrays["tokens"].shape, jnp.float32)
        return PolicyBatch(tokens=arrays["tokens"], attention_mask=arrays["attention_mask"],
                           loss_mask=arrays["loss_mask"], sampler_logp=arrays["old_logp"],
                           old_logp=arrays["old_logp"], ref_logp=arrays["ref_logp"], advantages=arrays["advantages"],
                           old_values=zeros, returns=zeros)

    return jax.jit(learner.update, donate_argnums=0), to_batch


def worker_rljax(repeats: int, steps: int, src: str | None = None) -> dict:
    sys.path.insert(0, src or str(ROOT))
    import jax
    import optax

    from rljax import models
    from rljax.train.state import TrainState

    cfg = models.get_config("tiny", vocab_size=SHAPE["vocab_size"], d_model=SHAPE["d_model"],
                            n_layers=SHAPE["n_layers"], n_heads=SHAPE["n_heads"],
                            n_kv_heads=SHAPE["n_kv_heads"], head_dim=SHAPE["head_dim"],
                            mlp_dim=SHAPE["mlp_dim"], qk_norm=True, rope_theta=SHAPE["rope_theta"],
                            norm_eps=SHAPE["norm_eps"], tie_embeddings=True)
    optimizer = optax.adamw(LR, b1=B1, b2=B2, eps=EPS, weight_decay=WD)
    step, to_batch = rljax_update(cfg, optimizer)

    key = jax.random.PRNGKey(0)
    params = models.init(cfg, key)
    state = TrainState.create({"policy": params}, optimizer, key)

    batch = to_batch(jax.device_put(rljax_batch(make_batch())))

    holder = {"state": state}
    last = {}

    def run_step():
        new_state, metrics = step(holder["state"], batch)
        jax.block_until_ready((new_state, metrics))
        holder["state"] = new_state
        last["metrics"] = metrics

    out = time_steps(run_step, repeats, steps)
    out["loss_last"] = float(last["metrics"]["loss"])
    out["n_params"] = models.count_params(params)
    out["rljax_source"] = str(Path(models.__file__).resolve().parents[2])
    out["versions"] = bench_common.versions("jax", "jaxlib", "optax", "flax")
    out["threads"] = jax_threads()
    return out


def worker_tunix(repeats: int, steps: int) -> dict:
    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx
    from tunix.models.qwen3 import model as qwen3
    from tunix.rl import function_registry
    from tunix.rl import trainer as rl_trainer
    from tunix.rl.grpo import grpo_learner
    from tunix.sft import peft_trainer

    config = qwen3.ModelConfig(
        num_layers=SHAPE["n_layers"], vocab_size=SHAPE["vocab_size"], embed_dim=SHAPE["d_model"],
        hidden_dim=SHAPE["mlp_dim"], num_heads=SHAPE["n_heads"], head_dim=SHAPE["head_dim"],
        num_kv_heads=SHAPE["n_kv_heads"], rope_theta=int(SHAPE["rope_theta"]),
        norm_eps=SHAPE["norm_eps"], use_tied_embedding=True, dtype=jnp.float32,
        param_dtype=jnp.float32)
    model = qwen3.Qwen3(config, rngs=nnx.Rngs(params=0))
    # tunix initialises MLP kernels to zeros (a checkpoint is loaded over them); random weights
    # instead, so that the model is a random model like the other two (same cost either way).
    key = jax.random.PRNGKey(1)
    for layer in model.layers:
        for proj in (layer.mlp.gate_proj, layer.mlp.up_proj, layer.mlp.down_proj):
            key, sub = jax.random.split(key)
            k = proj.kernel
            k[...] = jax.random.normal(sub, k.shape, k.dtype) * k.shape[0] ** -0.5
    n_params = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))

    algo_config = grpo_learner.GRPOConfig(
        num_generations=GROUP, num_iterations=1, beta=BETA, epsilon=CLIP_EPS,
        kl_loss_mode="low_var_kl",  # k3: exp(ref - logp) - (ref - logp) - 1
        loss_agg_mode="sequence-mean-token-mean")
    algo_config.temperature = 1.0  # GRPOLearner copies the rollout temperature here

    with tempfile.TemporaryDirectory() as tmp:
        training_config = peft_trainer.TrainingConfig(eval_every_n_steps=10**9, max_steps=10**9,
                                                      checkpoint_root_directory=None)
        trainer = rl_trainer.Trainer(model=model, optimizer=optax.adamw(LR, b1=B1, b2=B2, eps=EPS, weight_decay=WD),
                                     training_config=training_config,
                                     custom_checkpoint_metadata_fn=lambda: {"global_step": 0})
        # As GRPOLearner.__init__ wires the actor trainer.
        policy_loss_fn = function_registry.get_policy_loss_fn(algo_config.policy_loss_fn)
        loss_fn = lambda model, train_example, algo_config: policy_loss_fn(  # noqa: E731
            model, train_example, algo_config=algo_config, pad_id=PAD_ID, eos_id=EOS_ID)
        trainer.with_loss_fn(loss_fn, has_aux=True)
        trainer.with_gen_model_input_fn(lambda x: {"train_example": x, "algo_config": algo_config})
        train_step, _ = trainer.jit_train_and_eval_step(skip_jit=False, cache_nnx_graph=True)

        nb = make_batch()
        example = grpo_learner.TrainExample(
            prompt_ids=jnp.asarray(nb["prompt_ids"]), prompt_mask=jnp.asarray(nb["prompt_mask"].astype(np.int32)),
            completion_ids=jnp.asarray(nb["completion_ids"]),
            completion_mask=jnp.asarray(nb["completion_mask"].astype(np.int32)),
            advantages=jnp.asarray(nb["advantages"]), ref_per_token_logps=jnp.asarray(nb["ref_logp"]),
            old_per_token_logps=jnp.asarray(nb["old_logp"]))
        last = {}

        def run_step():
            loss, aux, grad_norm = train_step(example)
            jax.block_until_ready((loss, aux, grad_norm, nnx.state(trainer.model, nnx.Param)))
            last["loss"] = loss

        out = time_steps(run_step, repeats, steps)
        trainer.close()
    out["loss_last"] = float(last["loss"])
    out["n_params"] = int(n_params)
    found = bench_common.versions("google-tunix", "jax", "flax", "optax")
    out["versions"] = {"tunix": found.pop("google-tunix"), **found}
    out["threads"] = jax_threads()
    return out


def worker_trl(repeats: int, steps: int) -> dict:
    import torch
    from datasets import Dataset
    from tokenizers import Tokenizer
    from tokenizers import models as tok_models
    from tokenizers import pre_tokenizers
    from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM
    from trl import GRPOConfig, GRPOTrainer

    torch.manual_seed(0)
    config = Qwen3Config(
        vocab_size=SHAPE["vocab_size"], hidden_size=SHAPE["d_model"], intermediate_size=SHAPE["mlp_dim"],
        num_hidden_layers=SHAPE["n_layers"], num_attention_heads=SHAPE["n_heads"],
        num_key_value_heads=SHAPE["n_kv_heads"], head_dim=SHAPE["head_dim"], rms_norm_eps=SHAPE["norm_eps"],
        rope_parameters={"rope_type": "default", "rope_theta": SHAPE["rope_theta"]},
        tie_word_embeddings=True, max_position_embeddings=1024, pad_token_id=PAD_ID, eos_token_id=EOS_ID,
        bos_token_id=None, attention_dropout=0.0, use_sliding_window=False)
    model = Qwen3ForCausalLM(config).to(torch.float32)
    n_params = sum(p.numel() for p in model.parameters())

    # An offline word-level tokenizer over the same ids (GRPOTrainer needs a processing class).
    vocab = {f"t{i}": i for i in range(SHAPE["vocab_size"])}
    tok = Tokenizer(tok_models.WordLevel(vocab, unk_token="t2"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="t0", eos_token="t1", unk_token="t2",
                                        padding_side="left")

    with tempfile.TemporaryDirectory() as tmp:
        args = GRPOConfig(
            output_dir=tmp, per_device_train_batch_size=B, num_generations=GROUP,
            max_completion_length=COMPLETION, beta=BETA, epsilon=CLIP_EPS, loss_type="grpo",
            learning_rate=LR, adam_beta1=B1, adam_beta2=B2, adam_epsilon=EPS, weight_decay=WD,
            optim="adamw_torch_fused", lr_scheduler_type="constant", max_grad_norm=0.0,
            use_cpu=True, bf16=False, fp16=False, gradient_checkpointing=False, report_to="none",
            logging_steps=10**9, save_strategy="no", seed=0, dataloader_num_workers=0)
        # GRPOTrainer builds its reference model (beta > 0) from the policy's path: save the random
        # model and pass the path, as a user would pass a checkpoint.
        model.save_pretrained(f"{tmp}/model")
        args.model_init_kwargs = {"dtype": torch.float32}
        trainer = GRPOTrainer(model=f"{tmp}/model", reward_funcs=lambda completions, **kw: [0.0] * len(completions),
                              args=args, train_dataset=Dataset.from_dict({"prompt": ["t5 t6"] * B}),
                              processing_class=tokenizer)
        trainer.create_optimizer_and_scheduler(num_training_steps=10**6)
        trainer._prepare_inputs = lambda inputs: inputs  # inputs are prepared: no generation
        trainer.current_gradient_accumulation_steps = 1  # set by the HF training loop
        nb = make_batch()
        inputs = dict(
            prompt_ids=torch.from_numpy(nb["prompt_ids"]).long(),
            prompt_mask=torch.from_numpy(nb["prompt_mask"]).long(),
            completion_ids=torch.from_numpy(nb["completion_ids"]).long(),
            completion_mask=torch.from_numpy(nb["completion_mask"]).long(),
            advantages=torch.from_numpy(nb["advantages"]),
            old_per_token_logps=torch.from_numpy(nb["old_logp"]),
            ref_per_token_logps=torch.from_numpy(nb["ref_logp"]))
        last = {}

        def run_step():
            loss = trainer.training_step(trainer.model, dict(inputs), None)
            trainer.optimizer.step()
            trainer.lr_scheduler.step()
            trainer.optimizer.zero_grad()
            last["loss"] = float(loss)

        out = time_steps(run_step, repeats, steps)
    out["loss_last"] = last["loss"]
    out["n_params"] = int(n_params)
    out["versions"] = bench_common.versions("trl", "torch", "transformers")
    out["threads"] = dict(torch_num_threads=torch.get_num_threads(), os_cpus=os.cpu_count(),
                          attn_implementation=model.config._attn_implementation)
    return out


WORKERS = {"rljax": worker_rljax, "tunix": worker_tunix, "trl": worker_trl}


# ----------------------------------------------------------------------------- orchestration

def run_worker(name: str, repeats: int, steps: int, src: str | None = None) -> dict:
    python = str(TUNIX_PYTHON) if name == "tunix" else sys.executable
    cmd = [python, str(Path(__file__).resolve()), "--worker", name, "--repeats", str(repeats), "--steps", str(steps)]
    if src:
        cmd += ["--src", src]
    before = bench_common.load_average()
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - t0
    lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
    if proc.returncode or not lines:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-8000:])
        raise RuntimeError(f"{name} worker failed with exit code {proc.returncode}")
    out = json.loads(lines[-1][len("RESULT "):])
    out.update(loadavg_before=before, loadavg_after=bench_common.load_average(), worker_wall_s=round(wall, 1), python=python)
    return out


def summarise(runs: list[dict]) -> dict:
    """Pools the repeats of every round: the median of all repeat means is the step time."""
    means = [m for r in runs for m in r["step_s_repeat_means"]]
    step_s = statistics.median(means)
    first = statistics.median(r["first_call_s"] for r in runs)
    return dict(step_s_median=step_s, steps_per_s=1.0 / step_s, tokens_per_s=B * T / step_s,
                loss_tokens_per_s=int(make_batch()["completion_mask"].sum()) / step_s,
                step_s_repeat_means=means, step_s_min=min(r["step_s_min"] for r in runs),
                first_call_s=first, compile_s=max(first - step_s, 0.0),
                loadavg_1m=[x for r in runs for x in (r["loadavg_before"][0], r["loadavg_after"][0])],
                versions=runs[0]["versions"], threads=runs[0]["threads"], n_params=runs[0]["n_params"],
                loss_last=runs[-1]["loss_last"], rounds=runs)


def export_rev(rev: str, dest: Path) -> str:
    """The rljax package of git revision `rev`, extracted under dest; returns the source root."""
    dest.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "archive", rev, "rljax"], cwd=ROOT, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return str(dest)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worker", choices=sorted(WORKERS))
    ap.add_argument("--src", default=None, help="(rljax worker) import rljax from this source root")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=2, help="every framework runs once per round, interleaved")
    ap.add_argument("--only", default="rljax,tunix,trl")
    ap.add_argument("--baseline-rev", default=None,
                    help="also time rljax as of this git revision (e.g. the commit before an optimisation)")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args()

    if args.worker:
        kwargs = {"src": args.src} if args.worker == "rljax" else {}
        print("RESULT " + json.dumps(WORKERS[args.worker](args.repeats, args.steps, **kwargs)), flush=True)
        return

    names = [n for n in args.only.split(",") if n]
    jobs = [(n, n, None) for n in names]
    tmp = tempfile.TemporaryDirectory()
    baseline_rev = None
    if args.baseline_rev:
        baseline_rev = subprocess.run(["git", "rev-parse", args.baseline_rev], cwd=ROOT, capture_output=True,
                                      text=True, check=True).stdout.strip()
        jobs.append(("rljax_baseline", "rljax", export_rev(baseline_rev, Path(tmp.name) / "baseline")))
    runs = {label: [] for label, _, _ in jobs}
    for round_ in range(args.rounds):
        for label, worker, src in jobs:
            print(f"round {round_ + 1}/{args.rounds}: {label} ...", flush=True)
            r = run_worker(worker, args.repeats, args.steps, src)
            runs[label].append(r)
            print(f"  {label}: {r['step_s_median'] * 1e3:.1f} ms/step, load {r['loadavg_before']} -> "
                  f"{r['loadavg_after']}", flush=True)
    results = {label: summarise(rs) for label, rs in runs.items()}

    def speedup(other):
        if {"rljax", other} <= results.keys():
            return results["rljax"]["tokens_per_s"] / results[other]["tokens_per_s"]
        return None

    nb = make_batch()
    previous = bench_common.read_results(args.out)
    report = {
        "speedup_vs_tunix": speedup("tunix"),
        "speedup_vs_trl": speedup("trl"),
        "speedup_vs_rljax_baseline": speedup("rljax_baseline"),
        "rljax_baseline_rev": baseline_rev,
        "shape": dict(name="A", architecture="Qwen3 (QK-norm, GQA, SwiGLU, RoPE, tied embeddings)",
                      dtype="float32", **SHAPE),
        "batch": dict(sequences=B, tokens_per_sequence=T, prompt_slot=PROMPT, completion_slot=COMPLETION,
                      group_size=GROUP, tokens_per_step=B * T,
                      real_prompt_tokens=int(nb["prompt_mask"].sum()),
                      real_completion_tokens_scored=int(nb["completion_mask"].sum()),
                      tokens_per_s_counts="all B*T positions, padding included"),
        "loss": dict(name="GRPO", clip_eps=CLIP_EPS, beta=BETA, kl="k3", agg="seq-mean-token-mean",
                     advantages="per sequence, group-normalised", old_and_ref_logp="inputs"),
        "optimizer": dict(name="AdamW", lr=LR, b1=B1, b2=B2, eps=EPS, weight_decay=WD, grad_clip=None),
        "timed_region": TIMED_REGION,
        "fairness": FAIRNESS,
        "results": results,
        "machine": bench_common.machine("torch"),
        "gpu": bench_common.kept_gpu_entry(previous),
    }
    bench_common.write_results(args.out, report)

    print()
    print(bench_common.table(
        [("framework", "ms/step", "steps/s", "tokens/s", "compile s", "load avg 1m (min-max)")]
        + [(label, f"{r['step_s_median'] * 1e3:.1f}", f"{r['steps_per_s']:.3f}", f"{r['tokens_per_s']:.0f}",
            f"{r['compile_s']:.1f}", f"{min(r['loadavg_1m']):.2f}-{max(r['loadavg_1m']):.2f}")
           for label, r in results.items()]))
    for other in ("tunix", "trl", "rljax_baseline"):
        if speedup(other):
            print(f"rljax speedup vs {other}: {speedup(other):.2f}x (tokens/s)")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
