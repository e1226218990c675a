"""Interrupted runs of `experiments/train.py` compared with an uninterrupted one.

Used by tests/faults/test_interruptions.py and by experiments/reliability.py. Every run is a
subprocess of the real CLI on a tiny config (SFT then GRPO, a checkpoint after every iteration),
so a kill lands in a real process at a real point of the loop. Runs are deterministic on CPU, so
a resumed run must end with exactly the parameters and metrics of the uninterrupted one.

Every random choice (when to kill) comes from `random.Random(seed)`, the seed a parameter that
defaults to $RLJAX_FAULT_SEED, else DEFAULT_SEED; the seed and the choices are printed and
returned, so that a failure can be replayed with `RLJAX_FAULT_SEED=<seed>`.
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

from rljax.train.metrics import TORN_WRITE_ENV

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "grpo_arithmetic.py"
SFT_STEPS, RL_STEPS = 4, 4
TINY = [
    "--config.model.overrides.d_model=32", "--config.model.overrides.n_layers=1",
    "--config.model.overrides.n_heads=2", "--config.model.overrides.n_kv_heads=1",
    "--config.model.overrides.head_dim=16", "--config.model.overrides.mlp_dim=64",
    "--config.task.knobs.train_size=200", "--config.task.knobs.test_size=20",
    f"--config.sft.steps={SFT_STEPS}", "--config.sft.batch_size=4", "--config.sft.optim.warmup_steps=1",
    f"--config.rl.steps={RL_STEPS}", "--config.rl.prompts_per_step=2", "--config.rl.group_size=2",
    "--config.rl.sampling.max_new_tokens=4", "--config.rl.minibatches=1",
    "--config.task.validation_size=4", "--config.eval.every=2", "--config.eval.num_examples=2",
    "--config.eval.batch_size=2",
    "--config.checkpoint.every=1", "--config.checkpoint.keep=2",
    "--config.log.progress=False", "--config.log.tensorboard=False",
]
# Wall-clock figures differ between runs; everything else in metrics.jsonl must not.
TIMING = ("time/", "_per_s", "_seconds")
TIMEOUT_S = 300
SEED_ENV = "RLJAX_FAULT_SEED"
DEFAULT_SEED = 0


def _command(workdir: Path, extra=()) -> list[str]:
    return [sys.executable, str(ROOT / "experiments" / "train.py"), f"--config={CONFIG}",
            f"--workdir={workdir}", *TINY, *extra]


def fault_seed(seed: int | None = None) -> int:
    """`seed`, else $RLJAX_FAULT_SEED, else DEFAULT_SEED."""
    if seed is not None:
        return seed
    value = os.environ.get(SEED_ENV, "")
    try:
        return int(value) if value else DEFAULT_SEED
    except ValueError:
        raise ValueError(f"{SEED_ENV}={value!r} is not an integer seed; unset it or give an int") from None


def _announce(seed: int, choice: str) -> None:
    print(f"fault harness: seed {seed}: {choice} (replay with {SEED_ENV}={seed})", flush=True)


def _environment(extra: dict | None = None) -> dict:
    """The runs' environment: CPU, this checkout, and `extra`; a fault hook only when in `extra`."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    env.pop(TORN_WRITE_ENV, None)
    env.update(extra or {})
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
    """The rows of metrics.jsonl, numbers only: without wall-clock figures, and without the
    "stage" label (`stages` gives those)."""
    rows = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
    return [{k: v for k, v in row.items() if k != "stage" and not any(t in k for t in TIMING)} for row in rows]


def stages(workdir: Path) -> list[str | None]:
    """The "stage" of each row of metrics.jsonl."""
    return [json.loads(line).get("stage") for line in open(workdir / "metrics.jsonl")]


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
    if stages(reference) != stages(other):
        problems.append(f"row stages differ: {stages(reference)} vs {stages(other)}")
    return problems


# Rows of metrics.jsonl in a finished run: SFT steps, the evaluation before RL, RL iterations.
TOTAL_ROWS = SFT_STEPS + 1 + RL_STEPS
# The row count at which the RL stage has logged its first row (the evaluation of the SFT
# policy) but has no checkpoint yet.
RL_STAGE_STARTED = SFT_STEPS + 1
# The steps (x of metrics.jsonl, one row each) the RL stage logs: where a torn write is injected.
# The RL stage writes an iteration's row before it saves that iteration, so a torn row is always
# logged again on resume. The SFT stage writes a step's row one iteration late, while the save of
# that step may already be under way: whether its torn row is logged again depends on whether
# that save committed before the kill.
RL_ROW_STEPS = range(SFT_STEPS, TOTAL_ROWS)


def interrupt_and_resume(reference: Path, workdir: Path, signals=(signal.SIGTERM, signal.SIGKILL),
                         seed: int | None = None, at: tuple[int, ...] | None = None) -> dict:
    """Sends each of `signals`, in order, to a run of `workdir` once its metrics.jsonl has the
    row counts `at` (default: drawn with `random.Random(fault_seed(seed))`, each later than the
    one before; every signal hits a fresh start of the run), resumes it to the end, and compares
    it with the finished `reference`.

    Returns {"seed", "kills": [(signal, after_rows, exit_code)], "differences": [...], "stderr"}."""
    seed = fault_seed(seed)
    points = at if at is not None else sorted(random.Random(seed).sample(range(1, TOTAL_ROWS), len(signals)))
    if len(points) != len(signals):
        raise ValueError(f"{len(signals)} signals but {len(points)} kill points")
    _announce(seed, ", ".join(f"{signal.Signals(sig).name} after {after} rows" for sig, after in zip(signals, points)))
    kills, stderr = [], ""
    for sig, after in zip(signals, points):
        killed = run_and_signal(workdir, sig, after)
        kills.append((signal.Signals(sig).name, after, killed.returncode))
        stderr += killed.stderr[-1500:]
    run(workdir)
    return {"seed": seed, "kills": kills, "differences": differences(reference, workdir), "stderr": stderr}


def torn_write_and_resume(reference: Path, workdir: Path, step: int | None = None, seed: int | None = None) -> dict:
    """Runs `workdir` with the metrics logger's fault hook (rljax.train.metrics.TORN_WRITE_ENV):
    logging `step` (default: drawn from RL_ROW_STEPS with `random.Random(fault_seed(seed))`)
    writes half its line and SIGKILLs the run. Then resumes it to the end and compares it with
    the finished `reference`.

    Returns {"seed", "step", "exit_code", "torn_tail" (what followed the last newline of
    metrics.jsonl after the kill), "differences", "stderr" (of the killed run), "resume_stderr"}."""
    seed = fault_seed(seed)
    step = step if step is not None else random.Random(seed).choice(RL_ROW_STEPS)
    _announce(seed, f"SIGKILL in the middle of writing the metrics row of step {step}")
    killed = subprocess.run(_command(workdir), env=_environment({TORN_WRITE_ENV: str(step)}), capture_output=True,
                            text=True, timeout=TIMEOUT_S)
    torn_tail = (workdir / "metrics.jsonl").read_text().rsplit("\n", 1)[-1]
    resumed = run(workdir)
    return {"seed": seed, "step": step, "exit_code": killed.returncode, "torn_tail": torn_tail,
            "differences": differences(reference, workdir), "stderr": killed.stderr[-1500:],
            "resume_stderr": resumed.stderr[-3000:]}


if __name__ == "__main__":  # python -m tests.faults.harness: the check as JSON
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        run(Path(tmp) / "reference")
        result = interrupt_and_resume(Path(tmp) / "reference", Path(tmp) / "interrupted")
        torn = torn_write_and_resume(Path(tmp) / "reference", Path(tmp) / "torn")
    print(json.dumps({"interrupted": {k: v for k, v in result.items() if k != "stderr"},
                      "torn_write": {k: v for k, v in torn.items() if "stderr" not in k}}, indent=2))
