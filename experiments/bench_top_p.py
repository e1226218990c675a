"""What top-p costs in `generate`: SmolLM2-135M-Instruct decoding with nucleus sampling against
greedy decoding, the same prompts and lengths, in one run.

    python experiments/bench_top_p.py [--batches 16 64] [--new-tokens 32]

Top-p finds its threshold by bisection over the float32 order (`sampling.nucleus_threshold`),
32 masked sums over the vocabulary instead of a sort of it. Each figure is the fastest of
`--repeats` timed calls after a compiling one. Writes experiments/results/bench_top_p.json.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import bench_common
import jax
import numpy as np

from rljax import generate, models

RESULTS = Path(__file__).parent / "results" / "bench_top_p.json"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    cfg, params, _ = models.load_gguf(models.gguf.smollm2_gguf_path())
    rows = []
    for batch in args.batches:
        prompts = np.random.RandomState(0).randint(100, 20000, (batch, 128)).astype(np.int32)
        mask = np.ones_like(prompts, bool)
        row = {"batch": batch, "prompt_tokens": 128, "new_tokens": args.new_tokens}
        for name, sampling in (("greedy", dict(temperature=0.0)), ("top_p", dict(temperature=1.0, top_p=0.95))):
            def call(seed):
                out = generate.generate(cfg, params, prompts, mask, jax.random.PRNGKey(seed), args.new_tokens,
                                        **sampling)
                return jax.block_until_ready(out.tokens)

            timing = bench_common.time_calls(call, args.repeats)
            best = min(timing["times_s"])
            row[name] = {"best_s": round(best, 3), "tokens_per_s": round(batch * args.new_tokens / best, 1),
                         "first_call_s": round(timing["first_call_s"], 2)}
        row["top_p_over_greedy"] = round(row["top_p"]["best_s"] / row["greedy"]["best_s"], 3)
        rows.append(row)
    bench_common.write_results(args.out, {"model": "SmolLM2-135M-Instruct, float32", "rows": rows,
                                          "machine": bench_common.machine("flax")})
    print(bench_common.table([("batch", "greedy tok/s", "top-p tok/s", "top-p / greedy time")] + [
        (r["batch"], r["greedy"]["tokens_per_s"], r["top_p"]["tokens_per_s"], r["top_p_over_greedy"]) for r in rows]))


if __name__ == "__main__":
    main()
