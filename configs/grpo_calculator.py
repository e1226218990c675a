"""Multi-turn RL with a tool: the tiny from-scratch model multiplies a 3-digit by a 2-digit number
("What is 347 * 28?") by calling the calculator, then answering with its result.

The system prompt describes the tools by JSON schema; a call is
`<tool_call>{"name": "calculator", "arguments": {"expression": "347 * 28"}}</tool_call>`, and the
tool's answer comes back as a tool message (`rljax.envs.ToolEnv`). A supervised warm start on an
expert's tool-using conversations, then multi-turn GRPO; reward 1 when the final answer is the
product. The same model and budget without tools: `--config.env.tools='()'`; with the sandboxed
Python tool instead: `--config.env.tools='("python",)'`.

    python experiments/train.py --config configs/grpo_calculator.py --workdir /tmp/calculator
"""

import ml_collections

from configs import base
from rljax.train.config import EnvSection


def get_config():
    config = base.multi_turn(EnvSection(name="tool_qa", tools=("calculator",), max_turns=3, max_total_tokens=256))
    config.task.knobs = ml_collections.ConfigDict(dict(num_operands=2, digits=(3, 2), operators="*",
                                                       train_size=6000, test_size=500))
    # Pieces that span words: the system prompt's tool schema takes ~150 tokens instead of ~260.
    config.tokenizer.update(vocab_size=800, options=dict(split_by_whitespace=False, max_sentencepiece_length=64,
                                                         hard_vocab_limit=False))  # fewer without tools
    config.rl.steps = 30
    config.rl.sampling.max_new_tokens = 40
    config.eval.update(every=10, num_examples=200, batch_size=100)
    return config
