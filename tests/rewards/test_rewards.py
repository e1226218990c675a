"""Rewards: answer extraction on tricky strings, the Countdown parser against a reference
evaluator, format rewards, and the safe batch scorer with raising, hanging and crashing
functions. Property tests check that no string crashes a parser or extractor."""

import contextlib
import os
import re
import threading
import time
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rljax import rewards as R

F = Fraction

# (text, fmt, expected number)
EXTRACTION_TABLE = [
    ("She makes 9 * 2 = $18 every day.\n#### 18", "hash", F(18)),
    ("#### 1,250,000", "hash", F(1250000)),
    ("#### $18.00 per day", "hash", F(18)),
    ("#### -7", "hash", F(-7)),
    ("#### 3/4", "hash", F(3, 4)),
    ("#### ", "hash", None),
    ("no marker 5", "hash", None),
    ("first #### 1 then #### 2", "hash", F(2)),
    ("The answer is \\boxed{42}.", "boxed", F(42)),
    ("\\boxed{\\frac{3}{4}}", "boxed", F(3, 4)),
    ("\\boxed{-\\dfrac{1}{2}}", "boxed", F(-1, 2)),
    ("\\boxed{\\frac34}", "boxed", F(3, 4)),
    ("$\\boxed{1{,}000}$", "boxed", F(1000)),
    ("\\boxed{18 \\text{ dollars}}", "boxed", F(18)),
    ("\\boxed{{{7}}}", "boxed", F(7)),
    ("\\boxed{\\left(5\\right)}", "boxed", F(5)),
    ("\\boxed 9", "boxed", F(9)),
    ("\\fbox{12}", "boxed", F(12)),
    ("\\boxed{1} then \\boxed{2}", "boxed", F(2)),
    ("\\boxed{unbalanced", "boxed", None),
    ("<answer> 42 </answer>", "answer_tag", F(42)),
    ("<answer>17</answer> <answer>", "answer_tag", F(17)),
    ("The result is 0.75", "plain", F(3, 4)),
    ("So 16 - 3 - 4 = 9 eggs, and 9 * 2 = 18.", "plain", F(18)),
    ("5-3", "plain", F(3)),  # a minus between numbers is subtraction, not a sign
    ("x = -3", "plain", F(-3)),
    ("x = \u22123", "plain", F(-3)),  # the Unicode minus
    ("1,2,3", "plain", F(3)),  # commas only group thousands in threes
    ("12,345", "plain", F(12345)),
    (".5 of it", "plain", F(1, 2)),
    ("it is 1/0", "plain", None),
    ("no digits at all", "plain", None),
    ("9" * 200, "plain", None),  # an over-long digit run is no number
    ("the answer is \\boxed{3} (or 4)", "auto", F(3)),  # a marker beats the last number
    ("#### 5 and \\boxed{6}", "auto", F(5)),
    ("just 7 here", "auto", F(7)),
]


@pytest.mark.parametrize("text, fmt, expected", EXTRACTION_TABLE)
def test_extract_number_table(text, fmt, expected):
    assert R.extract_number(text, fmt) == expected


@pytest.mark.parametrize("text, expected", [
    ("18", F(18)), (" 1,250 ", F(1250)), ("-0.5", F(-1, 2)), ("3/4", F(3, 4)), ("$5.", F(5)),
    ("50%", F(50)), ("\\frac{1}{3}", F(1, 3)), ("18 apples", None), ("", None), ("1/0", None),
    ("1,25", None),
])
def test_parse_number(text, expected):
    assert R.parse_number(text) == expected


@pytest.mark.parametrize("completion, answer, fmt, reward", [
    ("#### 70,000", "70000", "hash", 1.0),
    ("#### 0.75", "3/4", "hash", 1.0),
    ("\\boxed{\\frac{3}{4}}", "0.75", "boxed", 1.0),
    ("#### 0.3333", "1/3", "hash", 0.0),  # outside the tolerance
    ("#### 1000000.0000001", "1000000", "hash", 1.0),  # inside the relative tolerance
    ("#### -12", "12", "hash", 0.0),
    ("the answer is 18", "18", "hash", 0.0),  # strict format: no marker, no credit
    ("the answer is 18", "18", "auto", 1.0),
    ("A: 85", "85", "plain", 1.0),
    ("\\boxed{B}", "b", "boxed", 1.0),  # non-numeric references compare as text
    ("", "5", "auto", 0.0),
])
def test_math_reward(completion, answer, fmt, reward):
    assert R.math_reward(completion, answer, fmt=fmt) == reward


def test_math_reward_tolerance_keyword():
    assert R.math_reward("#### 0.3333", "1/3", tol=1e-3) == 1.0


# ---------------------------------------------------------------------------------------------
# Countdown


@pytest.mark.parametrize("text, value, numbers", [
    ("1 + 2 * 3", F(7), (1, 2, 3)),
    ("(1 + 2) * 3", F(9), (1, 2, 3)),
    ("8 / 3 * 3", F(8), (8, 3, 3)),  # exact rationals, no float rounding
    ("10 - 4 - 3", F(3), (10, 4, 3)),  # left associative
    ("6 \u00f7 4 \u00d7 2 \u2212 1", F(2), (6, 4, 2, 1)),  # ÷ × −
    ("((((5))))", F(5), (5,)),
])
def test_evaluate_expression(text, value, numbers):
    assert R.evaluate_expression(text) == R.Evaluation(value, numbers)


@pytest.mark.parametrize("text, message", [
    ("", "empty"), ("1 +", "end of input"), ("-3 + 5", "expected a number"), ("2 ** 3", "'\\*'"),
    ("(1 + 2", "unbalanced"), ("1 + 2)", "unexpected"), ("1 / (2 - 2)", "division by zero"),
    ("2 ^ 3", "unexpected character"), ("__import__('os')", "unexpected character"),
    ("1.5 * 2", "unexpected character"), ("(" * 100 + "1" + ")" * 100, "nested deeper"),
    ("+".join(["1"] * 600), "longer than"), ("1" * 13, "digits"),
])
def test_evaluate_expression_rejects(text, message):
    with pytest.raises(R.ExpressionError, match=message):
        R.evaluate_expression(text)


def test_check_countdown_number_use():
    numbers = [25, 5, 5, 3]
    assert R.check_countdown("25 * 5 / 5 - 3", numbers, 22)
    assert R.check_countdown("25 - 3", numbers, 22)  # at most once: unused numbers are fine
    assert not R.check_countdown("25 - 3", numbers, 22, use_all_numbers=True)
    assert R.check_countdown("(25 - 3) * 5 / 5", numbers, 22, use_all_numbers=True)
    assert not R.check_countdown("25 - 3 + 3 - 3", numbers, 22)  # 3 used twice, given once
    assert R.check_countdown("5 * 5 - 3", numbers, 22)  # 5 given twice may be used twice
    assert not R.check_countdown("25 - 3", numbers, 23)
    assert not R.check_countdown("22 / (5 - 5)", [22, 5, 5], 22)  # division by zero is wrong


@pytest.mark.parametrize("completion, fmt, reward", [
    ("<think>try</think> <answer> (25 - 3) * 5 / 5 </answer>", "answer_tag", 1.0),
    ("<answer>25 - 3 = 22</answer>", "answer_tag", 1.0),  # "= target" is ignored
    ("<answer>25 + 3 = 22</answer>", "answer_tag", 0.0),
    ("25 - 3", "answer_tag", 0.0),
    (" 25 - 3\nQ: next question", "plain", 1.0),
    ("<answer></answer>", "answer_tag", 0.0),
])
def test_countdown_reward(completion, fmt, reward):
    assert R.countdown_reward(completion, [25, 5, 5, 3], 22, fmt=fmt) == reward


_leaves = st.integers(0, 50).map(lambda n: (str(n), F(n)))


def _combine(op, a, b):
    text = f"({a[0]} {op} {b[0]})"
    if op == "/":
        return (text, None) if b[1] == 0 or a[1] is None or b[1] is None else (text, a[1] / b[1])
    if a[1] is None or b[1] is None:
        return text, None
    return text, {"+": a[1] + b[1], "-": a[1] - b[1], "*": a[1] * b[1]}[op]


_trees = st.recursive(_leaves, lambda inner: st.builds(_combine, st.sampled_from("+-*/"),
                                                       inner, inner), max_leaves=8)


@settings(max_examples=200, deadline=None, database=None)
@given(_trees)
def test_parser_matches_reference_evaluation(tree):
    text, value = tree
    if value is None:
        with pytest.raises(R.ExpressionError, match="division by zero"):
            R.evaluate_expression(text)
    else:
        assert R.evaluate_expression(text).value == value


# ---------------------------------------------------------------------------------------------
# Property tests: no string crashes a parser or extractor

_ALPHABET = "0123456789 +-*/().,=#$%{}\\\n<>abcdefhnorstwx\u2212\u00d7\u00f7"
_TOKENS = ["####", "\\boxed{", "\\frac{", "}", "{", "<answer>", "</answer>", "\\text{", "1,000",
           "-", "3/4", ".5", "\\left(", "\\fbox"]
_texts = st.one_of(st.text(), st.text(alphabet=_ALPHABET),
                   st.lists(st.sampled_from(_TOKENS) | st.text(_ALPHABET, max_size=3),
                            max_size=20).map("".join))


@settings(max_examples=200, deadline=None, database=None)
@given(_texts)
def test_no_string_crashes_extractors(text):
    for fmt in R.ANSWER_FORMATS + ("auto",):
        number = R.extract_number(text, fmt)
        assert number is None or isinstance(number, Fraction)
        answer = R.extract_answer(text, fmt)
        assert answer is None or isinstance(answer, str)
        assert R.math_reward(text, "18", fmt=fmt) in (0.0, 1.0)
        assert R.math_reward("#### 18", text, fmt=fmt) in (0.0, 1.0)
    for fmt in ("hash", "boxed", "answer_tag"):
        assert R.format_reward(text, fmt) in (0.0, 1.0)
    assert R.parse_number(text) is None or isinstance(R.parse_number(text), Fraction)


@settings(max_examples=200, deadline=None, database=None)
@given(_texts)
def test_no_string_crashes_countdown(text):
    with contextlib.suppress(R.ExpressionError):
        R.evaluate_expression(text)
    for fmt in ("answer_tag", "plain"):
        assert R.countdown_reward(text, [1, 2, 3], 6, fmt=fmt) in (0.0, 1.0)
    assert R.check_countdown(text, [1, 2, 3], 6, use_all_numbers=True) in (True, False)


# ---------------------------------------------------------------------------------------------
# Format rewards and combinations


@pytest.mark.parametrize("completion, fmt, reward", [
    ("step 1\n#### 18", "hash", 1.0),
    ("#### 1,250.5\n\n", "hash", 1.0),
    ("#### 18\nand then more text", "hash", 0.0),  # the answer line must come last
    ("#### eighteen", "hash", 0.0),
    ("so \\boxed{\\frac{1}{2}}", "boxed", 1.0),
    ("\\boxed{}", "boxed", 0.0),
    ("<think>..</think>\n<answer> 3 + 4 </answer>", "answer_tag", 1.0),
    ("<answer>1</answer><answer>2</answer>", "answer_tag", 0.0),
    ("</answer>1<answer>", "answer_tag", 0.0),
])
def test_format_reward(completion, fmt, reward):
    assert R.format_reward(completion, fmt) == reward


def test_task_rewards_and_weighted_sum():
    example = {"answer": "18", "question": "?"}
    fns, weights = R.task_rewards("gsm8k")
    assert set(fns) == {"correct", "format"} and weights == {"correct": 1.0, "format": 0.1}
    total = R.weighted_sum(fns, weights)
    assert total("work\n#### 18", example) == pytest.approx(1.1)
    assert total("work\n#### 17", example) == pytest.approx(0.1)
    fns, _ = R.task_rewards("countdown")
    assert fns["correct"]("<answer>3 * 6</answer>", {"numbers": [3, 6], "target": 18}) == 1.0
    assert set(R.task_rewards("arithmetic", "plain")[0]) == {"correct"}
    with pytest.raises(ValueError, match="unknown reward functions"):
        R.weighted_sum(fns, {"speed": 1.0})
    with pytest.raises(ValueError, match="answer format"):
        R.countdown_reward_fn("boxed")


# ---------------------------------------------------------------------------------------------
# Safe scoring


def _raises(completion, example):
    raise RuntimeError("broken verifier")


def _hangs(completion, example):
    threading.Event().wait()  # forever; the thread worker is abandoned, the process killed


def _nan(completion, example):
    return float("nan")


def _length(completion, example):
    return len(completion)


def test_score_thread_counts_errors_and_timeouts():
    completions, examples = ["a", "bb", "ccc"], [{}] * 3
    fns = {"len": _length, "raises": _raises, "hangs": _hangs, "nan": _nan}
    start = time.perf_counter()
    rewards, metrics = R.score(fns, completions, examples, weights={"len": 2.0}, timeout_s=0.2)
    assert time.perf_counter() - start < 3.0  # 3 timeouts of 0.2 s, nothing waits for a hang
    np.testing.assert_array_equal(rewards, [2.0, 4.0, 6.0])
    assert rewards.dtype == np.float32
    assert metrics["reward_errors"] == 6 and metrics["reward_timeouts"] == 3
    assert metrics["reward_errors/raises"] == 3 and metrics["reward_errors/nan"] == 3
    assert metrics["reward_timeouts/hangs"] == 3 and metrics["reward/len"] == 2.0
    assert metrics["reward/total"] == pytest.approx(4.0)


def test_score_process_matches_thread_with_picklable_fns():
    fns, weights = R.task_rewards("gsm8k")
    # Correct is judged on the answer, in any form; the format reward on the asked `#### N`.
    completions = ["#### 18", "it is 18", "\\boxed{18}", "#### 17"]
    examples = [{"answer": "18"}] * 4
    thread = R.score(fns, completions, examples, weights=weights)
    process = R.score(fns, completions, examples, weights=weights, isolation="process")
    np.testing.assert_array_equal(thread[0], process[0])
    np.testing.assert_allclose(thread[0], [1.1, 1.0, 1.0, 0.1], rtol=1e-6)
    assert thread[1] == process[1]
    with pytest.raises(TypeError, match="picklable"):
        R.score({"f": lambda c, e: 1.0}, ["x"], [{}], isolation="process")


def _crash(completion, example):
    os._exit(3)


def _regex_hang(completion, example):
    # Catastrophic backtracking: C code that holds the GIL, which no thread timeout can cut.
    return float(bool(re.match(r"(a+)+$", "a" * 64 + "b")))


def test_score_process_kills_gil_holding_hangs_and_survives_crashes():
    fns = {"len": _length, "regex": _regex_hang, "crash": _crash}
    start = time.perf_counter()
    rewards, metrics = R.score(fns, ["a", "bb"], [{}, {}], timeout_s=0.3, isolation="process",
                               mp_context="fork")
    assert time.perf_counter() - start < 10.0
    np.testing.assert_array_equal(rewards, [1.0, 2.0])
    assert metrics["reward_timeouts/regex"] == 2 and metrics["reward_errors/crash"] == 2


def test_score_rejects_bad_arguments():
    with pytest.raises(ValueError, match="2 completions but 1 examples"):
        R.score({"len": _length}, ["a", "b"], [{}])
    with pytest.raises(ValueError, match="isolation"):
        R.score({"len": _length}, ["a"], [{}], isolation="subinterpreter")
    with pytest.raises(ValueError, match="unknown reward functions"):
        R.score({"len": _length}, ["a"], [{}], weights={"other": 1.0})
