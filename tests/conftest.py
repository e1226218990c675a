"""Test-suite settings: float32 matmuls at full precision and the persistent compile cache."""

import os
import time

import jax
import pytest

# Compiled programs are cached on disk across runs: the second run of the suite skips most
# XLA compilation, which dominates the runtime of small-shape tests on a CPU.
_CACHE_DIR = os.environ.get(
    "RLJAX_COMPILE_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "rljax", "jax")
)
jax.config.update("jax_compilation_cache_dir", _CACHE_DIR)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
jax.config.update("jax_default_matmul_precision", "highest")


def pytest_sessionstart(session):
    session.config._rljax_t0 = time.perf_counter()


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    elapsed = time.perf_counter() - config._rljax_t0
    terminalreporter.write_line(f"rljax test suite: {elapsed:.1f} s wall, {os.cpu_count()} cores")


@pytest.fixture
def key():
    return jax.random.PRNGKey(0)
