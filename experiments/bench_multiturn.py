"""Multi-turn rollouts against single-turn ones and against re-prefilling the conversation.

    python experiments/bench_multiturn.py [--batches 1 8] [--turns 4] [--tokens-per-turn 32]

SmolLM2-135M-Instruct (the embedded GGUF, float32), greedy-free sampling at temperature 1. Three
ways to sample the same number of policy tokens per row, turns × tokens-per-turn:
- multi_turn: `rljax.envs.rollout` over `--turns` turns; between turns a scripted environment
  answers with a fixed ~30-token message, appended to the KV cache (`generate.extend`);
- single_turn: the same rollout with one turn of turns × tokens-per-turn tokens (no messages);
- reprefill: what most multi-turn rollouts do: each turn, the whole conversation so far is the
  prompt of a fresh `generate.generate` call (prefilled again), with the same token glue.
Every turn runs to its token budget: generation stops only at a token the model never samples
here, so the three produce the same number of tokens. Each figure is the median of `--repeats`
timed calls after one untimed call (compilation), on this machine, with its load average.
Writes experiments/results/bench_multiturn.json and prints a table.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import bench_common
import jax

from rljax import envs, generate, models
from rljax.data.batching import pad_left
from rljax.envs.chat import ChatBridge
from rljax.sharding import to_host

RESULTS = Path(__file__).parent / "results" / "bench_multiturn.json"
ANSWER = "Noted. Here is the next part of the task: continue the story, one more paragraph, same characters."


class NoStop:
    """SmolLM2's tokenizer, stopping only at a token the model does not sample in a chat reply
    (so that every turn runs to its budget and the three methods sample alike)."""

    def __init__(self, tokenizer):
        self._tok = tokenizer
        self.eos_ids = (tokenizer.encode("<repo_name>")[0],)

    def __getattr__(self, name):
        return getattr(self._tok, name)


class Scripted(envs.Env):
    def __init__(self, turns: int):
        self.turns = turns

    def reset(self):
        self.turn = 0
        return [{"role": "user", "content": "Tell me a story about a lighthouse keeper."}]

    def step(self, reply):
        self.turn += 1
        return envs.Step(messages=[{"role": "user", "content": ANSWER}], done=self.turn == self.turns)


def reprefill(cfg, params, tokenizer, environments, key, turns: int, tokens_per_turn: int) -> int:
    """The baseline: every turn prefills the whole conversation again. Returns tokens sampled."""
    chat = ChatBridge(tokenizer)
    histories = [e.reset() for e in environments]
    streams = [chat.opening(h) for h in histories]
    sampled = 0
    for turn in range(turns):
        length = -(-max(map(len, streams)) // 64) * 64
        tokens, mask = pad_left(streams, pad_id=tokenizer.pad_id, length=length)
        gen = generate.generate(cfg, params, tokens, mask, jax.random.fold_in(key, turn), tokens_per_turn,
                                eos_ids=tokenizer.eos_ids, pad_id=tokenizer.pad_id)
        out, keep = to_host((gen.tokens, gen.mask))
        for i, env in enumerate(environments):
            reply_ids = [int(t) for t in out[i][keep[i]]]
            sampled += len(reply_ids)
            reply = tokenizer.decode(reply_ids)
            step = env.step(reply)
            streams[i] = streams[i] + reply_ids
            if not step.done:
                streams[i] += chat.between(histories[i], reply, None, step.messages)
                histories[i] += [{"role": "assistant", "content": reply}, *step.messages]
    return sampled


def measure(cfg, params, tokenizer, batch: int, turns: int, per_turn: int, repeats: int) -> dict:
    total = turns * per_turn
    budget = 64 + turns * (per_turn + 48)

    def multi(seed):
        traj = envs.rollout(cfg, params, tokenizer, [Scripted(turns) for _ in range(batch)], jax.random.PRNGKey(seed),
                            max_turns=turns, max_new_tokens=per_turn, max_total_tokens=budget)
        return int(traj.loss_mask.sum())

    def single(seed):
        traj = envs.rollout(cfg, params, tokenizer, [Scripted(1) for _ in range(batch)], jax.random.PRNGKey(seed),
                            max_turns=1, max_new_tokens=total, max_total_tokens=budget)
        return int(traj.loss_mask.sum())

    def again(seed):
        return reprefill(cfg, params, tokenizer, [Scripted(turns) for _ in range(batch)], jax.random.PRNGKey(seed),
                         turns, per_turn)

    load_before = bench_common.load_average()
    row = {"batch": batch, "turns": turns, "tokens_per_turn": per_turn}
    for name, fn in (("multi_turn", multi), ("single_turn", single), ("reprefill", again)):
        counts = []
        timing = bench_common.time_calls(lambda seed: counts.append(fn(seed)), repeats)
        median = statistics.median(timing["times_s"])
        row[name] = {"median_s": round(median, 3), "times_s": [round(t, 3) for t in timing["times_s"]],
                     "first_call_s": round(timing["first_call_s"], 2), "sampled_tokens": counts[-1],
                     "tokens_per_s": round(counts[-1] / median, 1)}
    row["multi_over_single"] = round(row["multi_turn"]["median_s"] / row["single_turn"]["median_s"], 3)
    row["reprefill_over_multi"] = round(row["reprefill"]["median_s"] / row["multi_turn"]["median_s"], 3)
    row["load_average"] = {"before": load_before, "after": bench_common.load_average()}
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--turns", type=int, default=4)
    parser.add_argument("--tokens-per-turn", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    cfg, params, tokenizer = models.load_gguf(models.gguf.smollm2_gguf_path())
    tokenizer = NoStop(tokenizer)
    rows = [measure(cfg, params, tokenizer, b, args.turns, args.tokens_per_turn, args.repeats) for b in args.batches]
    results = {"model": "SmolLM2-135M-Instruct (Q4_1 GGUF, dequantised to float32)", "rows": rows,
               "multi_over_single_max": max(r["multi_over_single"] for r in rows),
               "machine": bench_common.machine("flax")}
    bench_common.write_results(args.out, results)
    print(bench_common.table(
        [("batch", "turns x tokens", "multi-turn s", "single-turn s", "re-prefill s", "multi/single", "re-prefill/multi")]
        + [(r["batch"], f"{r['turns']} x {r['tokens_per_turn']}", r["multi_turn"]["median_s"],
            r["single_turn"]["median_s"], r["reprefill"]["median_s"], r["multi_over_single"],
            r["reprefill_over_multi"]) for r in rows]))


if __name__ == "__main__":
    main()
