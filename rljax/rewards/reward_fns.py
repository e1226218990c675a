"""Reward functions of one signature, `fn(completion, example) -> float`, and their combinations.

The verifiers in this package take their natural arguments (`math_reward(completion, answer)`,
`countdown_reward(completion, numbers, target)`); the RL loop holds dataset examples (dicts from
`rljax.data.load_task`), so these factories bind the verifiers to example fields. They return
`functools.partial`s of module-level functions and `WeightedSum` objects, which pickle, so
`score(..., isolation="process")` can send them to a worker process.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any

from .sandbox import check_sandbox
from .code_answers import check_code_format, code_block_format_reward, code_reward
from .countdown import countdown_reward
from .extract import ANSWER_FORMATS, check_format
from .format import format_reward
from .math_answers import last_integer_reward, math_reward

RewardFn = Callable[[str, Mapping[str, Any]], float]

# The answer format each task's prompts ask for by default (see rljax.data.prompts).
TASK_ANSWER_FORMATS = {"arithmetic": "hash", "gsm8k": "hash", "countdown": "answer_tag",
                       "code": "plain", "two_operand": "plain"}


def _math_from_example(completion: str, example: Mapping[str, Any], *, fmt: str,
                       tol: float) -> float:
    return math_reward(completion, example["answer"], fmt=fmt, tol=tol)


def _countdown_from_example(completion: str, example: Mapping[str, Any], *, fmt: str,
                            use_all_numbers: bool) -> float:
    return countdown_reward(completion, example["numbers"], example["target"], fmt=fmt,
                            use_all_numbers=use_all_numbers)


def _last_integer_from_example(completion: str, example: Mapping[str, Any]) -> float:
    return last_integer_reward(completion, example["answer"])


def _format_from_example(completion: str, example: Mapping[str, Any], *, fmt: str) -> float:
    del example  # the format does not depend on the problem
    return format_reward(completion, fmt)


def _code_from_example(completion: str, example: Mapping[str, Any], *, fmt: str,
                       timeout_s: float, memory_mb: int) -> float:
    return code_reward(completion, example["tests"], fmt=fmt, timeout_s=timeout_s,
                       memory_mb=memory_mb)


def _code_format_from_example(completion: str, example: Mapping[str, Any]) -> float:
    del example
    return code_block_format_reward(completion)


def math_reward_fn(fmt: str = "auto", tol: float = 1e-6) -> RewardFn:
    """`math_reward(completion, example["answer"], fmt=fmt, tol=tol)`."""
    check_format(fmt, ANSWER_FORMATS + ("auto",))
    return functools.partial(_math_from_example, fmt=fmt, tol=tol)


def last_integer_reward_fn() -> RewardFn:
    """`last_integer_reward(completion, example["answer"])`: the reply's last number."""
    return _last_integer_from_example


def countdown_reward_fn(fmt: str = "answer_tag", use_all_numbers: bool = False) -> RewardFn:
    """`countdown_reward(completion, example["numbers"], example["target"], ...)`."""
    check_format(fmt, ("answer_tag", "plain"))
    return functools.partial(_countdown_from_example, fmt=fmt, use_all_numbers=use_all_numbers)


def code_reward_fn(fmt: str = "plain", timeout_s: float = 3.0, memory_mb: int = 256) -> RewardFn:
    """`code_reward(completion, example["tests"], ...)`: the program run in the bubblewrap
    sandbox against the example's tests. `timeout_s` stays below `score`'s default 5 s, so a
    looping program scores 0 through the sandbox's own kill, not as a reward timeout."""
    check_code_format(fmt)
    return functools.partial(_code_from_example, fmt=fmt, timeout_s=timeout_s,
                             memory_mb=memory_mb)


def format_reward_fn(fmt: str) -> RewardFn:
    """`format_reward(completion, fmt)`, ignoring the example."""
    check_format(fmt, ("hash", "boxed", "answer_tag"))
    return functools.partial(_format_from_example, fmt=fmt)


@dataclasses.dataclass(frozen=True)
class WeightedSum:
    """Σ_k weights[k] · fns[k](completion, example), one reward function made of several (a
    missing weight is 1). For per-component metrics and per-component error isolation, pass the
    parts to `score` with `weights=` instead."""

    fns: Mapping[str, RewardFn]
    weights: Mapping[str, float]

    def __call__(self, completion: str, example: Mapping[str, Any]) -> float:
        return sum(self.weights.get(name, 1.0) * float(fn(completion, example))
                   for name, fn in self.fns.items())


def weighted_sum(fns: Mapping[str, RewardFn],
                 weights: Mapping[str, float] | None = None) -> WeightedSum:
    """Combines named reward functions into one: Σ_k w_k f_k. Unknown weight names raise."""
    weights = dict(weights or {})
    if unknown := set(weights) - set(fns):
        raise ValueError(f"weights for unknown reward functions {sorted(unknown)}; "
                         f"functions are {sorted(fns)}")
    return WeightedSum(dict(fns), weights)


def task_rewards(task: str, answer_format: str | None = None, *, format_weight: float = 0.1
                 ) -> tuple[dict[str, RewardFn], dict[str, float]]:
    """The default rewards of a task: `(fns, weights)` for `score(fns, ..., weights=weights)`.

    "correct" (weight 1): the final answer checked against the example's. With a marked format
    (hash, boxed, answer_tag) the answer is looked for in that marker first, then in any other
    form models write (`extract_answer(..., "auto")`: another marker, "the answer is 18", the
    last number), so a model is judged on what it answered, not on how it wrote it; "two_operand"
    takes the reply's last number (`last_integer_reward`).
    "format" (weight `format_weight`): `format_reward` in the asked format, which teaches the
    format itself; absent for "plain".
    `answer_format` defaults to `TASK_ANSWER_FORMATS[task]`. For "code" (formats "plain" and
    "code_block"), the sandbox is checked here, so a run without bubblewrap stops at set-up
    with `SandboxUnavailableError` instead of scoring every program 0.
    """
    if task not in TASK_ANSWER_FORMATS:
        raise ValueError(f"no default rewards for task {task!r}; "
                         f"known: {sorted(TASK_ANSWER_FORMATS)}")
    fmt = answer_format or TASK_ANSWER_FORMATS[task]
    if task == "code":
        return _code_task_rewards(fmt, format_weight)
    if task == "countdown":
        correct = countdown_reward_fn(fmt)
    elif task == "two_operand":
        correct = last_integer_reward_fn()
    else:
        correct = math_reward_fn("plain" if fmt == "plain" else "auto")
    fns, weights = {"correct": correct}, {"correct": 1.0}
    if fmt != "plain":
        fns["format"] = format_reward_fn(fmt)
        weights["format"] = format_weight
    return fns, weights


def _code_task_rewards(fmt: str, format_weight: float
                       ) -> tuple[dict[str, RewardFn], dict[str, float]]:
    correct = code_reward_fn(fmt)
    check_sandbox()
    fns, weights = {"correct": correct}, {"correct": 1.0}
    if fmt == "code_block":
        fns["format"] = _code_format_from_example
        weights["format"] = format_weight
    return fns, weights
