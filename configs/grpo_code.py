"""GRPO on the `code` task: a from-scratch transformer writes one-line Python functions
("Write a Python function g(xs) that returns ...") and is rewarded 1 when its program passes the
problem's hidden asserts, run in the bubblewrap sandbox (`rljax.rewards.sandbox.run_code`; needs
`apt-get install bubblewrap`, and refuses to start without it).

A short SFT warm start on the reference solutions first, so that some samples parse at all;
then a few GRPO steps. At this size it learns little: the config exists to exercise the
pipeline end to end (generation -> sandboxed execution -> group advantages -> update).
    python experiments/train.py --config configs/grpo_code.py --workdir /tmp/grpo_code
"""

import ml_collections

from configs import base


def get_config():
    config = base.get_config()
    # Assigned whole: ConfigDict.update would merge in the arithmetic knobs.
    config.task.knobs = ml_collections.ConfigDict(dict(
        groups="int,list,str", num_tests=5, train_size=5_000, test_size=200))
    config.task.update(name="code", prompt="plain", answer_format="plain")
    # Measured with a 512-piece tokenizer on this corpus: prompts <= 41 tokens, answers <= 28.
    config.tokenizer.vocab_size = 512
    config.data.update(max_prompt_tokens=44, max_answer_tokens=30)
    config.model.overrides.update(max_seq_len=80)
    config.sft.update(steps=200, batch_size=32)
    config.rl.update(advantage="grpo", surrogate="ppo", steps=10, prompts_per_step=8, group_size=4,
                     agg="seq-mean-token-mean")
    config.rl.sampling.update(max_new_tokens=30, temperature=1.0)
    config.rl.optim.learning_rate = 3e-4
    config.eval.update(every=5, num_examples=32, batch_size=32)
    return config
