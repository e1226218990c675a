"""Runs tests/multidevice in a subprocess on 8 fake CPU devices.

A JAX process fixes its device count when its backend starts, and the main suite runs on one
device; so tests that need a mesh (sharding now, generation and train steps later) live in
tests/multidevice/ and run here, in their own process where XLA_FLAGS splits the CPU into 8
devices. Add files there; this test runs them all.
"""

import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import jax

ROOT = Path(__file__).resolve().parents[1]
N_DEVICES = 8
TIMEOUT_S = 900


def _environment() -> dict:
    env = dict(os.environ)
    flag = f"--xla_force_host_platform_device_count={N_DEVICES}"
    env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {flag}".strip()
    env["JAX_PLATFORMS"] = "cpu"
    # The same persistent compile cache as this process (tests/conftest.py reads this variable).
    if jax.config.jax_compilation_cache_dir:
        env["RLJAX_COMPILE_CACHE"] = jax.config.jax_compilation_cache_dir
    return env


def test_multidevice_suite():
    proc = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-q", "tests/multidevice"],
        cwd=ROOT, env=_environment(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    watchdog = threading.Timer(TIMEOUT_S, proc.kill)
    watchdog.start()
    lines = []
    try:
        for line in proc.stdout:  # streamed, so a hang shows how far it got
            print(line, end="", flush=True)
            lines.append(line)
        returncode = proc.wait()
    finally:
        watchdog.cancel()
    output = "".join(lines)
    assert returncode == 0, f"tests/multidevice failed (exit code {returncode}):\n{output[-5000:]}"
    passed = re.search(r"(\d+) passed", output)
    assert passed and int(passed.group(1)) > 0, f"no multi-device test ran:\n{output[-5000:]}"
