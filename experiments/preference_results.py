"""Runs the preference / reward-model configs and writes their figures to experiments/results/.

    python experiments/preference_results.py dpo            # -> dpo_arithmetic.json
    python experiments/preference_results.py reward_model   # -> reward_model.json
    python experiments/preference_results.py ppo_rm         # -> ppo_rm_arithmetic.json + .png

Each runs its config (configs/<name>_arithmetic.py) with `rljax.train.experiment.run` in
--workdir (default /tmp/rljax_<name>; rerunning resumes there) and keeps the measured figures,
the wall time and the config. Overrides: `--set preference.policy.steps=100` (repeatable).
`--seeds 0 1` runs each seed in workdir/seed_N: the JSON's figures are then the means over the
seeds, with every seed's own under per_seed and the slowest seed's wall time.
"""

import argparse
import ast
import json
import os
import platform
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # for `configs`

RESULTS = os.path.join(ROOT, "experiments", "results")
CONFIGS = {"dpo": "dpo_arithmetic", "reward_model": "reward_model_arithmetic", "ppo_rm": "ppo_rm_arithmetic"}
OUTPUTS = {"dpo": "dpo_arithmetic", "reward_model": "reward_model", "ppo_rm": "ppo_rm_arithmetic"}


def _override(config, assignment: str):
    path, value = assignment.split("=", 1)
    *parents, leaf = path.split(".")
    node = config
    for name in parents:
        node = node[name]
    try:
        value = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        pass  # a bare string
    node[leaf] = value


def _moving_average(values, width: int) -> np.ndarray:
    """The mean of each value and the up to width - 1 before it."""
    sums = np.cumsum(np.concatenate([[0.0], values]))
    ends = np.arange(1, len(values) + 1)
    starts = np.maximum(ends - width, 0)
    return (sums[ends] - sums[starts]) / (ends - starts)


def _plot_rewards(per_seed_rows: dict, path: str):
    """The learned reward the policy maximises beside the verifier's (true) reward it never sees,
    one line per seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right, agree) = plt.subplots(1, 3, figsize=(15, 3.6))
    for seed, rows in per_seed_rows.items():
        rl = [r for r in rows if "reward/learned" in r]
        evals = [r for r in rows if "eval/accuracy" in r]
        line, = left.plot([r["step"] for r in rl], [r["reward/learned"] for r in rl], lw=1, label=f"seed {seed}")
        right.plot([r["step"] for r in rl], [r["reward/true"] for r in rl], lw=0.8, alpha=0.5, color=line.get_color(),
                   label=f"seed {seed}: sampled responses (T=1)")
        right.plot([r["step"] for r in evals], [r["eval/accuracy"] for r in evals], marker="o", ms=3,
                   color=line.get_color(), label=f"seed {seed}: held-out, greedy")
        agreed = [r for r in rl if np.isfinite(r.get("reward/agreement", np.nan))]
        agree.plot([r["step"] for r in agreed], _moving_average([r["reward/agreement"] for r in agreed], 10), lw=1,
                   color=line.get_color(), label=f"seed {seed}")
    left.set_title("learned reward (reward model), sampled responses")
    right.set_title("true reward (verifier; never seen by the policy)")
    agree.set_title("reward model's pairwise accuracy on the rollouts\n(moving average of 10)", fontsize=10)
    for ax in (left, right, agree):
        ax.set_xlabel("step (SFT steps, then PPO iterations)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _figures(which: str, results: dict, rows: list) -> dict:
    """The measured figures of one run."""
    if which == "dpo":
        # Test accuracy of the SFT policy, and of the policy after the preference stage.
        before, after = results["accuracy_after_sft"], results["accuracy_after_rl"]
        return dict(accuracy_before=before, accuracy_after=after, gain=after - before)
    if which == "reward_model":
        return dict(pairwise_accuracy=results["pairwise_accuracy"])
    rl = [r for r in rows if "reward/learned" in r]
    before, after = results["accuracy_before_rl"], results["accuracy_after_rl"]
    return dict(true_reward_before=before, true_reward_after=after, gain=after - before,
                reward_model_pairwise_accuracy=results["pairwise_accuracy"],
                sampled_true_reward_first=rl[0]["reward/true"], sampled_true_reward_last=rl[-1]["reward/true"],
                learned_reward_first=rl[0]["reward/learned"], learned_reward_last=rl[-1]["reward/learned"],
                # The reward model's pairwise accuracy on the policy's samples, first and last 10 rollouts.
                rollout_agreement_first=float(np.nanmean([r.get("reward/agreement", np.nan) for r in rl[:10]])),
                rollout_agreement_last=float(np.nanmean([r.get("reward/agreement", np.nan) for r in rl[-10:]])),
                eval_accuracy_by_step={r["step"]: r["eval/accuracy"] for r in rows if "eval/accuracy" in r})


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("which", choices=sorted(CONFIGS))
    parser.add_argument("--workdir")
    parser.add_argument("--set", action="append", default=[], help="config override a.b=value")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0],
                        help="one run per seed (in workdir/seed_N when several)")
    args = parser.parse_args()

    import importlib

    from rljax.train import experiment
    from rljax.train.metrics import read_jsonl

    base = args.workdir or f"/tmp/rljax_{args.which}"
    per_seed, per_seed_rows, config = [], {}, None
    for seed in args.seeds:
        config = importlib.import_module(f"configs.{CONFIGS[args.which]}").get_config()
        for assignment in args.set:
            _override(config, assignment)
        config.log.progress = False
        config.seed = seed
        workdir = base if len(args.seeds) == 1 else os.path.join(base, f"seed_{seed}")
        results = experiment.run(config, workdir)
        rows = per_seed_rows[seed] = read_jsonl(os.path.join(workdir, "metrics.jsonl"))
        per_seed.append({"seed": seed, "wall_seconds": results["wall_seconds"],
                         "preference_pairs": results["preference_pairs"],
                         **_figures(args.which, results, rows)})

    figures = [k for k, v in per_seed[0].items() if isinstance(v, float) and k != "wall_seconds"]
    out = {"config": CONFIGS[args.which], "overrides": args.set, "seeds": len(args.seeds),
           **{k: float(np.mean([s[k] for s in per_seed])) for k in figures},
           "wall_seconds": max(s["wall_seconds"] for s in per_seed),
           "test_examples": results["test_examples"],
           "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                       "note": "this CPU; each seed run alone"},
           "per_seed": per_seed}
    if args.which == "dpo":
        out.update(loss=config.preference.policy.loss, hparams=config.preference.policy.hparams.to_dict())
    if args.which == "ppo_rm":
        png = os.path.join(RESULTS, f"{OUTPUTS[args.which]}.png")
        _plot_rewards(per_seed_rows, png)
        out.update(plot=os.path.relpath(png, ROOT),
                   note="true rewards: the verifier's, on held-out problems with greedy decoding "
                        "(eval/accuracy); the policy is trained on the learned reward only")
    if len(args.seeds) > 1:
        out["note_on_means"] = "the figures at the top are means over the seeds; wall_seconds is the slowest seed's"
    path = os.path.join(RESULTS, f"{OUTPUTS[args.which]}.json")
    with open(path, "w") as f:
        json.dump(out, f, indent=2)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
