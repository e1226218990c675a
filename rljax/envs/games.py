"""The environments of the configs, built from task examples, with scripted demonstrations.

- "guess_number" (`GuessNumber`): find a secret integer in [low, high] in at most `max_turns`
  guesses, told "Higher." or "Lower." (and, with `show_range`, the range that is left) after each.
- "tool_qa" (`ToolEnv` over a question/answer task, e.g. "What is 347 * 28?"): the final reply's
  last integer must equal the example's answer; the named tools (`TOOLS`) may be called first.

`make_env(name, example, ...)` builds one; `demonstration(name, example, ...)` is the whole
conversation a scripted expert has with it (bisection; one tool call, then the tool's answer),
the supervised warm start of the multi-turn configs.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence

from rljax.envs.base import Env, Step
from rljax.envs.tool_env import Task, ToolEnv
from rljax.envs.tools import calculator, python
from rljax.rewards.numbers import last_integer

TOOLS = {"calculator": calculator, "python": python}
ENVIRONMENTS = ("guess_number", "tool_qa")


class GuessNumber(Env):
    """The number-guessing game: reward 1 for a correct guess within `max_turns`, else 0."""

    def __init__(self, secret: int, low: int = 1, high: int = 32, max_turns: int = 6, show_range: bool = True):
        if not low <= secret <= high:
            raise ValueError(f"secret {secret} is not in [{low}, {high}]")
        self.secret, self.low, self.high, self.max_turns, self.show_range = secret, low, high, max_turns, show_range

    def reset(self) -> list[dict]:
        self.turn, self.range = 0, (self.low, self.high)
        return [{"role": "user", "content": f"Guess my number from {self.low} to {self.high} in at most "
                                            f"{self.max_turns} tries. Reply with a number."}]

    def step(self, reply: str) -> Step:
        self.turn += 1
        guess = last_integer(reply)
        if guess == self.secret:
            return Step(reward=1.0, done=True, info={"guesses": self.turn})
        if self.turn >= self.max_turns:
            return Step(reward=0.0, done=True, info={"guesses": self.turn})
        if guess is None:
            return Step(messages=[{"role": "user", "content": "Reply with a number."}])
        low, high = self.range
        low, high = (max(low, guess + 1), high) if guess < self.secret else (low, min(high, guess - 1))
        self.range = (low, high)
        text = "Higher." if guess < self.secret else "Lower."
        if self.show_range:
            text += f" It is from {low} to {high}."
        return Step(messages=[{"role": "user", "content": text}])


def bisect(messages: Sequence[dict], low: int, high: int) -> str:
    """The bisection expert's next guess, read from the conversation so far."""
    for guess, answer in zip(messages[1::2], messages[2::2]):
        g = last_integer(guess["content"])
        if answer["content"].startswith("Higher"):
            low = g + 1
        elif answer["content"].startswith("Lower"):
            high = g - 1
    return str((low + high) // 2)


def _number_score(answer: str) -> Callable[[str], float]:
    target = int(answer)
    return lambda reply: float(last_integer(reply) == target)


def _tool_call(tool: str, question: str) -> str:
    expression = re.sub(r"^What is |\?$", "", question)
    arguments = {"expression": expression} if tool == "calculator" else {"code": f"print({expression})"}
    return f"<tool_call>{json.dumps({'name': tool, 'arguments': arguments})}</tool_call>"


def make_env(name: str, example: Mapping, *, max_turns: int, tools: Sequence[str] = (),
             knobs: Mapping | None = None) -> Env:
    """The environment `name` (one of `ENVIRONMENTS`) for one task example."""
    knobs = dict(knobs or {})
    if name == "guess_number":
        return GuessNumber(int(example["answer"]), max_turns=max_turns, **knobs)
    if name == "tool_qa":
        unknown = [t for t in tools if t not in TOOLS]
        if unknown:
            raise ValueError(f"unknown tools {unknown}; the tools are {sorted(TOOLS)}")
        return ToolEnv(Task(example["question"], _number_score(example["answer"])), [TOOLS[t] for t in tools],
                       max_turns, **knobs)
    raise ValueError(f"unknown environment {name!r}; choose one of {ENVIRONMENTS}")


def demonstration(name: str, example: Mapping, *, max_turns: int, tools: Sequence[str] = (),
                  knobs: Mapping | None = None) -> list[dict]:
    """The conversation of a scripted expert with `make_env(name, example, ...)`, replies
    included: bisection for guess_number; for tool_qa one call of the first tool and then its
    output as the answer (with no tools, the answer itself)."""
    env = make_env(name, example, max_turns=max_turns, tools=tools, knobs=knobs)
    messages = env.reset()
    for _ in range(max_turns):
        if name == "guess_number":
            reply = bisect(messages, env.low, env.high)
        elif tools and not any(m["role"] == "tool" for m in messages):
            reply = _tool_call(tools[0], example["question"])
        else:
            reply = messages[-1]["content"] if tools else example["answer"]
        step = env.step(reply)
        messages.append({"role": "assistant", "content": reply})
        if step.done:
            return messages
        messages += step.messages
    raise ValueError(f"the scripted expert did not finish {name} within {max_turns} turns: {messages}")
