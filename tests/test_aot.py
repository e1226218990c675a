"""Runs tests/aot in a subprocess: ahead-of-time compiles for a TPU topology, on this CPU host.

libtpu (the test extra's `jax[tpu]`) gives compile-only TPU devices
(`jax.experimental.topologies`); it is loaded in that subprocess alone, so the CPU backend of
this process (tests/conftest.py: JAX_PLATFORMS=cpu) never meets it. The subprocess also has 8
fake CPU devices, for the generation layout's numerics on a CPU mesh. Skipped, saying why, only
where libtpu is not installed (a platform without a libtpu wheel); this test passes only when
every test collected there ran and passed (`tests/test_multidevice.py`'s check).
"""

import importlib.util
import os
import time

import pytest

from tests.test_multidevice import ROOT, _pytest, collected_ids, junit_problems

BUDGET_S = 60  # the whole subprocess, compiles included (issue 21)


def environment() -> dict:
    env = dict(os.environ)
    env.update(JAX_PLATFORMS="cpu", RLJAX_AOT="1", ALLOW_MULTIPLE_LIBTPU_LOAD="1")
    env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=8".strip()
    return env


def test_aot_suite(tmp_path):
    if importlib.util.find_spec("libtpu") is None:
        pytest.skip('libtpu is not installed (pip install "jax[tpu]", part of the test extra); '
                    "it has no wheel for this platform")
    env = environment()
    returncode, output = _pytest(["--collect-only", "-q", "tests/aot"], ROOT, env)
    expected = collected_ids(output)
    assert returncode == 0 and expected, f"collecting tests/aot failed:\n{output[-5000:]}"
    junit_xml = tmp_path / "aot.xml"
    t0 = time.perf_counter()
    returncode, output = _pytest(["-q", f"--junitxml={junit_xml}", "tests/aot"], ROOT, env)
    elapsed = time.perf_counter() - t0
    assert returncode == 0, f"tests/aot failed (exit code {returncode}):\n{output[-5000:]}"
    problems = junit_problems(junit_xml, expected)
    assert not problems, f"{len(problems)} of {len(expected)} AOT tests did not pass:\n" + "\n".join(problems)
    assert elapsed < BUDGET_S, f"tests/aot took {elapsed:.0f} s, over its {BUDGET_S} s budget"
