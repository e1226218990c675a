"""`ToolEnv`: a question answered with tools over several turns, scored on the final answer.

    env = envs.ToolEnv(envs.Task("What is 347 * 28?", score=lambda reply: float("9716" in reply)),
                       tools=[envs.calculator], max_turns=3)

The opening is a system message describing the tools (`rljax.envs.tools.describe`) and the
question. A reply with tool calls gets one tool message per call; a reply without any is the
final answer, scored by the task. A last turn spent on tool calls scores 0.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

from rljax.envs.base import Env, Step
from rljax.envs.tools import Tool, as_tools, describe, parse_calls, run_calls


@dataclasses.dataclass(frozen=True)
class Task:
    """A question and how to score its final answer: score(final reply text) -> reward."""

    question: str
    score: Callable[[str], float]
    system: str = ""  # written before the tools' description


class ToolEnv(Env):
    """One question, answered with `tools` (functions or `Tool`s) in at most `max_turns` replies.

    timeout_s and max_output_chars bound each call (`rljax.envs.tools.run_calls`). `info` holds
    "tool_calls" and "tool_seconds" per step.
    """

    def __init__(self, task: Task, tools: Sequence[Tool | Callable], max_turns: int, *, timeout_s: float = 5.0,
                 max_output_chars: int = 2000):
        if max_turns < 1:
            raise ValueError(f"max_turns must be >= 1, got {max_turns}")
        self.task, self.tools, self.max_turns = task, as_tools(tools), max_turns
        self.timeout_s, self.max_output_chars = timeout_s, max_output_chars
        self.turn = 0

    def reset(self) -> list[dict]:
        self.turn = 0
        system = "\n\n".join(x for x in (self.task.system, describe(self.tools) if self.tools else "") if x)
        return [{"role": "system", "content": system}] * bool(system) + [{"role": "user",
                                                                           "content": self.task.question}]

    def step(self, reply: str) -> Step:
        self.turn += 1
        calls = parse_calls(reply)
        if not calls:
            return Step(reward=float(self.task.score(reply)), done=True, info={"tool_calls": 0, "tool_seconds": 0.0})
        if self.turn >= self.max_turns:
            return Step(reward=0.0, done=True, info={"tool_calls": 0, "tool_seconds": 0.0, "out_of_turns": True})
        outputs, seconds = run_calls(self.tools, calls, timeout_s=self.timeout_s,
                                     max_output_chars=self.max_output_chars)
        return Step(messages=[{"role": "tool", "content": text} for text in outputs],
                    info={"tool_calls": len(calls), "tool_seconds": seconds})
