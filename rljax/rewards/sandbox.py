"""Running untrusted Python (a model's program and the task's tests) inside a bubblewrap sandbox.

`run_code(program, tests)` executes `program`, then `tests` (asserts) in the same namespace, in a
fresh process inside `bwrap` (Debian package `bubblewrap`), and returns a `CodeResult` whose
`.passed` is True only when every test ran and none failed. A completion is hostile until proven
otherwise: it may loop, allocate without bound, fork without bound, flood its output, read or
write host files, open sockets, or signal its parent. What holds each of them back:

  filesystem  a new mount namespace whose root holds only read-only binds of /usr (and the
              /bin, /lib* symlinks into it), the interpreter's prefix when it lives elsewhere,
              a fresh /proc of the sandbox's own pid namespace, a minimal /dev (remounted
              read-only; device nodes stay writable) and a private size-capped tmpfs /tmp. No
              /etc, no home, no working tree; `/` itself is remounted read-only.
  network     a new network namespace: a loopback of its own and nothing else, so the host's
              127.0.0.1 listeners (and abstract unix sockets) are out of reach.
  processes   a new pid namespace whose init is the sandboxed process itself (it sees and can
              signal only its own processes; its parent is outside, pid 0 to it, so killing
              "its parent" signals its own group, and the kernel shields an init), a new
              session, SIGKILL of the whole sandbox when its bwrap dies (--die-with-parent);
              at the wall-clock deadline or the output cap the host SIGKILLs the sandbox's
              pid 1 (which takes the whole pid namespace with it), then bwrap's process group.
  resources   rlimits set by the trusted runner before the untrusted code starts: CPU seconds,
              address space (`memory_mb`), processes, file size, open files, no core dumps.
              Output is read at most `max_output_bytes` at a time; past that the run is killed.
  privileges  bwrap drops every capability; user namespaces cannot be nested (--disable-userns).

Why a separate kernel uid when the host is root (as in CI containers): the kernel never
enforces RLIMIT_NPROC for kernel uid 0, not even inside a user namespace (the kernel uid there is
still 0): measured here, a sandbox run as root forked 200 times under a limit of 32. So a root
host starts bwrap as an unprivileged uid of its own (from `SANDBOX_UID_BASE` up, one per
concurrent run), which also means bwrap itself must create the user namespace (unprivileged
user namespaces must be enabled). That uid cannot traverse /root, so a root host runs programs
with an interpreter the uid can reach (`sandbox_python`: the host's own when its prefix is
world-readable, else /usr/bin/python3). A non-root host runs bwrap as itself.
What RLIMIT_NPROC counts: since Linux 5.14, the tasks of the uid within the sandbox's own user
namespace, so `max_processes` is the sandbox's own budget. Before 5.14, all tasks of the uid
on the host: a root host's per-run uid keeps that exact, and a non-root host sets the limit to
the user's current task count plus `max_processes`.

What the sandbox does not do: it adds no seccomp filter (a kernel exploit is out of scope),
and it does not stop a program from subverting its own tests (an object whose `__eq__` is always
True, a patched builtin): that is reward hacking, for the task's tests to resist. It does stop
an early `sys.exit(0)` / `os._exit(0)` from counting as a pass: the runner reports the outcome
through its own pipe, tagged with a per-run nonce, only from its main process after the tests.

If bwrap is missing or cannot set up its namespaces, `run_code` raises `SandboxUnavailableError`
naming the fix; it never runs anything unsandboxed.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import math
import os
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import threading
import time

BWRAP = "bwrap"  # a name looked up on PATH, or a path; tests point it somewhere missing
SANDBOX_UID_BASE = 1_900_000_000  # kernel uids used for sandboxes when the host is root
MAX_CONCURRENT = 256  # concurrent runs per host process
_UID_BLOCKS = 1 << 16  # blocks of MAX_CONCURRENT uids: up to 1.9e9 + 2^24 < 2^32 - 1
STATUSES = ("passed", "failed", "error", "timeout", "memory", "output_limit", "crashed")
_TAIL_CHARS = 2000
_REPORT_CAP = 1 << 14

# The trusted part of the sandboxed process: reads the job from stdin, caps its own resources,
# then runs the program and the tests. Only the main process reports, after the tests.
_RUNNER = r"""
import json, os, resource, sys

def _describe(error):
    try:
        return f"{type(error).__name__}: {error}"[:500]
    except BaseException:
        return type(error).__name__

def _main():
    job = json.loads(sys.stdin.buffer.read())
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    report_fd, main_pid = job["report_fd"], os.getpid()
    for name, (soft, hard) in job["limits"].items():
        resource.setrlimit(getattr(resource, name), (soft, hard))
    status, detail, namespace = "passed", "", {"__name__": "__main__"}
    for stage, source in (("program", job["program"]), ("tests", job["tests"])):
        try:
            exec(compile(source, f"<{stage}>", "exec"), namespace)
        except MemoryError as e:
            status, detail = "memory", f"{stage}: {_describe(e)}"
        except AssertionError as e:
            status, detail = ("failed" if stage == "tests" else "error"), f"{stage}: {_describe(e)}"
        except BaseException as e:
            status, detail = "error", f"{stage}: {_describe(e)}"
        if status != "passed":
            break
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:
            pass
    if os.getpid() == main_pid:
        line = job["nonce"] + " " + json.dumps({"status": status, "detail": detail}) + "\n"
        os.write(report_fd, line.encode())
    os._exit(0)

_main()
"""


class SandboxUnavailableError(RuntimeError):
    """No bubblewrap sandbox can be set up here; untrusted code is refused rather than run."""


@dataclasses.dataclass(frozen=True)
class CodeResult:
    """The outcome of one `run_code` call.

    passed: the tests ran to the end without failing. status: one of `STATUSES` ("failed": a
    test assertion failed; "error": the program or tests raised something else, or did not
    compile; "timeout": wall clock or CPU limit; "memory": MemoryError under the address-space
    limit; "output_limit": more than `max_output_bytes` of output; "crashed": the process died
    without reporting, e.g. killed by a signal, `os._exit`, a segfault). detail: a short
    explanation. stdout/stderr: the last characters read (output is capped). seconds: wall time.
    returncode: bwrap's exit code (128 + signal for a signalled program; None if we killed it).
    """

    passed: bool
    status: str
    detail: str = ""
    stdout: str = ""
    stderr: str = ""
    seconds: float = 0.0
    returncode: int | None = None


# -- the sandbox's identity and interpreter --------------------------------------------------------
class _UidSlots:
    """Distinct kernel uids for the concurrent runs of a root host (see the module docstring),
    handed out first-in first-out, so a uid is reused as late as possible.

    Each host process takes its own block of `MAX_CONCURRENT` uids, chosen by its pid, so two
    processes running sandboxes at once (test workers, reward worker processes, two trainers)
    do not share a process budget either; a forked child gets a fresh block."""

    def __init__(self, size: int):
        self.base = SANDBOX_UID_BASE + (os.getpid() % _UID_BLOCKS) * size
        self._free = collections.deque(range(size))
        self._lock = threading.Lock()
        self._available = threading.Semaphore(size)

    def acquire(self) -> int:
        self._available.acquire()
        with self._lock:
            return self.base + self._free.popleft()

    def release(self, uid: int) -> None:
        with self._lock:
            self._free.append(uid - self.base)
        self._available.release()


def _new_slots() -> None:
    global _SLOTS
    _SLOTS = _UidSlots(MAX_CONCURRENT)


_SLOTS: _UidSlots
_new_slots()
os.register_at_fork(after_in_child=_new_slots)


def _host_is_root() -> bool:
    return os.geteuid() == 0


def _world_traversable(path: str) -> bool:
    """Every directory from / down to `path` lets "others" search it (o+x)."""
    path = os.path.realpath(path)
    while True:
        try:
            if not os.stat(path).st_mode & 0o001:
                return False
        except OSError:
            return False
        parent = os.path.dirname(path)
        if parent == path:
            return True
        path = parent


def sandbox_python() -> tuple[str, str]:
    """(interpreter, prefix) for sandboxed programs: the host's own interpreter, unless the host
    is root and its prefix is unreachable to the sandbox uid (a pyenv under /root), then
    /usr/bin/python3. Raises SandboxUnavailableError when neither fits."""
    candidates = [(os.path.realpath(sys.executable), os.path.realpath(sys.base_prefix))]
    system = shutil.which("python3", path="/usr/bin:/bin")
    if system:
        candidates.append((os.path.realpath(system), "/usr"))
    for executable, prefix in candidates:
        if not _host_is_root() or _world_traversable(executable):
            return executable, prefix
    raise SandboxUnavailableError(
        f"no Python interpreter the sandbox uid can read: {sys.executable} lies under a "
        f"directory closed to other users, and there is no /usr/bin/python3; install python3 "
        f"(apt-get install python3) or pass python=... to run_code")


def _kernel_version() -> tuple[int, ...]:
    numbers = []
    for part in os.uname().release.split("-")[0].split(".")[:2]:
        digits = "".join(c for c in part if c.isdigit())
        numbers.append(int(digits) if digits else 0)
    return tuple(numbers)


def _user_task_count(uid: int) -> int:
    """Tasks (threads included) of `uid`: what RLIMIT_NPROC compares against."""
    count = 0
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if entry.stat().st_uid == uid:
                    count += len(os.listdir(f"/proc/{entry.name}/task"))
            except OSError:
                pass
    return count


def _bwrap_path() -> str:
    found = shutil.which(BWRAP)
    if found is None:
        raise SandboxUnavailableError(
            f"bubblewrap ({BWRAP!r}) was not found, and untrusted code is never run "
            f"unsandboxed: install it (Debian/Ubuntu: `apt-get install bubblewrap`)")
    return found


def _bwrap_args(bwrap: str, python: str, prefix: str, tmp_mb: int) -> list[str]:
    """The bwrap command line. Flags checked in a root Debian 12 container (bwrap 0.8): all of
    them work there, `--proc` included, because bwrap runs under an unprivileged uid that owns
    its new user namespace (--unshare-all includes --unshare-user-try; --unshare-user makes it
    mandatory, which --disable-userns needs). `--size` must come right before its `--tmpfs`.

    --as-pid-1 makes the runner the pid namespace's init instead of a bwrap reaper process.
    With the reaper, bwrap exits as soon as the reaper reports the exit status, before the
    reaper itself is reaped, so every run left a zombie for the host's init to collect; under an
    init that never reaps (a container whose pid 1 is an ordinary program) they would pile up
    until the host ran out of pids. As init, the program cannot be killed by signals sent from
    inside the sandbox (its own SIGKILL included): harmless, the host's kill always works."""
    args = [bwrap, "--unshare-all", "--unshare-user", "--disable-userns", "--as-pid-1",
            "--die-with-parent",
            "--new-session", "--clearenv", "--hostname", "sandbox", "--ro-bind", "/usr", "/usr"]
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(top):
            args += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            args += ["--ro-bind", top, top]
    if not (prefix + "/").startswith("/usr/"):
        args += ["--ro-bind", prefix, prefix]
    args += ["--proc", "/proc", "--dev", "/dev", "--remount-ro", "/dev",
             "--size", str(tmp_mb << 20), "--tmpfs", "/tmp", "--remount-ro", "/", "--chdir", "/tmp",
             "--setenv", "PATH", "/usr/bin:/bin", "--setenv", "HOME", "/tmp",
             "--setenv", "LANG", "C.UTF-8", "--setenv", "PYTHONIOENCODING", "utf-8",
             python, "-I", "-S", "-B", "-c", _RUNNER]
    return args


# -- one run ---------------------------------------------------------------------------------------
class _Capture:
    """Reads stdout, stderr and the report pipe until EOF, the deadline, or the output cap."""

    def __init__(self, proc: subprocess.Popen, report_fd: int, max_output_bytes: int):
        self.buffers = {"stdout": bytearray(), "stderr": bytearray(), "report": bytearray()}
        self.max_output_bytes, self.output_bytes = max_output_bytes, 0
        self.selector = selectors.DefaultSelector()
        for name, fd in (("stdout", proc.stdout.fileno()), ("stderr", proc.stderr.fileno()),
                         ("report", report_fd)):
            os.set_blocking(fd, False)
            self.selector.register(fd, selectors.EVENT_READ, name)

    def pump(self, deadline: float) -> str | None:
        """None once every pipe reached EOF; "timeout" or "output_limit" when stopped early."""
        while self.selector.get_map():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return "timeout"
            for key, _ in self.selector.select(remaining):
                try:
                    chunk = os.read(key.fd, 1 << 16)
                except BlockingIOError:
                    continue
                if not chunk:
                    self.selector.unregister(key.fd)
                    continue
                buffer = self.buffers[key.data]
                if key.data == "report":
                    buffer += chunk[:max(0, _REPORT_CAP - len(buffer))]
                    continue
                self.output_bytes += len(chunk)
                keep = max(0, self.max_output_bytes - len(buffer))
                buffer += chunk[:keep]
                if self.output_bytes > self.max_output_bytes:
                    return "output_limit"
        return None

    def close(self):
        self.selector.close()

    def text(self, name: str) -> str:
        return bytes(self.buffers[name]).decode("utf-8", "replace")[-_TAIL_CHARS:]


def _read_report(raw: str, nonce: str) -> tuple[str, str] | None:
    for line in reversed(raw.splitlines()):
        head, _, body = line.partition(" ")
        if head == nonce:
            try:
                report = json.loads(body)
                status = report["status"]
            except (ValueError, KeyError, TypeError):
                return None
            if status in STATUSES:
                return status, str(report.get("detail", ""))
    return None


def _classify(stopped: str | None, returncode: int | None, report: tuple[str, str] | None,
              timeout_s: float, max_output_bytes: int) -> tuple[str, str]:
    if stopped == "timeout":
        return "timeout", f"killed at the {timeout_s:g} s wall-clock limit"
    if stopped == "output_limit":
        return "output_limit", f"more than {max_output_bytes} bytes of output"
    if report is not None and returncode == 0:
        return report
    if returncode is not None and returncode > 128:  # bwrap's 128 + signal of its child
        sig = returncode - 128
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = f"signal {sig}"
        if sig == signal.SIGXCPU:  # the soft CPU-time limit
            return "timeout", f"killed by {name} at the CPU-time limit"
        return "crashed", f"killed by {name}"
    return "crashed", f"exited with code {returncode} before reporting a result"


def _limits(timeout_s: float, memory_mb: int, max_processes: int, uid: int | None) -> dict:
    """(soft, hard) rlimits for the runner. The CPU hard limit is one second above the soft one:
    at the soft limit the kernel sends SIGXCPU (read as a timeout), at the hard one SIGKILL."""
    per_namespace = _kernel_version() >= (5, 14)
    nproc = max_processes
    if uid is None and not per_namespace:
        nproc += _user_task_count(os.getuid())
    cpu = max(1, math.ceil(timeout_s))
    fixed = {"RLIMIT_AS": memory_mb << 20, "RLIMIT_NPROC": nproc, "RLIMIT_FSIZE": 1 << 20,
             "RLIMIT_NOFILE": 64, "RLIMIT_CORE": 0}
    return {"RLIMIT_CPU": (cpu, cpu + 1), **{name: (v, v) for name, v in fixed.items()}}


def _execute(program: str, tests: str, *, timeout_s: float, memory_mb: int, max_processes: int,
             max_output_bytes: int, tmp_mb: int, python: tuple[str, str] | None) -> CodeResult:
    """One sandboxed run, without the availability check."""
    bwrap = _bwrap_path()
    executable, prefix = python or sandbox_python()
    slots = _SLOTS
    uid = slots.acquire() if _host_is_root() else None
    nonce = secrets.token_hex(16)
    report_r, report_w = os.pipe()
    start = time.monotonic()
    proc = capture = None
    try:
        job = {"program": program, "tests": tests, "nonce": nonce, "report_fd": report_w,
               "limits": _limits(timeout_s, memory_mb, max_processes, uid)}
        identity = {} if uid is None else {"user": uid, "group": uid, "extra_groups": []}
        try:
            proc = subprocess.Popen(_bwrap_args(bwrap, executable, prefix, tmp_mb),
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, pass_fds=(report_w,),
                                    start_new_session=True, **identity)
        except OSError as e:  # not executable (by the sandbox uid), or no such file
            raise SandboxUnavailableError(f"could not start bubblewrap at {bwrap}: {e}") from e
        os.close(report_w)
        report_w = -1
        try:
            proc.stdin.write(json.dumps(job).encode())
            proc.stdin.close()
        except BrokenPipeError:  # bwrap failed before reading; its stderr says why
            pass
        capture = _Capture(proc, report_r, max_output_bytes)
        stopped = capture.pump(start + timeout_s)
        if stopped is None:  # pipes closed: the sandbox is exiting
            try:
                proc.wait(max(0.0, start + timeout_s - time.monotonic()))
            except subprocess.TimeoutExpired:
                stopped = "timeout"
        returncode = None if stopped else proc.returncode
        status, detail = _classify(stopped, returncode, _read_report(capture.text("report"), nonce),
                                   timeout_s, max_output_bytes)
        return CodeResult(passed=status == "passed", status=status, detail=detail,
                          stdout=capture.text("stdout"), stderr=capture.text("stderr"),
                          seconds=time.monotonic() - start, returncode=returncode)
    finally:
        if proc is not None:
            _kill_group(proc)
        for fd in (report_r, report_w):
            if fd >= 0:
                os.close(fd)
        if capture is not None:
            capture.close()
        for stream in (proc.stdout, proc.stderr) if proc is not None else ():
            stream.close()
        if uid is not None:
            slots.release(uid)


def _kill_group(proc: subprocess.Popen) -> None:
    """Ends a sandbox that is still running and reaps bwrap.

    bwrap forks the sandbox's init (the runner, see `_bwrap_args`) into a session of its own,
    so SIGKILLing bwrap's process group alone would leave the init to die by --die-with-parent
    and be reparented to the host's init as a zombie (which still counts against the sandbox
    uid's process limit until something reaps it). So bwrap's children are killed first, which
    tears down the pid namespace; bwrap then reaps them and exits by itself. The group kill is
    the fallback."""
    if proc.poll() is None:
        try:
            with open(f"/proc/{proc.pid}/task/{proc.pid}/children") as f:
                children = [int(pid) for pid in f.read().split()]
        except OSError:
            children = []
        for pid in children:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            proc.wait(1.0 if children else 0.0)
        except subprocess.TimeoutExpired:
            pass
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()


# -- the availability check ----------------------------------------------------------------------
_checked: dict[tuple, bool] = {}
_check_lock = threading.Lock()


def check_sandbox(python: tuple[str, str] | None = None) -> None:
    """Raises SandboxUnavailableError unless a trivial program runs and reports inside bwrap.
    Cached per (bwrap, interpreter, host uid) once it succeeds."""
    bwrap = _bwrap_path()
    python = python or sandbox_python()
    key = (bwrap, python, os.geteuid())
    with _check_lock:
        if _checked.get(key):
            return
        result = _execute("", "", timeout_s=30.0, memory_mb=512, max_processes=16,
                          max_output_bytes=1 << 16, tmp_mb=1, python=python)
        if not result.passed:
            raise SandboxUnavailableError(
                f"bubblewrap at {bwrap} could not run a trivial program ({result.status}: "
                f"{result.detail}; stderr: {result.stderr.strip()[-500:]!r}). It needs "
                f"unprivileged user namespaces: `sysctl kernel.unprivileged_userns_clone=1` and "
                f"`user.max_user_namespaces` > 0 (on Ubuntu 24.04 also "
                f"`kernel.apparmor_restrict_unprivileged_userns=0`); in a container, one that "
                f"allows creating namespaces (e.g. docker --security-opt seccomp=unconfined)")
        _checked[key] = True


def run_code(program: str, tests: str, timeout_s: float = 3.0, memory_mb: int = 256, *,
             max_processes: int = 32, max_output_bytes: int = 1 << 16, tmp_mb: int = 16,
             python: tuple[str, str] | None = None) -> CodeResult:
    """Runs `program` then `tests` (Python source sharing one namespace) in a bubblewrap sandbox.

    Args:
      program: untrusted source, e.g. a model's function definition.
      tests: source that checks it, e.g. `assert f(2) == 8`; any AssertionError is a fail.
      timeout_s: wall-clock limit (the CPU-time limit is its ceiling in whole seconds).
      memory_mb: address-space limit of each sandboxed process.
      max_processes: processes and threads the program may have at once (RLIMIT_NPROC).
      max_output_bytes: stdout + stderr bytes read before the run is killed.
      tmp_mb: size of the private /tmp.
      python: (interpreter, prefix) to run; default `sandbox_python()`.
    Returns:
      A `CodeResult` (`.passed`, `.status`, ...). Raises SandboxUnavailableError when bwrap is
      missing or cannot create its namespaces; never runs the program without the sandbox.
    """
    check_sandbox(python)
    return _execute(program, tests, timeout_s=timeout_s, memory_mb=memory_mb,
                    max_processes=max_processes, max_output_bytes=max_output_bytes,
                    tmp_mb=tmp_mb, python=python)
