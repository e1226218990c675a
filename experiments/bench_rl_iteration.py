"""The RL iteration of the main job (and of PPO), this tree against an earlier revision, in one run.

Each side runs the real CLI (`experiments/train.py --config configs/<name>.py`) for each of
`--configs` (the main job, GRPO with one update per rollout; PPO with a value head, 2 epochs x 2
minibatches) in its own fresh process with a short SFT warm start and `--iterations` RL
iterations, and reports the
medians, over the iterations after the first `--skip` (compilation), of what every iteration
logs in metrics.jsonl: `time/generate_s` (sampling and scoring) and `time/train_s` (the update,
blocked on). The baseline's `rljax/`, `configs/` and `experiments/` come from `git archive` of
`--baseline-rev`. Rounds interleave the sides, so that a change in the machine's load hits both.

For this tree it also reports the time to compile the learner (lower + compile; an iteration
dispatches it once) of the main job (one update per rollout) and of `configs/ppo_arithmetic.py`
(an old pass, then 2 epochs x 2 minibatches in lax.scan).

    python experiments/bench_rl_iteration.py [--baseline-rev 932366c] [--iterations 40] [--rounds 2]

Writes experiments/results/bench_rl_iteration.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import bench_common

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "experiments" / "results" / "bench_rl_iteration.json"
SFT_STEPS = 50


def run_side(tree: Path, config: str, workdir: Path, iterations: int, skip: int) -> dict:
    """One CLI run of `config` in `tree`; the medians of its iterations' timings."""
    cmd = [sys.executable, str(tree / "experiments" / "train.py"), f"--config={tree / 'configs' / f'{config}.py'}",
           f"--workdir={workdir}", f"--config.sft.steps={SFT_STEPS}", f"--config.rl.steps={iterations}",
           "--config.log.progress=False", "--config.log.tensorboard=False", "--config.checkpoint.every=1000"]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=tree, capture_output=True, text=True,
                   env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin", "JAX_PLATFORMS": "cpu",
                        "HOME": str(Path.home())})
    wall = time.perf_counter() - t0
    rows = [json.loads(line) for line in open(workdir / "metrics.jsonl") if line.strip()]
    rl = [r for r in rows if "time/train_s" in r][skip:]
    median = lambda key: statistics.median(r[key] for r in rl)  # noqa: E731
    return {"iterations_timed": len(rl), "generate_s": median("time/generate_s"), "train_s": median("time/train_s"),
            "iteration_s": median("time/generate_s") + median("time/train_s"), "process_wall_s": wall}


def learner_facts() -> dict:
    """The compile time and plan of this tree's learner for two configs (in this process)."""
    sys.path.insert(0, str(ROOT))
    import jax

    from rljax import models
    from rljax.train.config import experiment_config
    from rljax.train.learner import Learner
    from rljax.train.networks import Networks
    from rljax.train.trajectories import TrajectoryBatch
    from tests.test_configs import load_config

    out = {}
    for name in ("grpo_arithmetic", "ppo_arithmetic"):
        config = experiment_config(load_config(str(ROOT / "configs" / f"{name}.py")))
        rl = config.rl
        cfg = models.get_config(config.model.preset, vocab_size=config.tokenizer.vocab_size, **config.model.overrides)
        networks = Networks(cfg)
        learner = Learner(networks, rl, rl.optim.make(rl.steps * rl.updates_per_rollout),
                          norm_len=rl.sampling.max_new_tokens)
        params = models.init(cfg, jax.random.PRNGKey(0))
        state = networks.init_state(learner.optimizer, jax.random.PRNGKey(1), params,
                                    reference_params=jax.tree.map(jax.numpy.copy, params) if rl.kl.active else None)
        T = config.data.max_prompt_tokens + rl.sampling.max_new_tokens
        rows, loss_mask = rl.rows, jax.numpy.arange(T)[None].repeat(rl.rows, 0) >= config.data.max_prompt_tokens
        batch = TrajectoryBatch.from_rows(jax.numpy.zeros((rows, T), int), jax.numpy.ones((rows, T), bool), loss_mask,
                                          jax.numpy.zeros((rows, T)), jax.numpy.zeros(rows), rl.group_size, 0)
        t0 = time.perf_counter()
        jax.jit(learner.learn, donate_argnums=0).lower(state, batch, jax.random.PRNGKey(2)).compile()
        out[name] = {"updates_per_rollout": rl.updates_per_rollout,
                     "learner_compile_s": time.perf_counter() - t0, "old_pass": learner.old_pass,
                     "advantages_in_step": learner.advantages_in_step}
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline-rev", default="932366c")
    parser.add_argument("--iterations", type=int, default=40)
    parser.add_argument("--skip", type=int, default=5, help="iterations left out of the medians (compilation)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--configs", nargs="+", default=["grpo_arithmetic", "ppo_arithmetic"])
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        baseline = Path(tmp) / "baseline"
        baseline.mkdir()
        archive = subprocess.run(["git", "archive", args.baseline_rev, "rljax", "configs", "experiments"], cwd=ROOT,
                                 check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(baseline)], input=archive, check=True)
        sides = {"this tree": ROOT, f"baseline {args.baseline_rev}": baseline}
        runs = {(config, name): [] for config in args.configs for name in sides}
        for r in range(args.rounds):
            for config in args.configs:
                for name, tree in sides.items():
                    load_before = bench_common.load_average()
                    workdir = Path(tmp) / f"wd-{config}-{r}-{name.split()[0]}"
                    result = run_side(tree, config, workdir, args.iterations, args.skip)
                    runs[config, name].append({**result, "load_before": load_before,
                                               "load_after": bench_common.load_average()})
                    print(f"round {r} {config} {name}: {result}", flush=True)

    per_config = {}
    for config in args.configs:
        summary = {name: {k: statistics.median(x[k] for x in runs[config, name])
                          for k in ("generate_s", "train_s", "iteration_s")} for name in sides}
        ours, theirs = summary["this tree"], summary[f"baseline {args.baseline_rev}"]
        per_config[config] = {"summary": summary, "speedup_iteration": theirs["iteration_s"] / ours["iteration_s"],
                              "speedup_train": theirs["train_s"] / ours["train_s"],
                              "runs": {name: runs[config, name] for name in sides}}
    results = {
        "what": f"median seconds per RL iteration after {SFT_STEPS} SFT steps, iterations "
                f"{args.skip + 1}..{args.iterations}, from each run's metrics.jsonl (time/generate_s: sampling and "
                "scoring; time/train_s: the update, blocked on); median over rounds",
        "baseline_rev": args.baseline_rev, "configs": per_config,
        "learner": learner_facts(), "machine": bench_common.machine("flax", "optax"),
    }
    bench_common.write_results(RESULTS, results)
    rows = [("config", "side", "generate s", "train s", "iteration s", "speedup")]
    for config, entry in per_config.items():
        rows += [(config, name, f"{s['generate_s']:.3f}", f"{s['train_s']:.3f}", f"{s['iteration_s']:.3f}",
                  f"{entry['speedup_iteration']:.2f}x" if name == "this tree" else "")
                 for name, s in entry["summary"].items()]
    print(bench_common.table(rows))
    print(f"learner: {json.dumps(results['learner'])}")

if __name__ == "__main__":
    main()
