"""Runs an experiment config with several seeds and summarises them.

    python experiments/run_seeds.py --config configs/grpo_arithmetic.py --seeds 0 1 2 \
        --workdir /tmp/grpo_seeds --out experiments/results/grpo_arithmetic.json

Each seed runs in its own process (`experiments/train.py`, so each is timed as a user would run
it) under workdir/seed_N. The JSON holds the means over seeds of the accuracy before RL (after the
SFT warm start) and after RL, the slowest seed's wall time and every per-seed figure; a PNG beside
it shows the held-out accuracy and the reward of every seed against the step.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from rljax.train.metrics import read_jsonl  # noqa: E402


def plot(per_seed_rows: dict, path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 3.6))
    for seed, rows in per_seed_rows.items():
        for ax, key in zip(axes, ("sft/loss", "reward_mean", "eval/accuracy")):
            points = [(r["step"], r[key]) for r in rows if key in r]
            if points:
                ax.plot(*zip(*points), marker="o" if key == "eval/accuracy" else None, ms=3,
                        label=f"seed {seed}")
    for ax, title_ in zip(axes, ("SFT loss", "RL: mean sampled reward", "held-out greedy accuracy")):
        ax.set_title(title_)
        ax.set_xlabel("step (SFT steps, then RL iterations)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--out", required=True, help="path of the summary JSON (a PNG is written beside it)")
    parser.add_argument("overrides", nargs="*", help="extra --config.x=y flags for every seed")
    args = parser.parse_args()

    per_seed, rows = {}, {}
    for seed in args.seeds:
        workdir = os.path.join(args.workdir, f"seed_{seed}")
        cmd = [sys.executable, os.path.join(ROOT, "experiments", "train.py"), f"--config={args.config}",
               f"--workdir={workdir}", f"--config.seed={seed}", "--config.log.progress=False", *args.overrides]
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True)
        wall = time.perf_counter() - t0
        with open(os.path.join(workdir, "results.json")) as f:
            result = json.load(f)
        per_seed[seed] = {"sft_accuracy": result["accuracy_before_rl"], "rl_accuracy": result["accuracy_after_rl"],
                          "process_wall_seconds": wall, "run_wall_seconds": result["wall_seconds"],
                          "sft_seconds": result.get("sft_seconds"), "rl_seconds": result["rl_seconds"]}
        rows[seed] = read_jsonl(os.path.join(workdir, "metrics.jsonl"))
        print(f"seed {seed}: {per_seed[seed]}", flush=True)

    sft = [s["sft_accuracy"] for s in per_seed.values()]
    rl = [s["rl_accuracy"] for s in per_seed.values()]
    summary = {
        "config": os.path.relpath(args.config, ROOT),
        "overrides": args.overrides,
        "sft_accuracy": float(np.mean(sft)),
        "rl_accuracy": float(np.mean(rl)),
        "gain_points": 100 * float(np.mean(rl) - np.mean(sft)),
        "wall_seconds": max(s["process_wall_seconds"] for s in per_seed.values()),
        "seeds": len(per_seed),
        "per_seed": per_seed,
        "eval_examples": result["eval_examples"],
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
                    "load_average_at_end": os.getloadavg()},
    }
    png = os.path.splitext(args.out)[0] + ".png"
    plot(rows, png, f"{summary['config']}: SFT {summary['sft_accuracy']:.3f} -> RL {summary['rl_accuracy']:.3f}"
                    f" (mean of {len(per_seed)} seeds)")
    summary["curves"] = os.path.relpath(png, ROOT)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(summary, f, indent=2)
    print(json.dumps({k: v for k, v in summary.items() if k != "per_seed"}, indent=2))


if __name__ == "__main__":
    main()
