"""The `code` task: deterministic, disjoint splits of function-writing problems whose reference
solutions pass their hidden tests (on the host at build time, and in the sandbox)."""

import pytest

from rljax.data import code, tasks
from rljax.data.prompts import chat_messages, plain_prompt, plain_target
from rljax.rewards import run_code

SMALL = {"train_size": 120, "test_size": 30}


def _splits(**knobs):
    return code.CodeBuilder.make_splits(code.CodeBuilder.config_for(**knobs))


def test_splits_are_deterministic_disjoint_and_prefix_stable():
    a = _splits(**SMALL)
    assert a == _splits(**SMALL) and a != _splits(seed=1, **SMALL)
    train, test = {e["question"] for e in a["train"]}, {e["question"] for e in a["test"]}
    assert len(train) == 120 and len(test) == 30 and not train & test
    bigger = _splits(train_size=150, test_size=30)
    assert bigger["test"] == a["test"] and bigger["train"][:120] == a["train"]


def test_problems_are_varied_and_their_tests_hidden():
    examples = _splits(**SMALL)["train"]
    arguments = {e["question"].split("(", 1)[1].split(")", 1)[0] for e in examples}
    assert arguments == {"x", "xs", "s"}
    bodies = {e["answer"].split("return ", 1)[1].split(" ")[0] for e in examples}
    assert len(bodies) > 10
    for e in examples:
        assert e["answer"].startswith(f"def {e['entry_point']}(") and "\n" not in e["answer"]
        lines = e["tests"].splitlines()
        assert len(lines) == 5 and all(line.startswith(f"assert {e['entry_point']}(")
                                       for line in lines)
        assert lines[0].split("(", 1)[1].startswith(("0)", "[])", "'')"))  # the edge case
        assert "assert" not in e["question"]
        namespace = {}
        exec(e["answer"] + "\n" + e["tests"], namespace)  # our own reference code


def test_groups_knob():
    only_strings = _splits(groups="str", train_size=20, test_size=5)
    assert all("(s)" in e["question"] for e in only_strings["train"])
    for bad in ("int,int", "ints", ""):
        with pytest.raises(ValueError, match="CodeConfig.groups"):
            code.CodeConfig(groups=bad)


def test_load_task_reads_back_the_fields(tmp_path):
    source = tasks.load_task("code", "test", data_dir=tmp_path, train_size=40, test_size=10)
    assert len(source) == 10
    example = source[0]
    assert set(example) == {"id", "question", "answer", "tests", "entry_point"}
    assert example == {**_splits(train_size=40, test_size=10)["test"][0]}
    assert plain_prompt(example).startswith("Q: Write a Python function")
    assert plain_target(example) == " " + example["answer"]
    assert "```python" in chat_messages(example, "code_block")[-1]["content"]


@pytest.mark.sandbox
def test_references_pass_in_the_sandbox_and_other_problems_references_do_not():
    examples = _splits(train_size=8, test_size=4)["test"]
    for i, e in enumerate(examples):
        assert run_code(e["answer"], e["tests"]).passed, e
        other = examples[(i + 1) % len(examples)]
        renamed = other["answer"].replace(f"def {other['entry_point']}(",
                                          f"def {e['entry_point']}(", 1)
        assert not run_code(renamed, e["tests"]).passed, (renamed, e)
