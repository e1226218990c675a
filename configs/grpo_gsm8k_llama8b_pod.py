"""GRPO on GSM8K with Llama-3.1-8B-Instruct on a TPU pod slice, FSDP x tensor, remat, bf16.

Meant for a v5p-8 (TOPOLOGY, 95 GiB a chip), FSDP over its 8 chips: 64 prompts x 8 samples a
step, prompts up to 512 tokens, answers up to 1024 (GSM8K-like lengths), `#### N` answers through
the chat template, 16 micro-batches of 32 rows per update, no KL penalty (as DAPO and Dr. GRPO:
the learner's reference pass runs over the whole rollout in one forward pass, whose attention
scores at 512 x 1536 tokens would need more than a v5e chip holds; with a KL, check the
AOT compile first).
The policy is the GGUF of Llama-3.1-8B-Instruct (an F16 or BF16 file: `model.path`; its tokenizer
is read from it), its weights in float32 for AdamW, its compute in bfloat16, its layers scanned
and rematerialised. Check it compiles and fits before launching (README: Running on a TPU pod):

    python experiments/aot_compile.py --config configs/grpo_gsm8k_llama8b_pod.py --topology v5p:2x2x2 \\
        --mesh data=1,fsdp=8,tensor=1 --out aot_llama8b.json

then on every host of the slice, with a workdir they share (a GCS path works the same way):

    python experiments/train.py --config configs/grpo_gsm8k_llama8b_pod.py --workdir gs://BUCKET/llama8b \\
        --config.model.path=/ckpt/Llama-3.1-8B-Instruct-F16.gguf

The mesh is fsdp=-1 (every chip of the slice); add `--config.mesh.tensor=N` to split heads, MLP
and vocabulary N ways, the knob for a slice whose chips hold less (see the README's table).
"""

import ml_collections

from configs import base

TOPOLOGY = "v5p:2x2x2"
MESH = dict(data=1, fsdp=8, tensor=1)


def get_config():
    config = base.get_config()
    config.task.knobs = ml_collections.ConfigDict()
    config.task.update(name="gsm8k", prompt="chat", answer_format="hash", validation_size=64)
    config.tokenizer.kind = "gguf"
    # `preset` names the checkpoint's architecture for an AOT compile on a host without the file.
    config.model.update(source="gguf", path="checkpoints/Llama-3.1-8B-Instruct-F16.gguf", preset="llama3.1-8b")
    config.model.overrides = ml_collections.ConfigDict(dict(scan_layers=True, remat=True, dtype="bfloat16",
                                                            max_seq_len=2048))
    config.data.update(max_prompt_tokens=512, max_answer_tokens=1024)
    config.sft.steps = 0
    config.rl.update(advantage="grpo", surrogate="ppo", steps=200, prompts_per_step=64, group_size=8,
                     agg="seq-mean-token-mean", micro_batches=16)
    config.rl.sampling.update(max_new_tokens=1024, temperature=1.0)
    config.rl.optim.learning_rate = 1e-6
    config.mesh.update(data=1, fsdp=-1, tensor=1)
    config.eval.update(every=20, num_examples=256, batch_size=64)
    config.checkpoint.update(every=10, keep=2)
    return config
