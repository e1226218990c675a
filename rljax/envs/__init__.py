"""Environments and multi-turn rollouts: the policy talks, environments and tools answer.

    from rljax import envs
    traj = envs.rollout(cfg, params, tokenizer, [envs.GuessNumber(secret=s) for s in (5, 17)], key,
                        max_turns=6, max_new_tokens=16, max_total_tokens=256)
    traj.tokens, traj.loss_mask, traj.logprobs, traj.rewards

`Env`/`Step` (base), the token-exact chat bridge (chat), `rollout` -> `Trajectories` (rollout),
tools and `ToolEnv` (tools, tool_env), and the tasks of the configs (games).
"""

from rljax.envs.base import Env, Step
from rljax.envs.chat import ChatBridge, TemplateError
from rljax.envs.games import GuessNumber, demonstration, make_env
from rljax.envs.rollout import Trajectories, rollout
from rljax.envs.tool_env import Task, ToolEnv
from rljax.envs.tools import Tool, calculator, python
