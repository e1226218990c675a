"""What an environment is: the host-side object a multi-turn rollout talks to.

    class MyEnv(envs.Env):
        def reset(self) -> list[dict]:            # the opening chat messages
            return [{"role": "user", "content": "Guess my number in [1, 32]."}]
        def step(self, reply: str) -> envs.Step:  # the policy's reply -> what the world says
            return envs.Step(messages=[{"role": "user", "content": "higher"}])

One instance serves one trajectory. `reset` is called once, then `step` once per policy turn
with the decoded text of exactly the tokens the policy sampled in that turn, until a step says
`done` (or the rollout runs out of turns or tokens). The rollout renders `Step.messages` with the
tokenizer's chat template; the environment never sees or makes token ids.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any


@dataclasses.dataclass
class Step:
    """The environment's answer to one reply.

    messages: chat messages ({"role", "content"}) that follow the reply, e.g. tool results
      ({"role": "tool", ...}) or the user's next line; ignored when `done`.
    reward: this turn's reward; a trajectory's reward is the sum over its turns.
    done: the trajectory has ended.
    info: anything to keep (numbers under "tool_calls" and "tool_seconds" are summed into the
      rollout's metrics).
    """

    messages: list[dict] = dataclasses.field(default_factory=list)
    reward: float = 0.0
    done: bool = False
    info: dict[str, Any] = dataclasses.field(default_factory=dict)


class Env(abc.ABC):
    """One trajectory's environment, run on the host (see the module docstring)."""

    @abc.abstractmethod
    def reset(self) -> list[dict]:
        """The opening messages of the conversation (a system message, the user's task)."""

    @abc.abstractmethod
    def step(self, reply: str) -> Step:
        """The environment's answer to the policy's reply (its text, stop token excluded)."""
