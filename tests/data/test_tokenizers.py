"""Tokenizers: SentencePiece training and round trips; the GGUF BPE tokenizer and chat template
against transformers on the real SmolLM2 file."""

import random

import pytest

from rljax.data import tokenizers as tk

# Seen in training: lowercase English words, digits and light punctuation. Everything else in
# ROUND_TRIP (accents, CJK, emoji, tabs, runs of spaces) has to go through byte fallback.
_WORDS = ("the policy gradient of a reward model is estimated from sampled tokens and a baseline "
          "reduces its variance while the clip keeps each update close to the old policy").split()
ROUND_TRIP = [
    "the policy gradient",
    "Grüße aus Köln — 東京 🚀 naïve café",
    "tabs\tand\nnewlines\r\n",
    "  two  spaces  and a trailing one ",
    "<|im_start|>user\nwhat is 12 + 30?<|im_end|>\n",
    "",
]


def _corpus(n=2000, seed=0):
    rng = random.Random(seed)
    return [" ".join(rng.choice(_WORDS) for _ in range(rng.randint(5, 15)))
            + f" {rng.randint(0, 9999)}{rng.choice('.,!?')}" for _ in range(n)]


@pytest.fixture(scope="module")
def sp_model(tmp_path_factory):
    prefix = str(tmp_path_factory.mktemp("spm") / "tiny")
    return tk.train_sentencepiece(_corpus(), prefix, vocab_size=300)


def test_sentencepiece_special_ids(sp_model):
    tok = tk.SentencePieceTokenizer(sp_model)
    assert tok.vocab_size == 300
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (1, 2, 3)
    assert [tok.id_to_token(i) for i in (4, 5)] == list(tk.CHAT_MARKERS)
    assert tok.eos_ids == (2, 5)  # </s> and <|im_end|>


@pytest.mark.parametrize("text", ROUND_TRIP)
def test_sentencepiece_round_trip(sp_model, text):
    tok = tk.SentencePieceTokenizer(sp_model)
    ids = tok.encode(text)
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == text


def test_sentencepiece_byte_fallback_and_markers(sp_model):
    tok = tk.SentencePieceTokenizer(sp_model)
    pieces = [tok.id_to_token(i) for i in tok.encode("東京")]
    assert pieces == ["<0xE6>", "<0x9D>", "<0xB1>", "<0xE4>", "<0xBA>", "<0xAC>"]
    assert tok.encode("<|im_start|>")[0] == 4 and len(tok.encode("<|im_end|>")) == 1
    assert tok.encode("2024") == [tok.encode(d)[0] for d in "2024"]  # split_digits


def test_sentencepiece_chatml(sp_model):
    tok = tk.SentencePieceTokenizer(sp_model)
    chat = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    assert tok.apply_chat_template(chat) == (
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nhello<|im_end|>\n"
        "<|im_start|>assistant\n")
    ids = tok.encode(tok.apply_chat_template(chat, add_generation_prompt=False))
    assert ids.count(4) == 2 and ids.count(5) == 2


def test_sentencepiece_from_file_without_markers(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(_corpus(500, seed=1)))
    model = tk.train_sentencepiece(path, str(tmp_path / "plain"), vocab_size=300,
                                   user_defined_symbols=())
    tok = tk.SentencePieceTokenizer(model)
    assert tok.eos_ids == (2,) and tok.chat_template is None
    with pytest.raises(ValueError, match="no chat template"):
        tok.apply_chat_template([{"role": "user", "content": "hi"}])


def test_sentencepiece_bad_input(tmp_path):
    with pytest.raises(FileNotFoundError):
        tk.SentencePieceTokenizer(tmp_path / "missing.model")
    with pytest.raises(FileNotFoundError):
        tk.train_sentencepiece(tmp_path / "missing.txt", str(tmp_path / "m"), vocab_size=300)
    with pytest.raises(ValueError, match="no room"):
        tk.train_sentencepiece(_corpus(10), str(tmp_path / "m"), vocab_size=262)
    with pytest.raises(ValueError, match="'role' and 'content'"):
        tk.render_chat_template(tk.CHATML_TEMPLATE, [{"content": "no role"}])


def _metadata(**changes):
    """A four-token byte-level vocabulary in GGUF metadata form."""
    meta = {
        "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "smollm",
        "tokenizer.ggml.tokens": ["<|endoftext|>", "<|im_end|>", "a", "b", "ab", "1"],
        "tokenizer.ggml.token_type": [3, 3, 1, 1, 1, 1],
        "tokenizer.ggml.merges": ["a b"],
        "tokenizer.ggml.eos_token_id": 1,
    }
    return {**meta, **changes}


def test_bpe_from_gguf_metadata_synthetic():
    tok = tk.BPETokenizer.from_gguf_metadata(_metadata())
    assert tok.encode("ab<|im_end|>1") == [4, 1, 5]
    assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.eos_ids) == (None, 1, 1, (1, 0))
    for key, value in (("tokenizer.ggml.model", "llama"), ("tokenizer.ggml.pre", "qwen2")):
        with pytest.raises(NotImplementedError, match=value):
            tk.BPETokenizer.from_gguf_metadata(_metadata(**{key: value}))


# ---------------------------------------------------------------------------------------------
# The real SmolLM2 GGUF against transformers' reading of the same file.

BPE_TEXTS = [
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    "def f(x):\n    return x ** 2  # square\n",
    "In 2024, 3.14159 * 1,000,000 = 3141590; x=12345",
    "Answer: 42\n#### 42",
    "naïve café, 日本語, Ελληνικά, emoji 😀👍🏽",
    "Ünïcödé — “quotes” … ‘single’",
    "a  b   c\t\td\n\n\ne   ",
    "   leading",
    "trailing   ",
    "tabs\tand\r\nCRLF",
    "I'm sure they'll say it's fine, don't you think?",
    "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|>text<file_sep>x<|im_start|> spaced <|im_end|>",
    "",
]
CHATS = [
    [{"role": "user", "content": "What is 2 + 2?"},
     {"role": "assistant", "content": "2 + 2 = 4."},
     {"role": "user", "content": "And times 3?"}],
    [{"role": "system", "content": "You are terse."},
     {"role": "user", "content": "Name a prime."},
     {"role": "assistant", "content": "7"},
     {"role": "user", "content": "Another, in café style ☕?"}],
]


@pytest.mark.slow
def test_gguf_special_ids(smollm2_tokenizer):
    assert smollm2_tokenizer.vocab_size == 49152
    assert (smollm2_tokenizer.bos_id, smollm2_tokenizer.eos_id, smollm2_tokenizer.pad_id) == (1, 2, 2)  # <|im_start|>, <|im_end|>
    assert smollm2_tokenizer.eos_ids == (2, 0)  # <|im_end|>, then <|endoftext|>


@pytest.mark.slow
@pytest.mark.parametrize("text", BPE_TEXTS)
def test_gguf_bpe_matches_transformers(smollm2_tokenizer, hf_smollm2_tokenizer, text):
    ids = smollm2_tokenizer.encode(text)
    assert ids == hf_smollm2_tokenizer.encode(text, add_special_tokens=False)
    assert smollm2_tokenizer.decode(ids) == text == hf_smollm2_tokenizer.decode(ids)


@pytest.mark.slow
@pytest.mark.parametrize("text, pieces", [
    ("  12", ["ĠĠ", "1", "2"]),
    ("\n\n42", ["ĊĊ", "4", "2"]),
    ("1. one\n\n2.", ["1", ".", "Ġone", "ĊĊ", "2", "."]),
])
def test_gguf_bpe_whitespace_before_digits(smollm2_tokenizer, text, pieces):
    # SmolLM2's pre-tokenizer splits digits off first, then applies GPT-2's regex, so a run of
    # whitespace before a digit stays one pre-token ("ĠĠ"). This is llama.cpp's "smollm" split and
    # the model's own tokenizer.json (Digits + ByteLevel). transformers (5.23) has no "smollm"
    # entry in its GGUF converter and falls back to GPT-2's regex alone, which cuts such a run
    # into single spaces ("Ġ", "Ġ"): the one place the two differ, so it is pinned here.
    assert [smollm2_tokenizer.id_to_token(i) for i in smollm2_tokenizer.encode(text)] == pieces


@pytest.mark.slow
@pytest.mark.parametrize("chat", CHATS, ids=["no-system", "system"])
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_gguf_chat_template_matches_transformers(smollm2_tokenizer, hf_smollm2_tokenizer, chat, add_generation_prompt):
    ours = smollm2_tokenizer.apply_chat_template(chat, add_generation_prompt=add_generation_prompt)
    theirs = hf_smollm2_tokenizer.apply_chat_template(chat, tokenize=False,
                                            add_generation_prompt=add_generation_prompt)
    assert ours == theirs
    assert ours.startswith("<|im_start|>system\n")  # SmolLM2 adds its default system prompt
