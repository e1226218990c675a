"""Interrupted runs of `experiments/train.py` compared with an uninterrupted one.

Used by tests/faults/test_interruptions.py and by experiments/reliability.py. Every run is a
subprocess of the real CLI on a tiny config (SFT then GRPO, a checkpoint after every iteration),
so a kill lands in a real process at a real point of the loop. Runs are deterministic on CPU, so
a resumed run must end with exactly the parameters and metrics of the uninterrupted one.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "grpo_arithmetic.py"
SFT_STEPS, RL_STEPS = 4, 4
TINY = [
    "--config.model.overrides.d_model=32", "--config.model.overrides.n_layers=1",
    "--config.model.overrides.n_heads=2", "--config.model.overrides.n_kv_heads=1",
    "--config.model.overrides.head_dim=16", "--config.model.overrides.mlp_dim=64",
    "--config.task.knobs.train_size=200", "--config.task.knobs.test_size=20",
    f"--config.sft.steps={SFT_STEPS}", "--config.sft.batch_size=4", "--config.sft.warmup_steps=1",
    f"--config.rl.steps={RL_STEPS}", "--config.rl.prompts_per_step=2", "--config.rl.group_size=2",
    "--config.rl.max_new_tokens=4", "--config.rl.minibatches=1",
    "--config.eval.every=2", "--config.eval.num_examples=2", "--config.eval.batch_size=2",
    "--config.checkpoint.every=1", "--config.checkpoint.keep=2",
    "--config.log.progress=False", "--config.log.tensorboard=False",
]
# Wall-clock figures differ between runs; everything else in metrics.jsonl must not.
TIMING = ("time/", "_per_s", "_seconds")
TIMEOUT_S = 300


def _command(workdir: Path, extra=()) -> list[str]:
    return [sys.executable, str(ROOT / "experiments" / "train.py"), f"--config={CONFIG}",
            f"--workdir={workdir}", *TINY, *extra]


def _environment() -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    import jax

    if jax.config.jax_compilation_cache_dir:  # share the test process's compile cache
        env["RLJAX_COMPILE_CACHE"] = jax.config.jax_compilation_cache_dir
    return env


def run(workdir: Path, extra=()) -> subprocess.CompletedProcess:
    """One run to its end; raises with the run's output if it fails."""
    proc = subprocess.run(_command(workdir, extra), env=_environment(), capture_output=True, text=True,
                          timeout=TIMEOUT_S)
    if proc.returncode != 0:
        raise RuntimeError(f"run in {workdir} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return proc


def _rows(workdir: Path) -> int:
    path = workdir / "metrics.jsonl"
    return sum(1 for _ in open(path)) if path.exists() else 0


def run_and_signal(workdir: Path, sig: int, after_rows: int) -> subprocess.CompletedProcess:
    """Starts a run and sends it `sig` once metrics.jsonl has `after_rows` rows; returns the
    finished process (its output read) whatever its exit status."""
    proc = subprocess.Popen(_command(workdir), env=_environment(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + TIMEOUT_S
    while proc.poll() is None and _rows(workdir) < after_rows and time.monotonic() < deadline:
        time.sleep(0.02)
    if proc.poll() is None:
        proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=TIMEOUT_S)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def final_state(workdir: Path) -> dict[str, np.ndarray]:
    """The arrays of the last RL checkpoint, by path in the state pytree."""
    import jax
    import orbax.checkpoint as ocp

    directory = workdir / "checkpoints" / "rl" / str(RL_STEPS) / "state"
    tree = ocp.PyTreeCheckpointer().restore(str(directory))
    return {jax.tree_util.keystr(path): np.asarray(x) for path, x in jax.tree_util.tree_leaves_with_path(tree)}


def metrics(workdir: Path) -> list[dict]:
    rows = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
    return [{k: v for k, v in row.items() if not any(t in k for t in TIMING)} for row in rows]


def differences(reference: Path, other: Path) -> list[str]:
    """What differs between two finished runs (empty when they are identical)."""
    problems = []
    want, got = final_state(reference), final_state(other)
    if want.keys() != got.keys():
        problems.append(f"state leaves differ: {sorted(want.keys() ^ got.keys())}")
    problems += [f"{k}: max |diff| {np.max(np.abs(want[k].astype(float) - got[k].astype(float)))}"
                 for k in want.keys() & got.keys() if not np.array_equal(want[k], got[k])]
    rows_want, rows_got = metrics(reference), metrics(other)
    if rows_want != rows_got:
        diff = [(a, b) for a, b in zip(rows_want, rows_got) if a != b][:2]
        problems.append(f"metrics differ ({len(rows_want)} vs {len(rows_got)} rows), first: {diff}")
    return problems


# Rows of metrics.jsonl in a finished run: SFT steps, the evaluation before RL, RL iterations.
TOTAL_ROWS = SFT_STEPS + 1 + RL_STEPS
# The row count at which the RL stage has logged its first row (the evaluation of the SFT
# policy) but has no checkpoint yet.
RL_STAGE_STARTED = SFT_STEPS + 1


def interrupt_and_resume(reference: Path, workdir: Path, signals=(signal.SIGTERM, signal.SIGKILL),
                         seed: int | None = None, at: tuple[int, ...] | None = None) -> dict:
    """Sends each of `signals`, in order, to a run of `workdir` once its metrics.jsonl has the
    row counts `at` (default: random, each later than the one before; every signal hits a fresh
    start of the run), resumes it to the end, and compares it with the finished `reference`.

    Returns {"kills": [(signal, after_rows, exit_code)], "differences": [...], "stderr": ...}."""
    points = at if at is not None else sorted(random.Random(seed).sample(range(1, TOTAL_ROWS), len(signals)))
    if len(points) != len(signals):
        raise ValueError(f"{len(signals)} signals but {len(points)} kill points")
    kills, stderr = [], ""
    for sig, after in zip(signals, points):
        killed = run_and_signal(workdir, sig, after)
        kills.append((signal.Signals(sig).name, after, killed.returncode))
        stderr += killed.stderr[-1500:]
    run(workdir)
    return {"kills": kills, "differences": differences(reference, workdir), "stderr": stderr}


if __name__ == "__main__":  # python -m tests.faults.harness: the check as JSON
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        run(Path(tmp) / "reference")
        result = interrupt_and_resume(Path(tmp) / "reference", Path(tmp) / "interrupted")
    print(json.dumps({k: v for k, v in result.items() if k != "stderr"}, indent=2))
