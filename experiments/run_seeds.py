"""Runs an experiment config with several seeds, against its strongest SFT baseline, and
summarises them.

    python experiments/run_seeds.py --config configs/grpo_arithmetic.py --seeds 0 1 2 \
        --baseline configs/sft_baseline_arithmetic.py --baseline-steps 500 1000 2000 \
        --workdir /tmp/grpo_seeds --out experiments/results/grpo_arithmetic.json

Each run is its own process (`experiments/train.py`, so each is timed as a user would run it)
under workdir/seed_N (and workdir/seed_N/baseline_S). Per seed, the baseline config (SFT alone,
annealed) runs once per `--baseline-steps` length; the length with the best *validation* accuracy
is kept and its test accuracy is the seed's `sft_best_accuracy`. Model selection never reads the
test split; each run reads it once, at its end.

With `--eval-hf`, each run's exported model (<run>/export, from a config with `export=True`) is
also evaluated by transformers alone (`experiments/eval_hf.py`) on the same test questions, and
the base model (the config's GGUF) once: the independent check of rljax's own evaluation.

The JSON holds the means over seeds of the test accuracy after the config's SFT warm start, after
RL, and of the best SFT baseline; both gains (RL over its warm start, RL over the best SFT); the
slowest seed's wall time; and every per-seed figure. A PNG beside it shows the held-out accuracy
and the reward of every seed against the step.
"""

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "experiments"))

import bench_common  # noqa: E402
from rljax.train.metrics import read_jsonl  # noqa: E402


def plot(per_seed_rows: dict, path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(key, name) for key, name in (("sft/loss", "SFT loss"), ("reward_mean", "RL: mean sampled reward"),
                                            ("eval/accuracy", "validation greedy accuracy"))
              if any(key in r for rows in per_seed_rows.values() for r in rows)]  # no SFT panel without SFT
    fig, axes = plt.subplots(1, len(panels), figsize=(4.7 * len(panels), 3.6), squeeze=False)
    for ax, (key, name) in zip(axes[0], panels):
        for seed, rows in per_seed_rows.items():
            points = [(r["step"], r[key]) for r in rows if key in r]
            ax.plot(*zip(*points), marker="o" if key == "eval/accuracy" else None, ms=3, label=f"seed {seed}")
        ax.set_title(name)
        ax.set_xlabel("step (SFT steps, then RL iterations)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(config: str, workdir: str, seed: int, overrides) -> tuple[dict, float]:
    """One CLI run; (its results.json, the process's wall time)."""
    cmd = [sys.executable, os.path.join(ROOT, "experiments", "train.py"), f"--config={config}",
           f"--workdir={workdir}", f"--config.seed={seed}", "--config.log.progress=False", *overrides]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    wall = time.perf_counter() - t0
    with open(os.path.join(workdir, "results.json")) as f:
        return json.load(f), wall


def eval_hf(config: str, out: str, *source) -> dict:
    """`experiments/eval_hf.py` on the test questions of `config`; its JSON, without the replies."""
    cmd = [sys.executable, os.path.join(ROOT, "experiments", "eval_hf.py"), *source, f"--config={config}",
           f"--out={out}"]
    subprocess.run(cmd, check=True)
    with open(out) as f:
        return {k: v for k, v in json.load(f).items() if k != "replies"}


COSTS = ("trainable_params", "frozen_params", "optimizer_state_bytes", "peak_rss_bytes",
         "median_generate_tokens_per_s", "median_train_tokens_per_s", "median_generate_s", "median_train_s")


def best_baseline(config: str, workdir: str, seed: int, lengths, overrides) -> dict:
    """The baseline run of the best validation accuracy among `lengths` SFT steps."""
    candidates = []
    for steps in lengths:
        result, wall = run(config, os.path.join(workdir, f"baseline_{steps}"), seed,
                           [f"--config.sft.steps={steps}", *overrides])
        candidates.append({"sft_steps": steps, "validation_accuracy": result["validation_accuracy_after_rl"],
                           "test_accuracy": result["accuracy_after_rl"], "process_wall_seconds": wall})
        print(f"seed {seed} baseline {steps} steps: {candidates[-1]}", flush=True)
    best = max(candidates, key=lambda c: c["validation_accuracy"])
    return {"chosen": best, "candidates": candidates}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--baseline", help="an SFT-only config: the baseline to compare RL with")
    parser.add_argument("--baseline-steps", type=int, nargs="+", default=[2000],
                        help="SFT lengths to try for the baseline; the best on validation is kept")
    parser.add_argument("--eval-hf", action="store_true",
                        help="also evaluate each run's export, and the base GGUF, with transformers")
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--out", required=True, help="path of the summary JSON (a PNG is written beside it)")
    parser.add_argument("overrides", nargs="*", help="extra --config.x=y flags for every run")
    args, extra = parser.parse_known_args()
    unknown = [a for a in extra if not a.startswith("--config.")]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    args.overrides += extra

    per_seed, rows = {}, {}
    for seed in args.seeds:
        workdir = os.path.join(args.workdir, f"seed_{seed}")
        result, wall = run(args.config, workdir, seed, args.overrides)
        per_seed[seed] = {"sft_accuracy": result["accuracy_before_rl"], "rl_accuracy": result["accuracy_after_rl"],
                          "validation_sft_accuracy": result["validation_accuracy_before_rl"],
                          "validation_rl_accuracy": result["validation_accuracy_after_rl"],
                          "process_wall_seconds": wall, "run_wall_seconds": result["wall_seconds"],
                          "sft_seconds": result.get("sft_seconds"), "rl_seconds": result.get("rl_seconds"),
                          **{key: result[key] for key in COSTS if key in result}}
        if args.eval_hf:
            hf = eval_hf(args.config, os.path.join(workdir, "eval_hf.json"), f"--model={workdir}/export")
            per_seed[seed].update(hf_rl_accuracy=hf["accuracy"],
                                  hf_minus_rljax=hf["accuracy"] - result["accuracy_after_rl"])
        if args.baseline:
            per_seed[seed]["sft_best"] = best_baseline(args.baseline, workdir, seed, args.baseline_steps,
                                                       args.overrides)
        rows[seed] = read_jsonl(os.path.join(workdir, "metrics.jsonl"))
        print(f"seed {seed}: {per_seed[seed]}", flush=True)

    mean = lambda key: float(np.mean([s[key] for s in per_seed.values()]))  # noqa: E731
    summary = {
        "config": os.path.relpath(args.config, ROOT),
        "overrides": args.overrides,
        "sft_accuracy": mean("sft_accuracy"),
        "rl_accuracy": mean("rl_accuracy"),
        "gain_points": 100 * (mean("rl_accuracy") - mean("sft_accuracy")),
        "wall_seconds": max(s["process_wall_seconds"] for s in per_seed.values()),
        "seeds": len(per_seed),
        "per_seed": per_seed,
        "test_examples": result["test_examples"],
        "validation_examples": result["validation_examples"],
        "machine": bench_common.machine(),
    }
    if args.eval_hf:
        base = eval_hf(args.config, os.path.join(args.workdir, "eval_hf_base.json"), "--gguf")
        summary.update(hf_base_accuracy=base["accuracy"], hf_rl_accuracy=mean("hf_rl_accuracy"),
                       hf_gain_points=100 * (mean("hf_rl_accuracy") - base["accuracy"]),
                       max_abs_hf_minus_rljax=max(abs(s["hf_minus_rljax"]) for s in per_seed.values()))
    if args.baseline:
        best = [s["sft_best"]["chosen"]["test_accuracy"] for s in per_seed.values()]
        summary.update(baseline=os.path.relpath(args.baseline, ROOT), baseline_steps=args.baseline_steps,
                       sft_best_accuracy=float(np.mean(best)),
                       gain_over_sft_best_points=100 * (mean("rl_accuracy") - float(np.mean(best))))
    png = os.path.splitext(args.out)[0] + ".png"
    plot(rows, png, f"{summary['config']}: SFT {summary['sft_accuracy']:.3f} -> RL {summary['rl_accuracy']:.3f}"
                    f" (test, mean of {len(per_seed)} seeds)")
    summary["curves"] = os.path.relpath(png, ROOT)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(summary, f, indent=2)
    print(json.dumps({k: v for k, v in summary.items() if k != "per_seed"}, indent=2))


if __name__ == "__main__":
    main()
