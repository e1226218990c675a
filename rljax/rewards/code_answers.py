"""Scoring a completion that should be a program: find the program, run it with the task's tests
in the sandbox (`rljax.rewards.sandbox.run_code`), reward 1.0 for a pass.

Formats (`CODE_FORMATS`):
  "plain"       the last complete ```-fenced block when there is one, else the whole stripped
                completion (a from-scratch model prompted "Q: Write ... A:" writes bare code).
  "code_block"  only the last complete fenced block counts (chat models asked for one, see
                `rljax.data.prompts`); no block, no reward.
The fence is found by splitting on ```, a linear scan (a lazy `.*?` regex over many unmatched
fences costs quadratic time); a first line naming a language (```python) is dropped.
"""

from __future__ import annotations

from .sandbox import run_code

CODE_FORMATS = ("plain", "code_block")


def check_code_format(fmt: str) -> None:
    if fmt not in CODE_FORMATS:
        raise ValueError(f"unknown code answer format {fmt!r}; expected one of {CODE_FORMATS}")


def _last_fenced_block(text: str) -> str | None:
    parts = text.split("```")
    if len(parts) < 3:
        return None
    last_closed = len(parts) - 2 if len(parts) % 2 == 1 else len(parts) - 3
    block = parts[last_closed]
    first, newline, rest = block.partition("\n")
    if newline and (not first.strip() or first.strip().isidentifier()):
        block = rest  # drop the info string ("python", "py", ...)
    return block.strip("\n") if block.strip() else None


def extract_program(completion: str, fmt: str = "plain") -> str | None:
    """The program in `completion` for answer format `fmt` (see the module docstring), or None."""
    check_code_format(fmt)
    block = _last_fenced_block(completion)
    if block is not None or fmt == "code_block":
        return block
    return completion.strip() or None


def code_reward(completion: str, tests: str, *, fmt: str = "plain", timeout_s: float = 3.0,
                memory_mb: int = 256) -> float:
    """1.0 when the program extracted from `completion` passes `tests` in the sandbox, else 0.0.
    Raises SandboxUnavailableError (never runs unsandboxed) when bwrap cannot be used."""
    program = extract_program(completion, fmt)
    if program is None:
        return 0.0
    return float(run_code(program, tests, timeout_s=timeout_s, memory_mb=memory_mb).passed)


def code_block_format_reward(completion: str) -> float:
    """1.0 when the completion holds a complete, non-empty ```-fenced block."""
    return float(_last_fenced_block(completion) is not None)
