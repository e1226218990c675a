"""Sampling from a policy: batched generation in one jit, sampling controls, and a text helper.

    from rljax import generate
    out = generate.generate(cfg, params, prompt_tokens, prompt_mask, key, max_new_tokens=64,
                            temperature=1.0, num_samples=8, eos_ids=tokenizer.eos_ids)
    texts = generate.complete(cfg, params, tokenizer, ["What is 2 + 2?"], temperature=0)
"""

from rljax.generate.loop import Generation, extend, generate, grow_cache, new_cache
from rljax.generate.sampling import Sampling, sample, sampling_logits
from rljax.generate.text import complete
