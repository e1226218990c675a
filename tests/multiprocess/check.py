"""Does a 2-process run of the sharded GRPO step equal the 1-process run on as many devices?

Launches three `worker.py` processes at once on this machine: two joined by `jax.distributed`
(coordinator on a free local port, 4 fake CPU devices each, gloo collectives) and one alone
with 8 fake CPU devices; all run the same steps on the same data=2 x fsdp=2 x tensor=2 mesh.
Equal means every parameter and every metric within TOL after the steps.

    python -m tests.multiprocess.check     # prints the result as JSON; exit code 0 iff equal

`run_check()` returns the same dict, for tests/test_multiprocess.py and the reliability script:
  multiprocess_equal   1 or 0
  max_param_diff, max_metric_diff, loss_multiprocess, loss_single_process (one per step)
  unavailable          why it could not run here (this jax has no CPU collectives), or None
  error                a launch failure or timeout, with the tail of each process's output, or None
  seconds              wall time of the whole check
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


def _launch(tmp: Path, compile_cache: str | None) -> dict:
    """name -> (Popen, log path, output path) for the reference and the two joined processes."""
    coordinator = f"127.0.0.1:{_free_port()}"
    commands = {"single process": (8, [])}
    for i in range(2):
        commands[f"process {i} of 2"] = (4, ["--num-processes", "2", "--process-id", str(i),
                                            "--coordinator", coordinator])
    launched = {}
    for n, (name, (n_devices, extra)) in enumerate(commands.items()):
        out, log = tmp / f"{n}.npz", tmp / f"{n}.log"
        with open(log, "w") as log_file:
            proc = subprocess.Popen([sys.executable, "-m", "tests.multiprocess.worker", "--out", str(out), *extra],
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


def run_check(timeout_s: float = TIMEOUT_S, compile_cache: str | None = None) -> dict:
    """Runs the comparison (see the module docstring); compile_cache defaults to the
    RLJAX_COMPILE_CACHE of this environment, which the workers read as the test suite does."""
    start = time.monotonic()
    result = {"multiprocess_equal": 0, "unavailable": None, "error": None}
    with tempfile.TemporaryDirectory() as tmp:
        launched = _launch(Path(tmp), compile_cache)
        codes = _wait(launched, timeout_s)
        if EXIT_NO_COLLECTIVES in codes.values():
            name = next(n for n, c in codes.items() if c == EXIT_NO_COLLECTIVES)
            result["unavailable"] = launched[name][1].read_text().strip().splitlines()[-1]
        elif any(c != 0 for c in codes.values()):
            result["error"] = "a process failed or hung\n" + _report(launched, codes)
        else:
            single = dict(np.load(launched["single process"][2]))
            multi = dict(np.load(launched["process 0 of 2"][2]))
            result.update(_compare(single, multi))
    result["seconds"] = round(time.monotonic() - start, 1)
    return result


def _compare(single: dict, multi: dict) -> dict:
    if single.keys() != multi.keys():
        return {"error": f"different outputs: {sorted(single.keys() ^ multi.keys())}"}
    diffs = {k: float(np.max(np.abs(single[k] - multi[k]))) for k in single}
    param_diff = max(d for k, d in diffs.items() if k.startswith("['params']"))
    metric_diff = max(d for k, d in diffs.items() if k.startswith("['metrics']"))
    losses = lambda out: [float(v) for k, v in sorted(out.items()) if k.endswith("['loss']")]  # noqa: E731
    return {"multiprocess_equal": int(param_diff < TOL and metric_diff < TOL), "max_param_diff": param_diff,
            "max_metric_diff": metric_diff, "loss_multiprocess": losses(multi),
            "loss_single_process": losses(single), "tolerance": TOL}


if __name__ == "__main__":
    outcome = run_check()
    print(json.dumps(outcome, indent=2))
    sys.exit(0 if outcome["multiprocess_equal"] else 1)
