"""Runs tests/multidevice in a subprocess on 8 fake CPU devices.

A JAX process fixes its device count when its backend starts, and the main suite runs on one
device; so tests that need a mesh (sharding now, generation and train steps later) live in
tests/multidevice/ and run here, in their own process where XLA_FLAGS splits the CPU into 8
devices. Add files there; this test runs them all, and passes only when every test collected
there ran and passed: a skip (say, too few devices) or a test that never reported would
otherwise hide inside an exit code of 0.
"""

import os
import subprocess
import sys
import textwrap
import threading
import xml.etree.ElementTree as ET
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


def _pytest(args: list[str], cwd: Path, env: dict) -> tuple[int, str]:
    """Runs `python -m pytest *args` in `cwd`, streaming its output (so a hang shows how far it
    got) and killing it after TIMEOUT_S. Returns (exit code, output)."""
    proc = subprocess.Popen([sys.executable, "-m", "pytest", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    watchdog = threading.Timer(TIMEOUT_S, proc.kill)
    watchdog.start()
    lines = []
    try:
        for line in proc.stdout:
            print(line, end="", flush=True)
            lines.append(line)
        returncode = proc.wait()
    finally:
        watchdog.cancel()
    return returncode, "".join(lines)


def collected_ids(output: str) -> set[str]:
    """The node ids that `pytest --collect-only -q` printed: its lines before the first blank one."""
    ids = set()
    for line in output.splitlines():
        if not line.strip():
            break
        if "::" in line:
            ids.add(line.strip())
    return ids


def _junit_name(node_id: str) -> str:
    """`node_id` as junit xml names its testcase, `classname::name`: the file's path dotted and
    without `.py`, then any classes (pytest's `mangle_test_address`; parameters kept as they are)."""
    address, bracket, params = node_id.partition("[")
    path, *names = address.split("::")
    classname = ".".join([path.removesuffix(".py").replace("/", "."), *names[:-1]])
    return f"{classname}::{names[-1]}{bracket}{params}"


def junit_problems(junit_xml: Path, expected: set[str]) -> list[str]:
    """Every way in which the run that wrote `junit_xml` falls short of all of `expected` (node
    ids) passing: a test that was skipped, failed or errored (in setup, call or teardown), one that
    never reported, and any entry that is not an expected test (a collection error). Empty when
    every expected test passed."""
    node_ids = {_junit_name(node_id): node_id for node_id in expected}
    problems, reported = [], set()
    for case in ET.parse(junit_xml).getroot().iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        node_id = node_ids.get(name, name)
        reported.add(name)
        if name not in node_ids:
            problems.append(f"{node_id}: not a collected test")
        for outcome in case:
            if outcome.tag in ("skipped", "failure", "error"):
                problems.append(f"{node_id}: {outcome.tag} ({outcome.get('message')})")
    problems += [f"{node_ids[name]}: never reported" for name in sorted(node_ids.keys() - reported)]
    return problems


def test_multidevice_suite(tmp_path):
    env = _environment()
    returncode, output = _pytest(["--collect-only", "-q", "tests/multidevice"], ROOT, env)
    expected = collected_ids(output)
    assert returncode == 0 and expected, f"collecting tests/multidevice failed:\n{output[-5000:]}"
    junit_xml = tmp_path / "multidevice.xml"
    returncode, output = _pytest(["-q", f"--junitxml={junit_xml}", "tests/multidevice"], ROOT, env)
    assert returncode == 0, f"tests/multidevice failed (exit code {returncode}):\n{output[-5000:]}"
    problems = junit_problems(junit_xml, expected)
    assert not problems, (f"{len(problems)} of {len(expected)} multi-device tests did not pass:\n"
                          + "\n".join(problems))


def test_junit_problems_name_every_test_that_did_not_pass(tmp_path):
    """The check above, on a tiny suite with one test of each outcome, run by a real pytest."""
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "test_tiny.py").write_text(textwrap.dedent("""
        import pytest

        @pytest.fixture
        def broken():
            raise RuntimeError("no fixture")

        def test_passes():
            pass

        @pytest.mark.parametrize("x", [1, "a/b.py"])
        def test_passes_with_parameters(x):
            pass

        def test_skips():
            pytest.skip("too few devices")

        def test_errors(broken):
            pass

        class TestGroup:
            def test_passes_in_a_class(self):
                pass

            def test_fails_in_a_class(self):
                assert 1 == 2
        """))
    env = dict(os.environ)
    returncode, output = _pytest(["--collect-only", "-q", "-p", "no:cacheprovider", "sub"],
                                 tmp_path, env)
    collected = collected_ids(output)
    assert returncode == 0 and len(collected) == 7, output
    junit_xml = tmp_path / "tiny.xml"
    _pytest(["-q", "-p", "no:cacheprovider", f"--junitxml={junit_xml}", "sub"], tmp_path, env)

    never_run = "sub/test_tiny.py::test_was_not_run[0]"
    problems = junit_problems(junit_xml, collected | {never_run})
    assert [p.split(" (")[0] for p in problems] == [
        "sub/test_tiny.py::test_skips: skipped",
        "sub/test_tiny.py::test_errors: error",
        "sub/test_tiny.py::TestGroup::test_fails_in_a_class: failure",
        f"{never_run}: never reported",
    ]
    assert "too few devices" in problems[0] and "no fixture" in problems[1]
    assert junit_problems(junit_xml, collected) == problems[:3]
    passing = {i for i in collected if "passes" in i}
    assert len(passing) == 4
    assert junit_problems(junit_xml, passing)[0] == "sub.test_tiny::test_skips: not a collected test"
