"""The code-execution sandbox against hostile programs: each must come back quickly, not pass,
and leave the host (this test process, its files, its sockets, its other processes) untouched.

A hostile program here "wins" when its tests pass: each test asserts what would be true only if
the sandbox had leaked (the host file's secret was read, the host listener accepted, ...).
"""

import os
import socket
import subprocess
import sys
import tempfile
import time

import pytest

from rljax.rewards import sandbox
from rljax.rewards.sandbox import SandboxUnavailableError, run_code

FAST_S = 5.0  # every hostile run must return within this (its own timeout is 2 s)


def _sandbox_processes() -> list[int]:
    """Host pids (zombies included) under one of this process's sandbox uids (only meaningful
    for a root host; other test workers use other uids)."""
    first = sandbox._SLOTS.base
    pids = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if first <= entry.stat().st_uid < first + sandbox.MAX_CONCURRENT:
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids


def _hostile(program: str, tests: str = "", **kwargs):
    start = time.monotonic()
    result = run_code(program, tests, timeout_s=kwargs.pop("timeout_s", 2.0), **kwargs)
    elapsed = time.monotonic() - start
    assert elapsed < FAST_S, f"took {elapsed:.1f} s: {result}"
    assert not result.passed, result
    deadline = time.monotonic() + 2.0
    while os.geteuid() == 0 and _sandbox_processes() and time.monotonic() < deadline:
        time.sleep(0.05)
    if os.geteuid() == 0:
        assert not _sandbox_processes(), "sandbox processes outlived run_code"
    return result


@pytest.mark.sandbox
def test_a_correct_program_passes_and_a_wrong_one_fails():
    tests = "assert f(1) == 5\nassert f(-2) == -4"
    ok = run_code("def f(x): return 3 * x + 2", tests)
    assert ok.passed and ok.status == "passed" and ok.returncode == 0
    wrong = run_code("def f(x): return 3 * x", tests)
    assert not wrong.passed and wrong.status == "failed" and "AssertionError" in wrong.detail
    broken = run_code("def f(x) return x", tests)
    assert broken.status == "error" and "SyntaxError" in broken.detail
    missing = run_code("def g(x): return 3 * x + 2", tests)
    assert missing.status == "error" and "NameError" in missing.detail


@pytest.mark.sandbox
def test_output_is_captured_and_the_program_sees_a_bare_system():
    result = run_code("import os, sys\nprint('hello')\nprint('oops', file=sys.stderr)\n"
                      "entries = sorted(os.listdir('/'))\nuid = os.getuid()",
                      "assert 'etc' not in entries and 'root' not in entries and 'work' not in entries"
                      "\nassert 'home' not in entries")
    assert result.passed, result
    assert result.stdout == "hello\n" and result.stderr == "oops\n"


@pytest.mark.sandbox
def test_exiting_early_is_not_a_pass():
    assert _hostile("import os\nos._exit(0)", "assert False").status == "crashed"
    assert _hostile("import sys\nsys.exit(0)", "assert False").status == "error"


@pytest.mark.sandbox
def test_infinite_loop_is_killed():
    assert _hostile("while True:\n    pass").status == "timeout"


@pytest.mark.sandbox
def test_sleeping_forever_is_killed():
    assert _hostile("import time\ntime.sleep(1000)").status == "timeout"


@pytest.mark.sandbox
def test_memory_bomb_is_refused():
    assert _hostile("x = bytearray(8 * 2 ** 30)").status == "memory"
    grow = "chunks = []\nwhile True:\n    chunks.append(bytearray(10 ** 7))"
    assert _hostile(grow, memory_mb=128).status == "memory"


@pytest.mark.sandbox
def test_fork_bomb_is_capped():
    # Gives up at the first failed fork ...
    assert _hostile("import os\nwhile True:\n    os.fork()").status in ("error", "crashed")
    # ... or keeps forking through failures until the wall clock ends it.
    stubborn = ("import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n"
                "        pass")
    assert _hostile(stubborn).status in ("timeout", "crashed")


@pytest.mark.sandbox
def test_host_files_cannot_be_read(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("hunter2")
    program = ("found = []\n"
               f"for path in [{str(secret)!r}, '/etc/shadow', '/etc/passwd', "
               f"{os.path.abspath(__file__)!r}, os.path.expanduser('~/.bashrc')]:\n"
               "    try:\n        found.append(open(path).read())\n    except OSError:\n"
               "        pass\n")
    result = _hostile("import os\n" + program, "assert found, 'nothing readable'")
    assert result.status == "failed" and "nothing readable" in result.detail


@pytest.mark.sandbox
def test_host_files_cannot_be_written(tmp_path):
    targets = [str(tmp_path / "escaped.txt"), "/tmp/rljax-escaped.txt",
               os.path.join(os.path.dirname(os.path.abspath(__file__)), "escaped.txt")]
    program = ("written = []\n"
               f"for path in {targets!r} + ['/usr/escaped.txt', '/escaped.txt']:\n"
               "    try:\n        open(path, 'w').write('x')\n        written.append(path)\n"
               "    except OSError:\n        pass\n")
    result = _hostile(program, "assert written and not written[0].startswith('/tmp/rljax')")
    assert result.status == "failed"
    for path in targets:
        assert not os.path.exists(path), path
    # The private /tmp is writable but capped, and vanishes with the run.
    fill = _hostile("open('/tmp/big', 'wb').write(b'x' * (64 << 20))")
    assert fill.status == "error" and "OSError" in fill.detail


@pytest.mark.sandbox
def test_no_socket_reaches_the_host():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        program = ("import socket\nconnected = []\n"
                   f"for host in ['127.0.0.1', 'localhost', '10.0.0.1', '8.8.8.8']:\n"
                   "    try:\n"
                   f"        socket.create_connection((host, {port}), timeout=0.5).close()\n"
                   "        connected.append(host)\n"
                   "    except OSError:\n        pass\n")
        result = _hostile(program, "assert connected")
        assert result.status == "failed"
        listener.settimeout(0.2)
        with pytest.raises(TimeoutError):
            listener.accept()


@pytest.mark.sandbox
def test_killing_the_parent_and_other_processes_fails():
    """The program is its pid namespace's init: its parent lies outside (getppid() is 0, so
    the kill hits its own group, which the kernel shields), and host pids do not exist there."""
    sentinel = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    host_pids = (os.getpid(), os.getppid(), sentinel.pid)
    try:
        program = ("import os, signal\nkilled = []\n"
                   f"for target in (os.getppid(), 1, -1) + {host_pids!r}:\n"
                   "    try:\n        os.kill(target, signal.SIGKILL)\n"
                   "        killed.append(target)\n    except OSError:\n        pass\n"
                   "try:\n    os.killpg(0, signal.SIGKILL)\nexcept OSError:\n    pass\n")
        tests = f"assert set(killed) & set({host_pids!r}), killed"
        assert _hostile(program, tests).status == "failed"
        assert sentinel.poll() is None, "a host process was killed"
    finally:
        sentinel.kill()
        sentinel.wait()


@pytest.mark.sandbox
def test_stdout_flood_is_cut_off():
    result = _hostile("while True:\n    print('x' * 10000)")
    assert result.status == "output_limit" and len(result.stdout) <= 2000
    assert _hostile("import sys\nwhile True:\n    sys.stderr.write('y' * 10000)"
                    ).status == "output_limit"


@pytest.mark.sandbox
def test_concurrent_runs_are_independent():
    from concurrent.futures import ThreadPoolExecutor

    """A fork bomb running beside them does not make a correct, threaded program fail (runs
    have their own process budgets: their own user namespaces, and their own uids when the
    host is root)."""
    bomb = ("import os, threading\nwhile True:\n    try:\n        os.fork()\n"
            "    except OSError:\n        pass")
    programs = ["def f(x): return 3 * x + 2", "while True: pass", "def f(x): return 0", bomb]
    tests = ("import threading\nworkers = [threading.Thread(target=f, args=(1,)) for _ in range(4)]"
             "\nfor w in workers: w.start()\nfor w in workers: w.join()\nassert f(1) == 5")
    # The hostile programs are stopped after 2 s; the others get 10 s, so that the CPU time the
    # hostile ones take on a loaded 2-core machine cannot push a correct run past its limit.
    hostile = {programs[1], bomb}
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda p: run_code(p, tests, timeout_s=2.0 if p in hostile else 10.0),
                                programs * 2))
    assert [r.status for r in results] == ["passed", "timeout", "failed", "timeout"] * 2


def test_missing_bwrap_refuses_to_run(monkeypatch):
    monkeypatch.setattr(sandbox, "BWRAP", "/nonexistent/bwrap")
    with pytest.raises(SandboxUnavailableError, match="apt-get install bubblewrap"):
        run_code("print('never runs')", "")


def test_a_broken_bwrap_refuses_to_run(monkeypatch):
    # A bwrap that cannot create namespaces, in a directory the sandbox uid may enter.
    with tempfile.TemporaryDirectory() as directory:
        os.chmod(directory, 0o755)
        fake = os.path.join(directory, "bwrap")
        with open(fake, "w") as f:
            f.write("#!/bin/sh\necho 'bwrap: No permissions to create new namespace' >&2\n"
                    "exit 1\n")
        os.chmod(fake, 0o755)
        monkeypatch.setattr(sandbox, "BWRAP", fake)
        with pytest.raises(SandboxUnavailableError, match="user namespaces"):
            run_code("print('never runs')", "")
        os.chmod(fake, 0o700)  # now not even executable by the sandbox uid (when root)
        monkeypatch.setattr(sandbox, "BWRAP", fake)
        with pytest.raises(SandboxUnavailableError):
            run_code("print('never runs')", "")
