"""Runs the preference / reward-model configs and writes their figures to experiments/results/.

    python experiments/preference_results.py dpo            # -> dpo_arithmetic.json
    python experiments/preference_results.py reward_model   # -> reward_model.json
    python experiments/preference_results.py ppo_rm         # -> ppo_rm_arithmetic.json + .png

Each runs its config (configs/<name>_arithmetic.py) with `rljax.train.experiment.run` in
--workdir (default /tmp/rljax_<name>; rerunning resumes there) and keeps the measured figures,
the wall time and the config. Overrides: `--set preference.policy.steps=100` (repeatable).
"""

import argparse
import ast
import json
import os
import sys

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


def _plot_rewards(rows, path):
    """The learned reward the policy maximises beside the verifier's (true) reward it never sees."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rl = [r for r in rows if "reward/learned" in r]
    evals = [r for r in rows if "eval/accuracy" in r]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    left.plot([r["step"] for r in rl], [r["reward/learned"] for r in rl], color="tab:orange")
    left.set_title("learned reward (reward model), sampled responses")
    right.plot([r["step"] for r in rl], [r["reward/true"] for r in rl], label="sampled responses (T=1)")
    right.plot([r["step"] for r in evals], [r["eval/accuracy"] for r in evals], marker="o",
               label="held-out, greedy")
    right.set_title("true reward (verifier; never seen by the policy)")
    right.legend()
    for ax in (left, right):
        ax.set_xlabel("step (SFT steps, then PPO iterations)")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("which", choices=sorted(CONFIGS))
    parser.add_argument("--workdir")
    parser.add_argument("--set", action="append", default=[], help="config override a.b=value")
    args = parser.parse_args()

    import importlib

    from rljax.train import experiment
    from rljax.train.metrics import read_jsonl

    config = importlib.import_module(f"configs.{CONFIGS[args.which]}").get_config()
    for assignment in args.set:
        _override(config, assignment)
    config.log.progress = False
    workdir = args.workdir or f"/tmp/rljax_{args.which}"
    results = experiment.run(config, workdir)

    out = {"config": CONFIGS[args.which], "overrides": args.set, "wall_seconds": results["wall_seconds"],
           "preference_pairs": results["preference_pairs"], "eval_examples": results["eval_examples"]}
    if args.which == "dpo":
        before, after = results["accuracy_before_preference"], results["accuracy_after_preference"]
        out.update(accuracy_before=before, accuracy_after=after, gain=after - before,
                   loss=config.preference.policy.loss, hparams=config.preference.policy.hparams.to_dict())
    elif args.which == "reward_model":
        out.update(pairwise_accuracy=results["pairwise_accuracy"])
    else:
        rows = read_jsonl(os.path.join(workdir, "metrics.jsonl"))
        rl = [r for r in rows if "reward/learned" in r]
        before, after = results["accuracy_before_rl"], results["accuracy_after_rl"]
        png = os.path.join(RESULTS, f"{OUTPUTS[args.which]}.png")
        _plot_rewards(rows, png)
        out.update(true_reward_before=before, true_reward_after=after, gain=after - before,
                   reward_model_pairwise_accuracy=results["pairwise_accuracy"],
                   sampled_true_reward_first=rl[0]["reward/true"], sampled_true_reward_last=rl[-1]["reward/true"],
                   learned_reward_first=rl[0]["reward/learned"], learned_reward_last=rl[-1]["reward/learned"],
                   plot=os.path.relpath(png, ROOT),
                   note="true rewards: the verifier's, on held-out problems with greedy decoding "
                        "(eval/accuracy); the policy is trained on the learned reward only")
    path = os.path.join(RESULTS, f"{OUTPUTS[args.which]}.json")
    with open(path, "w") as f:
        json.dump(out, f, indent=2)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
