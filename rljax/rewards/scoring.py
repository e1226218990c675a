"""Scoring a batch of completions so that a broken reward function never stops training.

`score` calls every reward function on every (completion, example) pair. A call that raises,
returns something that is not a finite number, or runs past `timeout_s` scores 0 and is counted in
the metrics (`reward_errors`, `reward_timeouts`, also per function); the first error message of each
function is logged. Configuration mistakes (mismatched lengths, unknown weights, a function that
cannot be sent to a worker process) still raise: they would zero every reward silently.

What can be interrupted in Python, and so the two isolation modes:
- A thread cannot be killed, and signal handlers (SIGALRM) run only in the main thread between
  bytecodes. isolation="thread" (default, no start-up cost) runs the calls in a worker thread and
  waits at most `timeout_s` for each. On a timeout the call scores 0, the worker is abandoned (it
  runs on until its call returns, then exits; it is a daemon thread, so it never blocks exit) and a
  fresh worker takes the next call. This is on time for hangs that wait (sleep, I/O, locks) or loop
  in Python bytecode (the interpreter hands the GIL over every 5 ms, so the waiting thread wakes),
  but an abandoned Python loop keeps a share of the CPU until it ends, and a call stuck in C code
  that holds the GIL (a catastrophic `re` backtrack, `10**10**9`) stalls every thread, the waiting
  one included: its timeout is seen only when it returns.
- A process can be killed. isolation="process" runs the calls in one worker process per `score`
  call and SIGKILLs it on a timeout (a new one takes the next call), so every hang ends at
  `timeout_s`, and a crash (segfault, `os._exit`) counts as an error. The costs: a worker start-up
  of roughly 0.1-1 s (not counted against `timeout_s`), and pickling. With the default start method
  ("forkserver" where available, else "spawn") the reward functions must pickle: module-level
  functions, `functools.partial`s of them and the factories of `rljax.rewards.reward_fns` do;
  lambdas and closures do not. mp_context="fork" sends no functions (the child inherits them),
  but forking a multithreaded process (JAX is one) can deadlock the child on a lock that another
  thread held.
The worst-case time of a batch is (number of calls that hang) × `timeout_s`.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import pickle
import queue
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .reward_fns import RewardFn

_log = logging.getLogger(__name__)
_STARTUP_TIMEOUT_S = 120.0
ISOLATIONS = ("thread", "process")

Result = tuple[bool, Any]  # (ok, reward) or (False, error message)


def _call(fn: RewardFn, completion: str, example: Mapping[str, Any]) -> Result:
    """One guarded call. BaseException is caught on purpose: this runs in a worker (never the
    main thread, so never a KeyboardInterrupt), and a reward function's `sys.exit` or any other
    failure belongs to that function, not to the training loop."""
    try:
        value = float(fn(completion, example))
    except BaseException as e:  # noqa: BLE001
        return False, f"{type(e).__name__}: {e}"
    if not math.isfinite(value):
        return False, f"non-finite reward {value}"
    return True, value


class _ThreadWorker:
    """A daemon thread serving calls from a task queue; abandoned (not joined) after a timeout."""

    def __init__(self, fns: Mapping[str, RewardFn]):
        self.alive = True
        self._tasks: queue.SimpleQueue = queue.SimpleQueue()
        self._results: queue.SimpleQueue = queue.SimpleQueue()
        threading.Thread(target=self._serve, args=(fns,), daemon=True,
                         name="rljax-reward-worker").start()

    def _serve(self, fns):
        while (task := self._tasks.get()) is not None:
            name, completion, example = task
            self._results.put(_call(fns[name], completion, example))

    def call(self, name: str, completion: str, example: Mapping[str, Any],
             timeout_s: float) -> Result | None:
        """The call's result, or None on a timeout."""
        self._tasks.put((name, completion, example))
        try:
            return self._results.get(timeout=timeout_s)
        except queue.Empty:
            return None

    def close(self):
        """Lets the thread exit once its current call (if any) returns."""
        self.alive = False
        self._tasks.put(None)


def _process_main(conn, fns: Mapping[str, RewardFn]):
    conn.send("ready")
    while True:
        try:
            task = conn.recv()
        except EOFError:
            return
        if task is None:
            return
        name, completion, example = task
        conn.send(_call(fns[name], completion, example))


class _ProcessWorker:
    """A child process serving calls over a pipe; killed after a timeout."""

    def __init__(self, fns: Mapping[str, RewardFn], context: str):
        ctx = multiprocessing.get_context(context)
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_process_main, args=(child, fns), daemon=True,
                                 name="rljax-reward-worker")
        try:
            self._proc.start()
        except (pickle.PicklingError, AttributeError, TypeError) as e:  # spawn/forkserver pickle
            self._conn.close()
            raise TypeError(f"isolation='process' with mp_context={context!r} needs picklable "
                            f"reward functions (module-level functions or partials of them); "
                            f"{e}") from e
        finally:
            child.close()
        self.alive = True
        try:
            ready = self._conn.poll(_STARTUP_TIMEOUT_S) and self._conn.recv() == "ready"
        except EOFError:
            ready = False
        if not ready:
            self.close()
            raise RuntimeError(f"the reward worker process did not start within "
                               f"{_STARTUP_TIMEOUT_S:.0f} s (exit code {self._proc.exitcode})")

    def call(self, name: str, completion: str, example: Mapping[str, Any],
             timeout_s: float) -> Result | None:
        """The call's result, or None on a timeout; a dead child gives an error result."""
        self._conn.send((name, completion, example))
        if not self._conn.poll(timeout_s):
            return None
        try:
            return self._conn.recv()
        except EOFError:
            self.close()
            return False, f"the worker process died (exit code {self._proc.exitcode})"

    def close(self):
        """Ends the child at once: it may be hung, and it holds no state worth a clean exit."""
        self.alive = False
        self._proc.kill()
        self._proc.join()
        self._conn.close()


def _default_context() -> str:
    return "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"


def score(reward_fns: Mapping[str, RewardFn], completions: Sequence[str],
          examples: Sequence[Mapping[str, Any]], *, weights: Mapping[str, float] | None = None,
          timeout_s: float = 5.0, isolation: str = "thread", mp_context: str | None = None
          ) -> tuple[np.ndarray, dict[str, float]]:
    """Rewards of a batch: Σ_k weights[k] · reward_fns[k](completions[b], examples[b]).

    Args:
      reward_fns: named reward functions `fn(completion, example) -> float` (e.g. from
        `task_rewards`).
      completions: B decoded completions.
      examples: the B examples they answer (repeat an example for each of its G samples).
      weights: per-name weights (default 1 each).
      timeout_s: per-call time limit; see the module docstring for what it can interrupt.
      isolation: "thread" or "process" (see the module docstring).
      mp_context: multiprocessing start method for isolation="process".
    Returns:
      rewards [B] float32, and metrics: "reward/total" and "reward/<name>" (batch means, failed
      calls counted as 0), "reward_errors", "reward_timeouts" (counts over all calls) and their
      per-function "reward_errors/<name>", "reward_timeouts/<name>".
    """
    if len(completions) != len(examples):
        raise ValueError(f"{len(completions)} completions but {len(examples)} examples")
    if isolation not in ISOLATIONS:
        raise ValueError(f"isolation must be one of {ISOLATIONS}, got {isolation!r}")
    weights = dict(weights or {})
    if unknown := set(weights) - set(reward_fns):
        raise ValueError(f"weights for unknown reward functions {sorted(unknown)}")
    names = list(reward_fns)
    values = np.zeros((len(names), len(completions)), np.float64)
    errors, timeouts = dict.fromkeys(names, 0), dict.fromkeys(names, 0)

    def new_worker():
        if isolation == "thread":
            return _ThreadWorker(reward_fns)
        return _ProcessWorker(reward_fns, mp_context or _default_context())

    worker = None
    try:
        for b, (completion, example) in enumerate(zip(completions, examples, strict=True)):
            for k, name in enumerate(names):
                worker = worker if worker is not None and worker.alive else new_worker()
                result = worker.call(name, completion, example, timeout_s)
                if result is None:
                    timeouts[name] += 1
                    worker.close()
                elif result[0]:
                    values[k, b] = result[1]
                else:
                    if not errors[name]:
                        _log.warning("reward function %r failed (scored 0): %s", name, result[1])
                    errors[name] += 1
    finally:
        if worker is not None and worker.alive:
            worker.close()

    rewards = (np.array([weights.get(name, 1.0) for name in names]) @ values).astype(np.float32)
    metrics = {"reward/total": float(rewards.mean()) if len(rewards) else 0.0,
               "reward_errors": sum(errors.values()), "reward_timeouts": sum(timeouts.values())}
    for k, name in enumerate(names):
        metrics[f"reward/{name}"] = float(values[k].mean()) if len(completions) else 0.0
        metrics[f"reward_errors/{name}"] = errors[name]
        metrics[f"reward_timeouts/{name}"] = timeouts[name]
    return rewards, metrics
