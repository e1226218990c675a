"""Measures the reliability guarantees of issue #8 and writes experiments/results/reliability.json.

    python experiments/reliability.py [--out experiments/results/reliability.json]

- resume_exact: a tiny SFT + GRPO run of experiments/train.py is sent SIGTERM and then SIGKILL,
  each at a logged step drawn from a seeded RNG ($RLJAX_FAULT_SEED, recorded in the details),
  resumed with the same --workdir, and compared with an uninterrupted run; so is one killed
  between the SFT and RL stages (after the RL stage's first row, before its first checkpoint):
  1 when, for both, the parameters, optimiser state and every non-timing metric are equal.
- sigterm_checkpoint: 1 when the SIGTERM'd run exited with status 143 and said where it saved.
- multiprocess_equal: 1 when a sharded GRPO step, and a whole tiny SFT + GRPO experiment, on 2
  jax.distributed processes x 4 CPU devices equal the same on 1 process x 8 devices
  (tests/multiprocess/check.py).
- nan_steps_skipped: of a sequence of GRPO steps, three with a NaN advantage in their batch; the
  count of steps the train step reported as skipped while leaving the state bit-for-bit unchanged.
- sandbox_escapes: hostile programs (tests/rewards/test_code_sandbox.py) whose test failed, i.e.
  that got out of or past the sandbox, or took the host down.
- sandbox_exec_per_s: sequential `run_code` executions per second (experiments/bench_sandbox.py).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "experiments" / "results" / "reliability.json"


def check_resume() -> dict:
    from tests.faults import harness

    with tempfile.TemporaryDirectory() as tmp:
        harness.run(Path(tmp) / "reference")
        result = harness.interrupt_and_resume(Path(tmp) / "reference", Path(tmp) / "interrupted",
                                              signals=(signal.SIGTERM, signal.SIGKILL))
        between_stages = harness.interrupt_and_resume(Path(tmp) / "reference", Path(tmp) / "between_stages",
                                                      signals=(signal.SIGKILL,), at=(harness.RL_STAGE_STARTED,))
    (_, _, term_code), _ = result["kills"]
    runs = (result, between_stages)
    return {
        "resume_exact": int(all(r["differences"] == [] for r in runs)),
        "sigterm_checkpoint": int(term_code == 143 and "saved its checkpoint" in result["stderr"]),
        # The kill points come from the harness's seeded RNG: RLJAX_FAULT_SEED=<seed> replays them.
        "resume_detail": [{"seed": r["seed"], "kills": r["kills"], "differences": r["differences"]} for r in runs],
    }


def check_nan_steps() -> dict:
    import jax
    import numpy as np

    from rljax import models
    from rljax.train.config import RLConfig
    from rljax.train.learner import Learner
    from rljax.train.networks import Networks
    from rljax.train.optim import make_optimizer
    from rljax.train.trajectories import TrajectoryBatch

    cfg = models.get_config("tiny", d_model=32, n_layers=1, n_heads=2, n_kv_heads=1, head_dim=16, mlp_dim=64,
                            vocab_size=64)
    optimizer = make_optimizer(1e-3, total_steps=10)
    B, T, P, G = 8, 12, 4, 4
    networks = Networks(cfg)
    learner = Learner(networks, RLConfig(prompts_per_step=B // G, group_size=G), optimizer)
    learn = jax.jit(learner.learn)
    state = networks.init_state(optimizer, jax.random.PRNGKey(1), models.init(cfg, jax.random.PRNGKey(0)))
    rng = np.random.default_rng(0)
    poisoned_at = {1, 2, 4}
    skipped_unchanged = 0
    for i in range(6):
        tokens = rng.integers(0, cfg.vocab_size, (B, T)).astype(np.int32)
        loss_mask = np.repeat(np.arange(T)[None] >= P, B, 0)
        rewards = rng.normal(size=B).astype(np.float32)
        if i in poisoned_at:
            rewards[rng.integers(B)] = np.nan
        batch = TrajectoryBatch.from_rows(tokens, np.ones((B, T), bool), loss_mask, np.zeros((B, T)), rewards, G,
                                          int(state.step))
        new, metrics = learn(state, batch, jax.random.PRNGKey(i))
        unchanged = all(jax.tree.leaves(jax.tree.map(lambda a, b: bool(np.array_equal(a, b)), new, state)))
        if float(metrics["nonfinite"][0]) == 1.0 and unchanged:
            skipped_unchanged += 1
        state = new
    return {"nan_steps_skipped": skipped_unchanged, "nan_steps_injected": len(poisoned_at)}


def check_sandbox() -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "junit.xml"
        subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}",
                        "tests/rewards/test_code_sandbox.py"], cwd=ROOT, capture_output=True, text=True)
        suite = ET.parse(report).getroot()
        suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
        counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    if counts["skipped"] == counts["tests"]:
        raise RuntimeError("the sandbox tests were all skipped: bubblewrap is not available here")
    sys.path.insert(0, str(ROOT / "experiments"))
    import bench_sandbox

    speed = bench_sandbox.measure(bench_sandbox.workload(60), workers=1)
    return {"sandbox_escapes": counts["failures"] + counts["errors"], "sandbox_tests": counts,
            "sandbox_exec_per_s": speed["exec_per_s"]}


def check_multiprocess() -> dict:
    from tests.multiprocess.check import run_check, run_experiment_check

    step, experiment = run_check(), run_experiment_check()
    return {"multiprocess_equal": int(step["multiprocess_equal"] == 1 and experiment["multiprocess_equal"] == 1),
            "multiprocess_detail": {name: {k: v for k, v in result.items() if not isinstance(v, list)}
                                    for name, result in (("train_step", step), ("experiment", experiment))}}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    results: dict = {}
    for check in (check_resume, check_nan_steps, check_multiprocess, check_sandbox):
        t0 = time.perf_counter()
        results.update(check())
        print(f"{check.__name__}: {time.perf_counter() - t0:.0f} s", flush=True)
    flags = ("resume_exact", "sigterm_checkpoint", "multiprocess_equal", "nan_steps_skipped", "sandbox_escapes",
             "sandbox_exec_per_s")
    out = {k: results[k] for k in flags}
    out["details"] = {k: v for k, v in results.items() if k not in flags}
    out["machine"] = {"cores": os.cpu_count(), "load_average_end": list(os.getloadavg())}
    with open(args.out, "w") as f:
        json.dump(out, f, indent=2, default=str)
    print(f"{'flag':<22}value")
    for k in flags:
        print(f"{k:<22}{out[k]}")


if __name__ == "__main__":
    main()
