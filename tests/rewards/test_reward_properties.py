"""Property tests: no input crashes or stalls a reward parser.

A policy writes anything: megabyte-long digit runs, brackets nested thousands deep, half-open
markers, stray Unicode. Every parser in rljax.rewards must answer such text with its "no
answer" value (None, 0.0, False, or `ExpressionError` for `evaluate_expression`), never with
another exception, and quickly. The strategies below aim at the parsers' edges: numbers of every
shape (huge, signed, with commas and decimals, fractions with zero denominators, LaTeX
fractions), the markers each extractor looks for, and deep nesting. `test_rewards.py` has the
table-driven and reference checks; this file only asks that nothing breaks.
"""

import contextlib
import time
from fractions import Fraction

from hypothesis import given, settings
from hypothesis import strategies as st

from rljax import rewards as R
from rljax.rewards.code_answers import code_block_format_reward
from rljax.rewards.numbers import clean_latex, iter_numbers

PROPERTY = settings(max_examples=150, deadline=None, database=None)

# -- strategies -----------------------------------------------------------------------------------
_digits = st.text("0123456789", min_size=1, max_size=30)
_huge = st.integers(0, 6000).map(lambda n: "9" * n) | st.integers(-(10 ** 80), 10 ** 80).map(str)
_decimal = st.builds(lambda a, b: f"{a}.{b}", _digits, _digits)
_commas = st.lists(st.text("0123456789", min_size=3, max_size=3), min_size=1,
                   max_size=6).map(lambda groups: "1," + ",".join(groups))
_fraction = st.builds(lambda a, b: f"{a}/{b}", _digits | _decimal, _digits | st.just("0"))
_latex_fraction = st.builds(lambda cmd, a, b: f"\\{cmd}{{{a}}}{{{b}}}",
                            st.sampled_from(["frac", "dfrac", "tfrac"]), _digits, _digits)
numbers = st.one_of(_digits, _huge, _decimal, _commas, _fraction, _latex_fraction,
                    st.floats(allow_nan=True, allow_infinity=True).map(repr),
                    st.sampled_from(["-0", "\u22127", ".5", "5.", "1/0", "0/0", "-", "1e999"]))

MARKERS = ["####", "\\boxed{", "\\boxed ", "\\fbox{", "{", "}", "<answer>", "</answer>",
           "\\frac{", "\\frac", "\\text{", "\\left(", "\\right)", "$", "\\$", "%", "{,}",
           "(", ")", "+", "-", "*", "/", "\u2212", "\u00d7", "\u00f7", "\u2217", "=", "\n", " ",
           "```", "```python\n", "\u2581", "\x00"]
injected = st.lists(st.one_of(st.sampled_from(MARKERS), numbers, st.text(max_size=4)),
                    max_size=30).map("".join)


def _nest(open_, close, middle):
    return st.builds(lambda n, m: open_ * n + m + close * n, st.integers(0, 3000), middle)


deep = st.one_of(_nest("(", ")", numbers), _nest("\\boxed{", "}", numbers),
                 _nest("{", "}", numbers), _nest("<answer>", "</answer>", numbers),
                 _nest("```", "```", st.text(max_size=5)),
                 st.integers(0, 3000).map(lambda n: "(" * n),
                 st.integers(0, 3000).map(lambda n: "1+" * n + "1"),
                 st.integers(0, 3000).map(lambda n: "\\frac{" * n + "1" + "}{2}" * n))
texts = st.one_of(st.text(), injected, deep,
                  st.builds(lambda a, b, c: a + b + c, st.text(max_size=10), deep, injected))


# -- the parsers ----------------------------------------------------------------------------------
def _number_or_none(value):
    assert value is None or isinstance(value, Fraction), value


@PROPERTY
@given(texts)
def test_number_parsers(text):
    _number_or_none(R.parse_number(text))
    _number_or_none(R.first_number(text))
    _number_or_none(R.last_number(text))
    for value in iter_numbers(text):
        _number_or_none(value)
    assert isinstance(clean_latex(text), str)


@PROPERTY
@given(texts)
def test_answer_extractors(text):
    for extract in (R.extract_hash, R.extract_boxed, R.extract_answer_tag):
        answer = extract(text)
        assert answer is None or isinstance(answer, str)
    for fmt in R.ANSWER_FORMATS + ("auto",):
        _number_or_none(R.extract_number(text, fmt))
        answer = R.extract_answer(text, fmt)
        assert answer is None or isinstance(answer, str)


@settings(max_examples=40, deadline=None, database=None)  # math-verify costs ~0.1 s a call
@given(texts, st.one_of(numbers, texts))
def test_math_reward_on_any_completion_and_reference(completion, reference):
    for fmt in R.ANSWER_FORMATS + ("auto",):
        assert R.math_reward(completion, reference, fmt=fmt) in (0.0, 1.0)
        assert R.math_reward(reference, completion, fmt=fmt) in (0.0, 1.0)


@PROPERTY
@given(numbers, numbers, st.floats(0, 1))
def test_numbers_close_on_parsed_numbers(a, b, tol):
    x, y = R.parse_number(a), R.parse_number(b)
    if x is not None and y is not None:
        assert R.numbers_close(x, y, tol) in (True, False)


@PROPERTY
@given(texts, st.lists(st.integers(-(10 ** 30), 10 ** 30), max_size=8),
       st.integers(-(10 ** 30), 10 ** 30))
def test_countdown_parser_and_checker(text, given_numbers, target):
    with contextlib.suppress(R.ExpressionError):
        evaluation = R.evaluate_expression(text)
        assert isinstance(evaluation.value, Fraction)
    assert R.check_countdown(text, given_numbers, target) in (True, False)
    assert R.check_countdown(text, given_numbers, target, use_all_numbers=True) in (True, False)
    for fmt in ("answer_tag", "plain"):
        expression = R.extract_expression(text, fmt)
        assert expression is None or isinstance(expression, str)
        assert R.countdown_reward(text, given_numbers, target, fmt=fmt) in (0.0, 1.0)


@PROPERTY
@given(texts)
def test_format_rewards(text):
    for fmt in ("hash", "boxed", "answer_tag"):
        assert R.format_reward(text, fmt) in (0.0, 1.0)
    assert code_block_format_reward(text) in (0.0, 1.0)


@PROPERTY
@given(texts)
def test_code_extraction(text):
    for fmt in R.CODE_FORMATS:
        program = R.extract_program(text, fmt)
        assert program is None or (isinstance(program, str) and program.strip())


@PROPERTY
@given(texts)
def test_task_reward_functions(text):
    """The composed reward functions of the math tasks, as the RL loop calls them."""
    examples = {"arithmetic": {"answer": "18"}, "gsm8k": {"answer": "1,250"},
                "countdown": {"numbers": [3, 5, 2], "target": 16, "answer": "(3 + 5) * 2"}}
    for task, example in examples.items():
        fns, weights = R.task_rewards(task)
        total = R.weighted_sum(fns, weights)(text, example)
        assert 0.0 <= total <= sum(weights.values())


# -- worst cases, timed ---------------------------------------------------------------------------
# About 100 KB each: far longer than any completion of a few thousand tokens.
WORST_CASES = [
    "9" * 100_000,
    "1," * 50_000 + "000",
    "(" * 50_000 + "1" + ")" * 50_000,
    "\\boxed{" * 10_000 + "5" + "}" * 10_000,
    "<answer>" * 10_000 + "</answer>" * 10_000,
    "####" * 25_000,
    "```" * 30_000,
    "\\frac{" * 10_000 + "1" + "}{2}" * 10_000,
    "1/" * 50_000 + "1",
    "-" * 100_000 + "5",
    "1+" * 50_000 + "1",
]


def test_worst_cases_are_fast():
    """100 KB of pathological text goes through every parser in seconds (a backtracking regex
    or a quadratic scan would take minutes); the bound is loose for a loaded CI machine."""
    for text in WORST_CASES:
        start = time.perf_counter()
        test_number_parsers.hypothesis.inner_test(text)
        test_answer_extractors.hypothesis.inner_test(text)
        test_format_rewards.hypothesis.inner_test(text)
        test_code_extraction.hypothesis.inner_test(text)
        test_countdown_parser_and_checker.hypothesis.inner_test(text, [1, 2], 3)
        test_math_reward_on_any_completion_and_reference.hypothesis.inner_test(text, "18")
        elapsed = time.perf_counter() - start
        assert elapsed < 10.0, (text[:20], elapsed)
