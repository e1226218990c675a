"""GRPO on GSM8K with Llama-3.2-1B-Instruct on a small TPU slice, FSDP, remat, bf16.

Meant for a v5e-4 (TOPOLOGY: v5e:2x2, 16 GiB a chip), FSDP over its 4 chips; the same run as
`grpo_gsm8k_llama8b_pod.py` (64 prompts x 8 samples, prompts up to 512 tokens, answers up to
1024, 16 micro-batches, no KL) with the 1B policy from its GGUF (`model.path`, tokenizer inside),
float32 weights, bfloat16 compute, scanned and rematerialised layers. Check first:

    python experiments/aot_compile.py --config configs/grpo_gsm8k_llama1b_pod.py --topology v5e:2x2 \\
        --mesh data=1,fsdp=4,tensor=1 --out aot_llama1b.json

then on every host of the slice, with a workdir they share:

    python experiments/train.py --config configs/grpo_gsm8k_llama1b_pod.py --workdir gs://BUCKET/llama1b \\
        --config.model.path=/ckpt/Llama-3.2-1B-Instruct-F16.gguf
"""

from configs import grpo_gsm8k_llama8b_pod

TOPOLOGY = "v5e:2x2"
MESH = dict(data=1, fsdp=4, tensor=1)


def get_config():
    config = grpo_gsm8k_llama8b_pod.get_config()
    config.model.update(path="checkpoints/Llama-3.2-1B-Instruct-F16.gguf", preset="llama3.2-1b")
    return config
