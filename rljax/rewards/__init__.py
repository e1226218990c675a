"""Verifiable rewards: answer extraction, math and Countdown checkers, format rewards, safe scoring.

  numbers     parse_number, first_number, last_number, numbers_close (exact rationals)
  extract     extract_answer, extract_number, extract_hash, extract_boxed, extract_answer_tag,
              extract_stated ("the answer is ...")
  math_answers  math_reward(completion, answer), last_integer_reward(completion, answer)
  countdown   evaluate_expression (a safe parser, no eval), check_countdown, countdown_reward
  format      format_reward(completion, fmt)
  sandbox     run_code(program, tests, timeout_s, memory_mb): untrusted Python in a bubblewrap
              sandbox -> CodeResult(.passed, .status, ...); SandboxUnavailableError
  code_answers  extract_program, code_reward(completion, tests)
  reward_fns  fn(completion, example) factories, weighted_sum, task_rewards
  scoring     score(reward_fns, completions, examples, timeout_s=...): errors and hangs score 0

Typical use in an RL loop:

    fns, weights = rewards.task_rewards("gsm8k")          # {"correct": ..., "format": ...}
    r, metrics = rewards.score(fns, completions, examples, weights=weights, timeout_s=5.0)
"""

from .code_answers import CODE_FORMATS, code_reward, extract_program
from .countdown import (
    Evaluation,
    ExpressionError,
    check_countdown,
    countdown_reward,
    evaluate_expression,
    extract_expression,
)
from .extract import (
    ANSWER_FORMATS,
    extract_answer,
    extract_answer_tag,
    extract_boxed,
    extract_hash,
    extract_number,
    extract_stated,
)
from .format import format_reward
from .math_answers import last_integer_reward, math_reward
from .numbers import first_number, last_integer, last_number, numbers_close, parse_number
from .reward_fns import (
    TASK_ANSWER_FORMATS,
    RewardFn,
    WeightedSum,
    code_reward_fn,
    countdown_reward_fn,
    format_reward_fn,
    last_integer_reward_fn,
    math_reward_fn,
    task_rewards,
    weighted_sum,
)
from .sandbox import CodeResult, SandboxUnavailableError, check_sandbox, run_code
from .scoring import score
