"""Does a 2-process run equal the 1-process run on as many devices?

Launches three `worker.py` processes at once on this machine: two joined by `jax.distributed`
(coordinator on a free local port, 4 fake CPU devices each, gloo collectives) and one alone
with 8 fake CPU devices; all run the same job on the same data=2 x fsdp=2 x tensor=2 mesh.

  run_check()              the sharded GRPO train step; equal means every parameter and every
                           metric within TOL after the steps.
  run_experiment_check()   `experiment.run` of the tiny grpo_arithmetic config: SFT, RL,
                           evaluation, checkpoints and metrics.jsonl (see its docstring).

    python -m tests.multiprocess.check [experiment]   # the result as JSON; exit code 0 iff equal

Both return a dict, for tests/test_multiprocess.py and the reliability script:
  multiprocess_equal   1 or 0
  unavailable          why it could not run here (this jax has no CPU collectives), or None
  error                a launch failure or timeout, with the tail of each process's output, or None
  seconds              wall time of the whole check
and their differences: run_check's max_param_diff, max_metric_diff, loss_multiprocess,
loss_single_process (one per step).
"""

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from tests.faults.harness import metrics
from tests.multiprocess.worker import EXIT_NO_COLLECTIVES

ROOT = Path(__file__).resolve().parents[2]
TOL = 1e-5
TIMEOUT_S = 420  # three compiling processes share the CPU; a hang still ends here
LOG_TAIL = 3000  # characters of each process's output quoted in an error


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _environment(n_devices: int, compile_cache: str | None) -> dict:
    """This environment with n fake CPU devices (replacing any device count already set)."""
    env = dict(os.environ)
    flags = [f for f in env.get("XLA_FLAGS", "").split() if not f.startswith("--xla_force_host_platform_device_count")]
    env["XLA_FLAGS"] = " ".join(flags + [f"--xla_force_host_platform_device_count={n_devices}"])
    env["JAX_PLATFORMS"] = "cpu"
    if compile_cache:
        env["RLJAX_COMPILE_CACHE"] = compile_cache
    return env


def _launch(tmp: Path, job: str, compile_cache: str | None) -> dict:
    """name -> (Popen, log path, output directory) for the reference and the two joined processes
    of worker `job` (the joined ones share their output directory)."""
    coordinator = f"127.0.0.1:{_free_port()}"
    commands = {"single process": (8, [], tmp / "single")}
    for i in range(2):
        commands[f"process {i} of 2"] = (4, ["--num-processes", "2", "--process-id", str(i),
                                            "--coordinator", coordinator], tmp / "joined")
    launched = {}
    for n, (name, (n_devices, extra, out)) in enumerate(commands.items()):
        log = tmp / f"{n}.log"
        with open(log, "w") as log_file:
            proc = subprocess.Popen([sys.executable, "-m", "tests.multiprocess.worker", "--job", job,
                                     "--out", str(out), *extra],
                                    cwd=ROOT, env=_environment(n_devices, compile_cache), stdout=log_file,
                                    stderr=subprocess.STDOUT)
        launched[name] = (proc, log, out)
    return launched


def _wait(launched: dict, timeout_s: float) -> dict:
    """name -> exit code, or None for a process killed before it ended.

    The first failure ends the wait: a process whose peer died would otherwise block in a
    collective until jax.distributed's heartbeat timeout or the deadline.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        codes = {name: proc.poll() for name, (proc, _, _) in launched.items()}
        failed = any(c not in (None, 0) for c in codes.values())
        if failed or all(c == 0 for c in codes.values()) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    for proc, _, _ in launched.values():
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return codes


def _report(launched: dict, codes: dict) -> str:
    parts = []
    for name, (_, log, _) in launched.items():
        code = "killed (timeout or a peer's failure)" if codes[name] is None else f"exit code {codes[name]}"
        parts.append(f"--- {name}: {code}; its output ends:\n{log.read_text()[-LOG_TAIL:]}")
    return "\n".join(parts)


def _run_job(job: str, compare, timeout_s: float, compile_cache: str | None) -> dict:
    """Launches worker `job` as one process and as two (see `_launch`), and returns
    compare(single output directory, joined output directory) with the launch's outcome."""
    start = time.monotonic()
    result = {"multiprocess_equal": 0, "unavailable": None, "error": None}
    with tempfile.TemporaryDirectory() as tmp:
        launched = _launch(Path(tmp), job, compile_cache)
        codes = _wait(launched, timeout_s)
        if EXIT_NO_COLLECTIVES in codes.values():
            name = next(n for n, c in codes.items() if c == EXIT_NO_COLLECTIVES)
            result["unavailable"] = launched[name][1].read_text().strip().splitlines()[-1]
        elif any(c != 0 for c in codes.values()):
            result["error"] = "a process failed or hung\n" + _report(launched, codes)
        else:
            result.update(compare(launched["single process"][2], launched["process 0 of 2"][2]))
    result["seconds"] = round(time.monotonic() - start, 1)
    return result


def run_check(timeout_s: float = TIMEOUT_S, compile_cache: str | None = None) -> dict:
    """Runs the comparison of the sharded train step (see the module docstring); compile_cache
    defaults to the RLJAX_COMPILE_CACHE of this environment, which the workers read as the test
    suite does."""
    return _run_job("step", _compare_steps, timeout_s, compile_cache)


def _compare_steps(single: Path, joined: Path) -> dict:
    single, multi = dict(np.load(single / "step.npz")), dict(np.load(joined / "step.npz"))
    if single.keys() != multi.keys():
        return {"error": f"different outputs: {sorted(single.keys() ^ multi.keys())}"}
    diffs = {k: float(np.max(np.abs(single[k] - multi[k]))) for k in single}
    param_diff = max(d for k, d in diffs.items() if k.startswith("['params']"))
    metric_diff = max(d for k, d in diffs.items() if k.startswith("['metrics']"))
    losses = lambda out: [float(v) for k, v in sorted(out.items()) if k.endswith("['loss']")]  # noqa: E731
    return {"multiprocess_equal": int(param_diff < TOL and metric_diff < TOL), "max_param_diff": param_diff,
            "max_metric_diff": metric_diff, "loss_multiprocess": losses(multi),
            "loss_single_process": losses(single), "tolerance": TOL}


def run_experiment_check(timeout_s: float = TIMEOUT_S, compile_cache: str | None = None) -> dict:
    """`experiment.run` of the tiny grpo_arithmetic config on 2 processes x 4 devices against 1
    process x 8 devices, both on data=2 x fsdp=2 x tensor=2:
      multiprocess_equal   1 when every process decoded the reference's completions, metrics.jsonl
                           (in the workdir the processes share, so written by process 0 alone) has
                           the reference's rows, rewards, lengths and accuracies exactly, every
                           other metric and the final RL params within TOL (`_relative`), and
                           results.json was written
      max_loss_diff, max_metric_diff, max_param_diff   largest relative differences
      completions          how many completions each run decoded
      mismatches           what differed, or []
    """
    _prepare_task()
    return _run_job("experiment", _compare_experiments, timeout_s, compile_cache)


def _prepare_task() -> None:
    """The task's splits prepared into the data dir before the runs, which would otherwise all
    prepare them at once on a fresh machine (the joined processes take turns; the reference
    does not know of them)."""
    from rljax.data.tasks import load_task
    from tests.multiprocess.problem import experiment_config

    task = experiment_config({}).task
    for split in ("train", "test"):
        load_task(task.name, split, data_dir=task.data_dir, **task.knobs)


# metrics.jsonl columns compared exactly (by a part of their name): what the sampled tokens decide.
EXACT = ("step", "reward", "response_length", "accuracy", "sampling_rounds", "informative_group_frac",
         "nonfinite")
SCALE = 1e-2  # differences of values smaller than this count relative to it (see `_relative`)
# Columns that are float32 rounding themselves (the gap between the sampler's and the trainer's
# log-probs of the same tokens, about 1e-6): compared absolutely.
ROUNDING = ("mismatch/",)


def _compare_experiments(single: Path, joined: Path) -> dict:
    mismatches = []
    want_texts = json.loads((single / "texts.0.json").read_text())
    for process in range(2):
        if json.loads((joined / f"texts.{process}.json").read_text()) != want_texts:
            mismatches.append(f"the completions decoded by process {process}")
    want_rows, got_rows = metrics(single / "workdir"), metrics(joined / "workdir")
    if [sorted(r) for r in got_rows] != [sorted(r) for r in want_rows]:
        return {"error": f"metrics.jsonl has other rows or keys: {len(got_rows)} rows, {len(want_rows)} wanted"}
    relative = {}
    for want, got in zip(want_rows, got_rows):
        for key, value in want.items():
            if any(part in key for part in EXACT):
                if got[key] != value:
                    mismatches.append(f"{key} at step {want['step']}: {got[key]} != {value}")
            else:
                scale = 1.0 if any(part in key for part in ROUNDING) else SCALE
                relative[key] = max(relative.get(key, 0.0), _relative(got[key], value, scale))
    want_params, got_params = np.load(single / "params.npz"), np.load(joined / "params.npz")
    param_diff = max(_relative(got_params[k], want_params[k]) for k in want_params.files)
    mismatches += [f"{k}: relative difference {d:.1e}" for k, d in relative.items() if d > TOL]
    if param_diff > TOL:
        mismatches.append(f"params: relative difference {param_diff:.1e}")
    if not (joined / "workdir" / "results.json").exists():
        mismatches.append("process 0 wrote no results.json")
    loss_keys = [k for k in relative if k.endswith("loss")]
    return {"multiprocess_equal": int(not mismatches), "mismatches": mismatches,
            "max_loss_diff": max(relative[k] for k in loss_keys),
            "max_metric_diff": max(relative.values()), "max_param_diff": param_diff,
            "completions": sum(map(len, want_texts)), "tolerance": TOL}


def _relative(got, want, scale: float = SCALE) -> float:
    """Largest |got - want| / max(|want|, scale): relative, except for values near 0 (a KL of
    1e-9, a parameter that passed through 0), whose rounding no relative tolerance bounds."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.max(np.abs(got - want) / np.maximum(np.abs(want), scale), initial=0.0))


if __name__ == "__main__":
    outcome = run_experiment_check() if sys.argv[1:] == ["experiment"] else run_check()
    print(json.dumps(outcome, indent=2))
    sys.exit(0 if outcome["multiprocess_equal"] else 1)
