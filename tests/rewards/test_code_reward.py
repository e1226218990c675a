"""The code task's reward: program extraction and scoring through `score` with the sandbox."""

import pickle

import pytest

from rljax import rewards
from rljax.rewards import SandboxUnavailableError, extract_program

EXAMPLE = {"tests": "assert f(1) == 5\nassert f(0) == 2"}


def test_extract_program():
    fenced = "Here:\n```python\ndef f(x):\n    return 3 * x + 2\n```\nDone."
    assert extract_program(fenced) == "def f(x):\n    return 3 * x + 2"
    assert extract_program(fenced, "code_block") == "def f(x):\n    return 3 * x + 2"
    assert extract_program(" def f(x): return 1 ") == "def f(x): return 1"
    assert extract_program(" def f(x): return 1 ", "code_block") is None
    assert extract_program("```\nfirst\n``` and ```py\nsecond\n``` ```unclosed") == "second"
    assert extract_program("```def f(x): return x```") == "def f(x): return x"
    assert extract_program("``````", "code_block") is None
    assert extract_program("   ") is None
    with pytest.raises(ValueError, match="code answer format"):
        extract_program("x", "hash")


@pytest.mark.sandbox
def test_task_rewards_score_programs():
    fns, weights = rewards.task_rewards("code")
    assert set(fns) == {"correct"} and weights == {"correct": 1.0}
    pickle.dumps(fns)  # process isolation must be able to send them
    completions = [" def f(x): return 3 * x + 2", " def f(x): return 3 * x", "while True: pass",
                   "```python\ndef f(x):\n    return 3 * x + 2\n```", ""]
    r, metrics = rewards.score(fns, completions, [EXAMPLE] * len(completions), weights=weights)
    assert r.tolist() == [1.0, 0.0, 0.0, 1.0, 0.0]
    assert metrics["reward_errors"] == 0 and metrics["reward_timeouts"] == 0


@pytest.mark.sandbox
def test_code_block_format_adds_a_format_reward():
    fns, weights = rewards.task_rewards("code", "code_block", format_weight=0.1)
    completions = ["```python\ndef f(x): return 3 * x + 2\n```", "```\ndef f(x): return 0\n```",
                   "def f(x): return 3 * x + 2"]
    r, _ = rewards.score(fns, completions, [EXAMPLE] * 3, weights=weights)
    assert r.tolist() == pytest.approx([1.1, 0.1, 0.0])
    with pytest.raises(ValueError, match="code answer format"):
        rewards.task_rewards("code", "hash")


def test_task_rewards_refuse_without_a_sandbox(monkeypatch):
    from rljax.rewards import sandbox

    monkeypatch.setattr(sandbox, "BWRAP", "/nonexistent/bwrap")
    with pytest.raises(SandboxUnavailableError, match="bubblewrap"):
        rewards.task_rewards("code")
