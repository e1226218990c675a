"""The configs' environments: the game's rules, the scripted experts, and their task data."""

import pytest

from rljax import envs
from rljax.data.guess_number import GuessNumberBuilder
from rljax.data.tasks import TASKS
from rljax.envs.games import bisect, demonstration, make_env


def test_guess_number_says_higher_or_lower_and_pays_only_a_find_in_time():
    env = envs.GuessNumber(secret=21, max_turns=3)
    assert "from 1 to 32" in env.reset()[0]["content"]
    first = env.step("I guess 16")
    assert first.messages[0]["content"] == "Higher. It is from 17 to 32." and first.reward == 0 and not first.done
    assert env.step("30").messages[0]["content"] == "Lower. It is from 17 to 29."
    assert env.step("no idea") == envs.Step(reward=0.0, done=True, info={"guesses": 3})
    env.reset()
    assert env.step("21") == envs.Step(reward=1.0, done=True, info={"guesses": 1})
    with pytest.raises(ValueError, match="not in"):
        envs.GuessNumber(secret=40)


def test_the_bisecting_expert_finds_every_secret_within_six_guesses():
    turns = []
    for secret in range(1, 33):
        messages = demonstration("guess_number", {"answer": str(secret)}, max_turns=6)
        guesses = [m["content"] for m in messages if m["role"] == "assistant"]
        assert guesses[-1] == str(secret) and len(guesses) <= 6
        turns.append(len(guesses))
    assert max(turns) == 6 and min(turns) == 1
    assert bisect([{"content": "?"}, {"content": "16"}, {"content": "Lower."}], 1, 32) == "8"


def test_the_tool_expert_calls_then_answers_and_without_tools_answers_at_once():
    example = {"question": "What is 347 * 28?", "answer": "9716"}
    with_tool = demonstration("tool_qa", example, max_turns=3, tools=("calculator",))
    assert [m["role"] for m in with_tool] == ["system", "user", "assistant", "tool", "assistant"]
    assert with_tool[3]["content"] == with_tool[4]["content"] == "9716"
    assert "<tool_call>" in with_tool[2]["content"]
    alone = demonstration("tool_qa", example, max_turns=3)
    assert [m["role"] for m in alone] == ["user", "assistant"] and alone[1]["content"] == "9716"
    with pytest.raises(ValueError, match="unknown tools"):
        make_env("tool_qa", example, max_turns=3, tools=("shell",))
    with pytest.raises(ValueError, match="unknown environment"):
        make_env("chess", example, max_turns=3)


@pytest.mark.parametrize("hold_out", [False, True])
def test_guess_number_splits(hold_out):
    splits = GuessNumberBuilder.make_splits(GuessNumberBuilder.config_for(hold_out_secrets=hold_out, train_size=500))
    secrets = {k: {int(e["answer"]) for e in v} for k, v in splits.items()}
    if hold_out:
        assert len(secrets["test"]) == 8 and len(secrets["validation"]) == 8
        assert not secrets["train"] & (secrets["test"] | secrets["validation"])
        assert not secrets["test"] & secrets["validation"]
    else:
        assert secrets["test"] == set(range(1, 33)) == secrets["train"]
    with pytest.raises(ValueError, match="leave none"):
        GuessNumberBuilder.config_for(hold_out_secrets=True, test_size=20, validation_size=12)


def test_arithmetic_takes_digits_per_operand():
    config = TASKS["arithmetic"].config_for(num_operands=2, digits=(3, 2), operators="*", train_size=50, test_size=5)
    for example in TASKS["arithmetic"].make_splits(config)["train"]:
        a, b = example["question"].removeprefix("What is ").removesuffix("?").split(" * ")
        assert len(a) == 3 and len(b) == 2 and int(example["answer"]) == int(a) * int(b)
    with pytest.raises(ValueError, match="one\nper operand|one per operand"):
        TASKS["arithmetic"].config_for(num_operands=2, digits=(3, 2, 1))
