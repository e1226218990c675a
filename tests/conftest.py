"""Test-suite settings: the CPU backend, float32 matmuls at full precision, the persistent compile
cache, and the `sandbox` marker for tests that run programs in the bubblewrap sandbox."""

import functools
import os
import time

# The suite runs on the CPU. With libtpu installed (the test extra's `jax[tpu]`, for tests/aot/)
# JAX would first try to start a TPU backend, which on a host without TPUs only costs time and
# takes libtpu's lock; so JAX is told its platform before it starts any backend (set in the
# environment, subprocesses that tests start inherit it). An explicit JAX_PLATFORMS wins.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_platforms", os.environ["JAX_PLATFORMS"])  # also if a plugin imported jax first

# Compiled programs are cached on disk across runs: the second run of the suite skips most
# XLA compilation, which dominates the runtime of small-shape tests on a CPU.
_CACHE_DIR = os.environ.get(
    "RLJAX_COMPILE_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "rljax", "jax")
)
jax.config.update("jax_compilation_cache_dir", _CACHE_DIR)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
jax.config.update("jax_default_matmul_precision", "highest")


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "sandbox: runs programs in the bubblewrap sandbox (rljax.rewards.sandbox); "
        "skipped where it is unavailable, a failure when CI=true")


@functools.cache
def _sandbox_problem() -> str | None:
    """Why the bubblewrap sandbox cannot run here (the SandboxUnavailableError's message), or None.
    Checked once per test process."""
    from rljax.rewards import SandboxUnavailableError, check_sandbox

    try:
        check_sandbox()
    except SandboxUnavailableError as e:
        return str(e)
    return None


def pytest_runtest_setup(item):
    """A `sandbox`-marked test without a usable sandbox is skipped with the reason, except under
    CI=true, where it fails: there a missing bubblewrap must not pass as a green run."""
    if item.get_closest_marker("sandbox") and (problem := _sandbox_problem()):
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true and the bubblewrap sandbox is unavailable: {problem}",
                        pytrace=False)
        pytest.skip(f"no bubblewrap sandbox: {problem}")


def pytest_sessionstart(session):
    session.config._rljax_t0 = time.perf_counter()


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    elapsed = time.perf_counter() - config._rljax_t0
    terminalreporter.write_line(f"rljax test suite: {elapsed:.1f} s wall, {os.cpu_count()} cores")


@pytest.fixture
def key():
    return jax.random.PRNGKey(0)


@pytest.fixture(scope="session")
def smollm2_tokenizer():
    """rljax's tokenizer of the embedded SmolLM2-135M-Instruct GGUF."""
    from rljax.models.gguf import load_gguf_tokenizer, smollm2_gguf_path

    return load_gguf_tokenizer(smollm2_gguf_path())


@pytest.fixture(scope="session")
def hf_smollm2_tokenizer():
    """transformers' tokenizer of the same GGUF (for parity tests)."""
    transformers = pytest.importorskip("transformers")
    from rljax.models.gguf import smollm2_gguf_path

    directory, name = os.path.split(smollm2_gguf_path())
    return transformers.AutoTokenizer.from_pretrained(directory, gguf_file=name)
