"""Final answers as real models write them: replies of SmolLM2-135M-Instruct (greedy, to the
questions of `two_operand` and GSM8K-style problems) and the forms math solutions end with, each
checked by the reward the tasks use."""

import pytest

from rljax import rewards as R

# (reply, reference, expected score) for `last_integer_reward`, the two_operand reward.
SMOLLM2_REPLIES = [
    ("To add 25 and 60, we need to first find the total of 25 and 60, which is 125. Then, we can add these "
     "two numbers together: 25 + 60 = 125.\n\nThis is a classic example of", "85", 0.0),
    ("To calculate 33 - 19, you simply subtract 33 from 19, which gives you 12.", "14", 0.0),
    ("To calculate 33 - 19, you simply subtract 19 from 33, which gives you 14.", "14", 1.0),
    ("52 - 87 = -35", "-35", 1.0),
    ("The answer is 63.", "63", 1.0),
    ("9 * 7 = 63. So the product of 9 and 7 is 63", "63", 1.0),
    ("The sum of 1,250 and 30 is 1,280.", "1280", 1.0),
    ("The result is 85.5", "85", 0.0),  # not an integer
    ("Half of 170, that is 170/2", "85", 0.0),  # a fraction is not the integer asked for
    ("I cannot compute that.", "85", 0.0),
]


@pytest.mark.parametrize("reply,answer,expected", SMOLLM2_REPLIES)
def test_the_last_integer_of_a_reply_is_its_answer(reply, answer, expected):
    assert R.last_integer_reward(reply, answer) == expected


# (reply, reference, expected) for `math_reward(fmt="auto")`, GSM8K's correctness.
MATH_REPLIES = [
    ("She has 18 dollars left.\n#### 18", "18", 1.0),
    ("So the final answer is $\\boxed{18}$.", "18", 1.0),
    ("Janet sells 16 - 3 - 4 = 9 eggs, so she makes 9 * 2 = $18 every day.", "18", 1.0),
    ("The answer is 18.", "18", 1.0),
    ("Final answer: 1,250", "1250", 1.0),
    ("the answer is: -3.5", "-7/2", 1.0),
    ("The probability is \\frac{3}{4}.", "0.75", 1.0),
    ("The answer is 18. Then she buys 2 more, 20 in all.", "18", 1.0),  # the stated answer counts
    ("#### 17", "18", 0.0),
    ("<answer>18</answer> and then 20", "18", 1.0),
    ("I do not know.", "18", 0.0),
    # symbolic references, judged equivalent by math-verify
    ("So the answer is $1 + x^2$.", "x^2+1", 1.0),
    ("\\boxed{\\sqrt{8}}", "2\\sqrt{2}", 1.0),
    ("\\boxed{\\frac{\\pi}{2}}", "\\pi/2", 1.0),
    ("\\boxed{x^2 - 1}", "x^2+1", 0.0),
    ("\\boxed{C}", "B", 0.0),
]


@pytest.mark.parametrize("reply,answer,expected", MATH_REPLIES)
def test_math_answers_are_found_in_the_forms_models_write(reply, answer, expected):
    assert R.math_reward(reply, answer, fmt="auto") == expected


def test_symbolic_answers_are_judged_off_the_main_thread_too():
    """Reward workers are threads, where math-verify's SIGALRM timeout is not allowed."""
    import threading

    results = []
    worker = threading.Thread(target=lambda: results.append(R.math_reward("\\boxed{1+x^2}", "x^2+1")))
    worker.start()
    worker.join()
    assert results == [1.0]


def test_stated_answers_are_extracted_and_other_text_is_not():
    assert R.extract_stated("Thus, the answer is 42.") == "42"
    assert R.extract_stated("Final Answer: x = 3") == "x = 3"
    assert R.extract_stated("To answer this, add them") is None


def test_gsm8k_rewards_judge_the_answer_in_any_form_and_the_format_apart():
    fns, weights = R.task_rewards("gsm8k")
    example = {"answer": "18"}
    assert fns["correct"]("The answer is 18.", example) == 1.0
    assert fns["format"]("The answer is 18.", example) == 0.0  # `#### N` was asked for
    assert fns["format"]("So:\n#### 18", example) == 1.0
    assert weights == {"correct": 1.0, "format": 0.1}


def test_two_operand_rewards_the_last_integer():
    fns, weights = R.task_rewards("two_operand")
    assert set(fns) == {"correct"} and fns["correct"]("37 + 48 = 85", {"answer": "85"}) == 1.0
