"""Preference data: the JSONL forms (plain, UltraFeedback messages, HH transcripts), errors that
name the line and row id, the tfds builder, the unpaired (KTO) view, and model-sampled pairs
(`rljax.train.pairs`), which write and read back that JSONL."""

import json
import os

import jax
import pytest

from rljax import models
from rljax.data import preference, tokenizers
from rljax.data.tasks import load_task
from rljax.rewards import math_reward_fn
from rljax.data.prompts import plain_prompt
from rljax.train.pairs import sample_pairs, sampled_pairs_file

HH_CHOSEN = "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: 2+2?\n\nAssistant: 4"
HH_REJECTED = "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: 2+2?\n\nAssistant: 5"


def _write(tmp_path, rows, name="prefs.jsonl"):
    path = tmp_path / name
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


def test_the_three_jsonl_forms(tmp_path):
    def messages(answer):
        return [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": answer}]

    path = _write(tmp_path, [
        {"prompt": "Q: 2+2?\nA:", "chosen": " 4", "rejected": " 5", "answer": 4},
        {"id": "uf-1", "prompt": "2+2?", "chosen": messages("4"), "rejected": messages("5")},
        {"chosen": messages("4"), "rejected": messages("5")},
        "",
        {"chosen": HH_CHOSEN, "rejected": HH_REJECTED},
    ])
    plain, uf, uf_no_prompt, hh = preference.read_preference_jsonl(path)
    assert plain == {"id": "L1", "question": "Q: 2+2?\nA:", "answer": "4", "prompt": "Q: 2+2?\nA:",
                     "chosen": " 4", "rejected": " 5"}
    assert (uf["id"], uf["prompt"], uf["chosen"], uf["rejected"], uf["answer"]) == ("uf-1", "2+2?", "4", "5", "")
    assert uf_no_prompt["prompt"] == "\n\nHuman: 2+2?\n\nAssistant:"
    assert hh["id"] == "L5"
    assert hh["prompt"] == "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: 2+2?\n\nAssistant:"
    assert (hh["chosen"], hh["rejected"]) == (" 4", " 5")
    assert hh["prompt"] + hh["chosen"] == HH_CHOSEN


@pytest.mark.parametrize("row, message", [
    ('{"prompt": "x", "chosen": "a"', r"line 2: not valid JSON"),
    ('["x"]', r"line 2: a row must be a JSON object"),
    ({"id": "r7", "prompt": "x", "chosen": "a"}, r"line 2 \(id r7\): missing field\(s\) \['rejected'\]"),
    ({"prompt": 3, "chosen": "a", "rejected": "b"}, r"line 2 \(id L2\): 'prompt' must be text"),
    ({"chosen": "a", "rejected": "b"}, r"line 2 \(id L2\): no 'prompt' field.*not an HH transcript"),
    ({"chosen": HH_CHOSEN, "rejected": "\n\nHuman: other\n\nAssistant: 5"}, r"\(id L2\): the HH transcripts"),
    ({"prompt": "x", "chosen": [{"role": "user", "content": "a"}], "rejected": [{"role": "assistant",
                                                                                  "content": "b"}]},
     r"\(id L2\): the last message of 'chosen' must be the assistant's"),
    ({"prompt": "x", "chosen": [{"role": "assistant", "content": "a"}], "rejected": ["b"]},
     r"\(id L2\): 'rejected' must be text or a list"),
    ({"prompt": "x", "chosen": "a", "rejected": ["b"]}, r"\(id L2\): 'chosen' and 'rejected' must both be text"),
    ({"prompt": "x", "chosen": "a", "rejected": 5}, r"\(id L2\): 'chosen' and 'rejected' must both be text"),
    ({"id": "r1", "prompt": "x", "chosen": "a", "rejected": "b"}, r"line 2: id 'r1' repeats line 1"),
])
def test_malformed_rows_name_the_line_and_id(tmp_path, row, message):
    path = _write(tmp_path, [{"id": "r1", "prompt": "x", "chosen": "a", "rejected": "b"}, row])
    with pytest.raises(ValueError, match=message):
        preference.read_preference_jsonl(path)


def test_builder_splits_and_rebuilds_when_the_file_changes(tmp_path):
    rows = [{"id": f"p{i}", "prompt": f"Q{i}", "chosen": f" c{i}", "rejected": f" r{i}"} for i in range(30)]
    path = _write(tmp_path, rows)
    data_dir = tmp_path / "tfds"
    train = preference.load_preferences(path, "train", data_dir, test_size=10)
    test = preference.load_preferences(path, "test", data_dir, test_size=10)
    assert (len(train), len(test)) == (20, 10)
    got = {r["id"]: r for r in list(train) + list(test)}
    assert sorted(got) == sorted(r["id"] for r in rows)
    assert got["p3"] == {"id": "p3", "question": "Q3", "answer": "", "prompt": "Q3", "chosen": " c3", "rejected": " r3"}
    _write(tmp_path, rows[:15])  # same path, new content: a new dataset, not the cached one
    assert len(preference.load_preferences(path, "train", data_dir, test_size=10)) == 5
    with pytest.raises(ValueError, match="test_size=20 leaves no training pairs"):
        preference.load_preferences(path, "train", data_dir, test_size=20)


def test_the_held_out_split_keeps_every_pair_of_a_prompt_together(tmp_path):
    rows = [{"id": f"p{i}/{k}", "prompt": f"Q{i}", "chosen": f" c{i}", "rejected": f" r{i}{k}"}
            for i in range(12) for k in range(i % 3 + 1)]  # 1 to 3 pairs per prompt
    path = _write(tmp_path, rows)
    train, test = (list(preference.load_preferences(path, s, tmp_path / "tfds", test_size=5)) for s in ("train", "test"))
    assert len(train) + len(test) == len(rows)
    assert len({r["prompt"] for r in test}) == 5 and not {r["prompt"] for r in train} & {r["prompt"] for r in test}
    counts = {r["prompt"]: sum(x["prompt"] == r["prompt"] for x in rows) for r in test}
    assert all(sum(x["prompt"] == p for x in test) == n for p, n in counts.items())
    with pytest.raises(ValueError, match="test_size=12 leaves no training pairs: the file has 12 distinct prompts"):
        preference.load_preferences(path, "train", tmp_path / "tfds", test_size=12)


def test_unpaired_view():
    pairs = [{"id": f"p{i}", "question": "q", "answer": "1", "prompt": f"Q{i}", "chosen": f"c{i}",
              "rejected": f"r{i}"} for i in range(3)]
    view = preference.unpaired(pairs)
    assert len(view) == 6
    assert view[2] == {"id": "p1/chosen", "question": "q", "answer": "1", "prompt": "Q1", "completion": "c1",
                       "desirable": True}
    assert (view[5]["completion"], view[5]["desirable"]) == ("r2", False)
    assert view[-1] == view[5]
    with pytest.raises(IndexError):
        view[6]


@pytest.fixture(scope="module")
def arithmetic(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("tfds")
    knobs = dict(num_operands=2, digits=1, operators="+-", train_size=40, test_size=10)
    examples = list(load_task("arithmetic", "train", data_dir, **knobs))
    texts = [plain_prompt(e) + f" {e['answer']}" for e in examples] * 20
    prefix = str(tmp_path_factory.mktemp("spm") / "arith")
    tokenizer = tokenizers.SentencePieceTokenizer(tokenizers.train_sentencepiece(texts, prefix, vocab_size=300))
    cfg = models.get_config("tiny", d_model=32, n_layers=1, n_heads=2, n_kv_heads=1, head_dim=16, mlp_dim=64,
                            vocab_size=tokenizer.vocab_size)
    return examples, tokenizer, cfg, models.init(cfg, jax.random.PRNGKey(0)), data_dir


def test_sampled_pairs_are_correct_versus_incorrect_and_cached(arithmetic, tmp_path):
    examples, tokenizer, cfg, params, _ = arithmetic
    reward_fn = math_reward_fn("plain")
    kwargs = dict(prompt_fn=plain_prompt, reward_fn=reward_fn, samples_per_prompt=4, max_new_tokens=3,
                  batch_size=16)
    rows = sample_pairs(cfg, params, tokenizer, examples[:20], jax.random.PRNGKey(1), **kwargs)
    assert rows, "an untrained model answers wrongly: every prompt has a wrong sample"
    by_id = {e["id"]: e for e in examples}
    for row in rows:
        example = by_id[row["id"]]
        assert row["prompt"] == plain_prompt(example) and row["answer"] == example["answer"]
        assert reward_fn(row["chosen"], example) == 1.0 and reward_fn(row["rejected"], example) == 0.0
    path = sampled_pairs_file(cfg, params, tokenizer, examples[:20], 1, data_dir=tmp_path, **kwargs)
    assert preference.read_preference_jsonl(path) == rows  # the same seeded draw
    mtime = os.path.getmtime(path)
    again = sampled_pairs_file(cfg, params, tokenizer, examples[:20], 1, data_dir=tmp_path, **kwargs)
    assert again == path and os.path.getmtime(path) == mtime  # cached, not sampled again
    other = sampled_pairs_file(cfg, params, tokenizer, examples[:20], 2, data_dir=tmp_path, **kwargs)
    assert other != path


def test_several_pairs_per_prompt_reject_distinct_wrong_samples(arithmetic):
    examples, tokenizer, cfg, params, _ = arithmetic
    reward_fn = math_reward_fn("plain")
    kwargs = dict(prompt_fn=plain_prompt, reward_fn=reward_fn, samples_per_prompt=6, max_new_tokens=3,
                  batch_size=16)
    one = sample_pairs(cfg, params, tokenizer, examples[:16], jax.random.PRNGKey(1), **kwargs)
    several = sample_pairs(cfg, params, tokenizer, examples[:16], jax.random.PRNGKey(1),
                           pairs_per_prompt=3, **kwargs)
    assert len({r["id"] for r in several}) == len(several) > len(one)
    by_id = {e["id"]: e for e in examples}
    by_prompt = {}
    for row in several:
        example = by_id[row["id"].split("/")[0]]
        assert reward_fn(row["chosen"], example) == 1.0 and reward_fn(row["rejected"], example) == 0.0
        by_prompt.setdefault(row["prompt"], []).append(row["rejected"])
    assert all(len(set(r)) == len(r) <= 3 for r in by_prompt.values())
    assert [r for r in several if "/" not in r["id"]] == one  # a prompt's first pair is the one-pair draw
    with pytest.raises(ValueError, match="pairs_per_prompt=0"):
        sample_pairs(cfg, params, tokenizer, examples[:2], jax.random.PRNGKey(1), pairs_per_prompt=0, **kwargs)
