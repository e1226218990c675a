"""Task datasets: tfds builders (deterministic, disjoint splits, ArrayRecord read back without
TensorFlow), the real GSM8K split, malformed rows, the sampler, prompts, corpus and batching."""

import json
import sys

import numpy as np
import pytest

from rljax.data import arithmetic, batching, countdown, gsm8k, prompts, sampler, tasks
from rljax.data.corpus import tokenizer_corpus
from rljax.rewards import check_countdown, evaluate_expression, parse_number

SMALL = {"train_size": 60, "test_size": 20}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("tfds")


def _splits(builder_cls, **knobs):
    config = builder_cls.config_for(**knobs)
    return builder_cls.make_splits(config)


# ---------------------------------------------------------------------------------------------
# Synthetic builders


@pytest.mark.parametrize("builder_cls, key", [
    (arithmetic.ArithmeticBuilder, lambda ex: ex["question"]),
    (countdown.CountdownBuilder, lambda ex: (tuple(sorted(ex["numbers"])), ex["target"])),
])
def test_synthetic_splits_deterministic_disjoint_prefix_stable(builder_cls, key):
    a, b = _splits(builder_cls, **SMALL), _splits(builder_cls, **SMALL)
    assert a == b
    assert _splits(builder_cls, seed=1, **SMALL) != a
    assert (len(a["train"]), len(a["test"])) == (60, 20)
    train_keys, test_keys = {key(ex) for ex in a["train"]}, {key(ex) for ex in a["test"]}
    assert len(train_keys) == 60 and len(test_keys) == 20 and not train_keys & test_keys
    # The test set does not depend on the train size, and a longer train split extends it.
    bigger = _splits(builder_cls, train_size=90, test_size=20)
    assert bigger["test"] == a["test"] and bigger["train"][:60] == a["train"]


def test_arithmetic_knobs_and_answers():
    splits = _splits(arithmetic.ArithmeticBuilder, num_operands=3, digits=2, operators="+-*/",
                     **SMALL)
    ops_seen = set()
    for ex in splits["train"] + splits["test"]:
        expression = ex["question"].removeprefix("What is ").removesuffix("?")
        tokens = expression.split()
        operands, ops = tokens[0::2], tokens[1::2]
        assert len(operands) == 3 and all(len(o) == 2 for o in operands)
        ops_seen |= set(ops)
        # The stored answer agrees with an independent evaluation (the rewards' parser).
        assert evaluate_expression(expression).value == int(ex["answer"])
    assert ops_seen == set("+-*/")


def test_arithmetic_bad_knobs():
    with pytest.raises(ValueError, match="operators"):
        arithmetic.ArithmeticConfig(operators="+^")
    with pytest.raises(ValueError, match="num_operands"):
        arithmetic.ArithmeticConfig(num_operands=1)
    with pytest.raises(TypeError, match="knobs are"):
        arithmetic.ArithmeticBuilder.config_for(digit=2)
    with pytest.raises(ValueError, match="too few distinct"):  # only 100 sums of two digits
        _splits(arithmetic.ArithmeticBuilder, digits=1, operators="+", train_size=100,
                test_size=10)


def test_config_names_follow_knobs():
    default = arithmetic.ArithmeticBuilder.config_for()
    assert default is arithmetic.ArithmeticBuilder.BUILDER_CONFIGS[0]  # tfds needs the same object
    assert arithmetic.ArithmeticBuilder.config_for(digits=2) is default
    other = arithmetic.ArithmeticBuilder.config_for(digits=3)
    assert other.name != default.name and json.loads(other.description)["digits"] == 3


def test_tfds_round_trip_without_tensorflow(data_dir):
    expected = _splits(arithmetic.ArithmeticBuilder, **SMALL)
    for split in ("train", "test"):
        source = tasks.load_task("arithmetic", split, data_dir=data_dir, **SMALL)
        assert len(source) == len(expected[split])
        assert list(source) == expected[split]  # plain Python values, in generation order
        assert source[-1] == expected[split][-1] and source[1:3] == expected[split][1:3]
    with pytest.raises(IndexError):
        source[len(source)]
    files = list(data_dir.glob("rljax_arithmetic/*/1.0.0/*.array_record*"))
    assert len(files) == 2
    assert "tensorflow" not in sys.modules


def test_countdown_every_example_solvable(data_dir):
    for split in ("train", "test"):
        source = tasks.load_task("countdown", split, data_dir=data_dir, num_numbers=3, **SMALL)
        for ex in source:
            assert len(ex["numbers"]) == 3 and all(1 <= n <= 99 for n in ex["numbers"])
            assert 10 <= ex["target"] <= 100
            assert check_countdown(ex["answer"], ex["numbers"], ex["target"],
                                   use_all_numbers=True), ex
            assert str(ex["target"]) in ex["question"]


def test_load_task_errors(data_dir):
    with pytest.raises(ValueError, match="unknown task"):
        tasks.load_task("mnist", "train", data_dir=data_dir)
    with pytest.raises(ValueError, match="unknown split"):
        tasks.load_task("arithmetic", "validation", data_dir=data_dir)


# ---------------------------------------------------------------------------------------------
# GSM8K


def test_real_gsm8k_split(data_dir):
    rows = gsm8k.read_examples(gsm8k.packaged_path())
    assert len(rows) == 1319
    assert all(parse_number(ex["answer"]) is not None and "," not in ex["answer"] for ex in rows)
    assert rows[0]["answer"] == "18" and rows[0]["id"] == "gsm8k-L1"
    train = tasks.load_task("gsm8k", "train", data_dir=data_dir)
    test = tasks.load_task("gsm8k", "test", data_dir=data_dir)
    assert (len(train), len(test)) == (1000, 319)
    train_ids, test_ids = {ex["id"] for ex in train}, {ex["id"] for ex in test}
    assert not train_ids & test_ids and train_ids | test_ids == {ex["id"] for ex in rows}
    by_id = {ex["id"]: ex for ex in rows}
    assert all(ex == by_id[ex["id"]] for ex in test)
    # Deterministic: the same seed splits the same way, another seed differently.
    assert _splits(gsm8k.Gsm8kBuilder)["test"] == list(test)
    assert _splits(gsm8k.Gsm8kBuilder, seed=1)["test"] != list(test)


@pytest.mark.parametrize("bad_line, message", [
    ('{"question": "q", "answer": "no marker 5"}', "does not end with '#### <number>'"),
    ('{"question": "q", "answer": "#### five"}', "does not end with '#### <number>'"),
    ('{"question": "q"}', "needs string fields"),
    ('{"question": "q", "answer": ', "not valid JSON"),
])
def test_gsm8k_malformed_row_names_the_line(tmp_path, bad_line, message):
    good = json.dumps({"question": "2 + 2?", "answer": "2 + 2 = 4\n#### 4"})
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join([good, good, bad_line, good]) + "\n")
    with pytest.raises(ValueError, match=f"line 3: .*{message}"):
        tasks.load_task("gsm8k", "train", data_dir=tmp_path / "tfds", path=str(path),
                        test_size=1)


def test_gsm8k_user_file(tmp_path):
    path = tmp_path / "rows.jsonl"
    rows = [{"question": f"q{i}", "answer": f"work\n#### {i},000"} for i in range(1, 6)]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    train = tasks.load_task("gsm8k", "train", data_dir=tmp_path / "tfds", path=str(path),
                            test_size=2)
    assert len(train) == 3 and {ex["answer"] for ex in train} < {f"{i}000" for i in range(1, 6)}
    assert all(ex["rationale"] == "work" for ex in train)


# ---------------------------------------------------------------------------------------------
# Sampler, prompts, corpus, batching


def test_sampler_epochs_and_exact_resume():
    source = list(range(10))
    s = sampler.PromptSampler(source, seed=3)
    first = s.next_batch(7) + s.next_batch(7) + s.next_batch(6)  # crosses into epoch 1
    assert sorted(first[:10]) == source and sorted(first[10:]) == source
    assert first[:10] != first[10:] and s.position == 20 and s.epoch == 2
    resumed = sampler.PromptSampler(source, seed=3, position=7)
    assert resumed.next_batch(13) == first[7:]
    assert [next(iter(sampler.PromptSampler(source, seed=3)))] == first[:1]
    assert sampler.PromptSampler(source, shuffle=False).next_batch(12) == source + [0, 1]
    assert sampler.PromptSampler(source, seed=4).next_batch(10) != first[:10]
    with pytest.raises(ValueError, match="empty"):
        sampler.PromptSampler([])


def test_prompts():
    ex = {"question": "What is 2 + 3?", "answer": "5", "rationale": "2 + 3 = 5"}
    assert prompts.plain_prompt(ex) + prompts.plain_target(ex) == "Q: What is 2 + 3?\nA: 5"
    assert prompts.plain_target(ex, rationale=True) == " 2 + 3 = 5\n#### 5"
    messages = prompts.chat_messages(ex, "boxed", system="Be brief.")
    assert [m["role"] for m in messages] == ["system", "user"]
    assert messages[1]["content"].startswith("What is 2 + 3?") and "\\boxed{}" in \
        messages[1]["content"]
    assert "#### <number>" in prompts.chat_messages(ex)[0]["content"]
    with pytest.raises(ValueError, match="answer format"):
        prompts.chat_messages(ex, "latex")


def test_tokenizer_corpus(data_dir, tmp_path):
    texts = list(tokenizer_corpus("arithmetic", data_dir=data_dir, **SMALL))
    assert len(texts) == 60 and all(t.startswith("Q: What is ") and "\nA: " in t for t in texts)
    tokenizers = pytest.importorskip("rljax.data.tokenizers")
    model = tokenizers.train_sentencepiece(texts, str(tmp_path / "tok"), vocab_size=300)
    tok = tokenizers.SentencePieceTokenizer(model)
    assert tok.decode(tok.encode(texts[0])) == texts[0]


def test_pad_left():
    tokens, mask = batching.pad_left([[5, 6, 7], [8], []], pad_id=-1)
    np.testing.assert_array_equal(tokens, [[5, 6, 7], [-1, -1, 8], [-1, -1, -1]])
    np.testing.assert_array_equal(mask, [[1, 1, 1], [0, 0, 1], [0, 0, 0]])
    assert tokens.dtype == np.int32 and mask.dtype == bool
    assert batching.pad_left([[1, 2, 3]], multiple_of=4)[0].shape == (1, 4)
    assert batching.pad_left([[1]], length=3)[1].tolist() == [[False, False, True]]
    with pytest.raises(ValueError, match="row 1 has 3 tokens"):
        batching.pad_left([[1], [1, 2, 3]], length=2)


def test_pad_sft():
    tokens, mask, loss_mask = batching.pad_sft([[1, 2], [3]], [[4], [5, 6, 7]], pad_id=0)
    np.testing.assert_array_equal(tokens, [[1, 2, 4, 0], [3, 5, 6, 7]])
    np.testing.assert_array_equal(mask, [[1, 1, 1, 0], [1, 1, 1, 1]])
    np.testing.assert_array_equal(loss_mask, [[0, 0, 1, 0], [0, 1, 1, 1]])
    assert tokens.dtype == np.int32 and loss_mask.dtype == bool
    with pytest.raises(ValueError, match="2 prompts but 1 answers"):
        batching.pad_sft([[1], [2]], [[3]])


def test_two_operand_splits_share_no_triple_and_train_draws_the_operations_equally(tmp_path):
    import collections

    from rljax.data.tasks import load_task

    knobs = dict(train_size=3000, test_size=60, validation_size=30)
    splits = {s: load_task("two_operand", s, data_dir=str(tmp_path), **knobs) for s in ("train", "validation", "test")}
    questions = {s: [src[i]["question"] for i in range(len(src))] for s, src in splits.items()}
    assert {s: len(q) for s, q in questions.items()} == {"train": 3000, "validation": 30, "test": 60}
    assert not set(questions["train"]) & set(questions["test"])
    assert not set(questions["train"]) & set(questions["validation"])
    assert not set(questions["validation"]) & set(questions["test"])
    assert len(set(questions["test"])) == 60  # distinct held-out questions
    ops = collections.Counter(q.split()[3] for q in questions["train"])
    assert all(900 < ops[op] < 1100 for op in "+-*"), ops
    # The 16 held-out `*` triples whole (a quarter of 64), the rest split evenly between + and -.
    assert collections.Counter(q.split()[3] for q in questions["test"]) == {"*": 16, "+": 22, "-": 22}
    for src in splits.values():
        for i in range(0, len(src), 97):
            a, op, b = src[i]["question"][len("What is "):-1].split()
            assert int(src[i]["answer"]) == {"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b)}[op]
            assert (2 <= int(a) <= 9) if op == "*" else (10 <= int(a) <= 99)
