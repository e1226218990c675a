"""Tokenizers: one small interface over SentencePiece models and byte-level BPE vocabularies.

Everything else in rljax (data pipelines, generation, reward functions) sees only `Tokenizer`:

    ids = tok.encode("Hello")                  # list[int]; never adds BOS/EOS
    text = tok.decode(ids)
    prompt = tok.apply_chat_template([{"role": "user", "content": "Hi"}])   # a string, to encode
    tok.vocab_size, tok.bos_id, tok.eos_id, tok.pad_id, tok.eos_ids

Two implementations:
- `SentencePieceTokenizer` loads a `.model` file, e.g. one made by `train_sentencepiece` (BPE with
  byte fallback, so every string round-trips).
- `BPETokenizer` wraps a HuggingFace `tokenizers.Tokenizer`; `BPETokenizer.from_gguf_metadata`
  builds one from the vocabulary a GGUF file carries (`rljax.models.gguf.load_gguf_tokenizer`
  reads the file).

Special tokens are explicit: `encode` adds none (the chat template writes its own markers, and a
data pipeline adds BOS where the model wants it), and no mask is ever inferred from `pad_id`.
"""

from __future__ import annotations

import abc
import datetime
import functools
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import jinja2
import jinja2.ext
import jinja2.sandbox
import sentencepiece as spm
import tokenizers
from tokenizers import decoders, pre_tokenizers

Message = Mapping[str, Any]

# ChatML (`<|im_start|>role\ncontent<|im_end|>\n`), the format of SmolLM2 and Qwen. It is the
# default template of a SentencePiece model that has both markers as pieces, which
# `train_sentencepiece` adds by default.
CHAT_MARKERS = ("<|im_start|>", "<|im_end|>")
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Tokens that end a generation besides the declared EOS: a chat model stops at its end-of-turn
# marker, a base model at its end-of-text. llama.cpp applies the same rule to GGUF vocabularies
# (a control token with one of these names ends generation); this is a subset of its names.
END_OF_GENERATION_TOKENS = (
    "<|endoftext|>", "<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<|end_of_text|>", "<|end|>",
    "<end_of_turn>",
)


class Tokenizer(abc.ABC):
    """Text <-> token ids, the special ids rljax needs, and chat formatting.

    Attributes:
      vocab_size: number of ids the tokenizer can produce (the model's V may be padded larger).
      bos_id: beginning-of-sequence id, or None where the vocabulary has none.
      eos_id: the declared end-of-sequence id.
      pad_id: id written into padding slots; it is never read back as a mask, so where a
        vocabulary declares none it is `eos_id`.
      eos_ids: every id that ends a generation (`eos_id` first), for `generate(eos_ids=...)`.
      chat_template: Jinja source of the chat template, or None.
    """

    def __init__(self, *, vocab_size: int, bos_id: int | None, eos_id: int, pad_id: int | None,
                 eos_ids: Iterable[int] = (), chat_template: str | None = None):
        self.vocab_size = vocab_size
        self.bos_id = bos_id
        self.eos_id = eos_id
        self.pad_id = eos_id if pad_id is None else pad_id
        self.eos_ids = tuple(dict.fromkeys((eos_id, *eos_ids)))  # eos_id first, no repeats
        self.chat_template = chat_template

    @abc.abstractmethod
    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, with no BOS/EOS added. Chat markers in the text (`<|im_start|>`)
        become their single ids."""

    @abc.abstractmethod
    def decode(self, ids: Iterable[int]) -> str:
        """The text of `ids` (any int sequence, e.g. a list or a 1-D array)."""

    @abc.abstractmethod
    def id_to_token(self, token_id: int) -> str:
        """The vocabulary's spelling of one id (e.g. "<|im_end|>", "Ġthe", "▁the")."""

    def apply_chat_template(self, messages: Sequence[Message],
                            add_generation_prompt: bool = True) -> str:
        """Renders a conversation with the tokenizer's chat template, as transformers does.

        Args:
          messages: dicts with "role" ("system", "user", "assistant") and "content" (str).
          add_generation_prompt: end with the header of an assistant turn, so that the model's
            continuation is the reply.
        Returns:
          The prompt as text; `encode` it to get ids.
        """
        if self.chat_template is None:
            raise ValueError(f"this {type(self).__name__} has no chat template")
        special = {name: self.id_to_token(i) for name, i in
                   (("bos_token", self.bos_id), ("eos_token", self.eos_id),
                    ("pad_token", self.pad_id)) if i is not None}
        return render_chat_template(self.chat_template, messages,
                                    add_generation_prompt=add_generation_prompt, **special)


def render_chat_template(template: str, messages: Sequence[Message], *,
                         add_generation_prompt: bool = True, **variables: Any) -> str:
    """Renders a HuggingFace-style Jinja chat template.

    The environment is the one transformers' `apply_chat_template` builds (sandboxed, with
    `trim_blocks`/`lstrip_blocks`, loop controls, `raise_exception`, `strftime_now` and a `tojson`
    that keeps non-ASCII text), so a template from a model card renders identically.
    `variables` are extra template globals, e.g. `bos_token`.
    """
    for message in messages:
        if not isinstance(message, Mapping) or not {"role", "content"} <= message.keys():
            raise ValueError(f"each chat message must be a mapping with 'role' and 'content'; "
                             f"got {message!r}")
    return _compile_chat_template(template).render(
        messages=[dict(m) for m in messages], add_generation_prompt=add_generation_prompt,
        **variables)


@functools.lru_cache(maxsize=16)
def _compile_chat_template(template: str) -> jinja2.Template:
    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent,
                          separators=separators, sort_keys=sort_keys)

    env = jinja2.sandbox.ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)
    return env.from_string(template)


# ---------------------------------------------------------------------------------------------
# SentencePiece


def train_sentencepiece(texts_or_path: Iterable[str] | str | os.PathLike, model_prefix: str,
                        vocab_size: int, *, model_type: str = "bpe",
                        user_defined_symbols: Sequence[str] = CHAT_MARKERS,
                        split_digits: bool = True, **options: Any) -> str:
    """Trains a SentencePiece model that round-trips every string.

    Settings that make `decode(encode(s)) == s`:
      byte_fallback: characters outside the learned pieces become UTF-8 byte pieces (<0x..>)
        instead of <unk>; this takes 256 ids of the vocabulary.
      normalization_rule_name="identity", remove_extra_whitespaces=False: the text is not
        NFKC-normalised and whitespace runs are kept.
      add_dummy_prefix=False: no space is prepended, so text is encoded exactly as given.
    (The one string SentencePiece cannot round-trip is a literal U+2581 "▁", its space marker.)
    Ids: <unk>=0, <s>=1, </s>=2, <pad>=3, then `user_defined_symbols` (matched whole in the text;
    the ChatML markers by default, so `apply_chat_template` works), then bytes and pieces.

    Args:
      texts_or_path: an iterable of training sentences, or the path of a text file with one
        sentence per line.
      model_prefix: output path without extension; writes `{model_prefix}.model` and `.vocab`.
      vocab_size: total vocabulary size, including the 256 byte pieces and the special pieces.
      model_type: "bpe" or "unigram".
      split_digits: every digit is its own piece (as Llama does), which helps arithmetic.
      **options: any other `SentencePieceTrainer` option (e.g. `num_threads`,
        `input_sentence_size`), overriding the defaults above.
    Returns:
      The path of the `.model` file.
    """
    n_fixed = 4 + len(user_defined_symbols) + 256
    if vocab_size <= n_fixed:
        raise ValueError(f"vocab_size={vocab_size} leaves no room for learned pieces: byte "
                         f"fallback and the special pieces already take {n_fixed} ids")
    if isinstance(texts_or_path, (str, os.PathLike)):
        if not os.path.isfile(texts_or_path):
            raise FileNotFoundError(f"SentencePiece training file not found: {texts_or_path}")
        source = {"input": os.fspath(texts_or_path)}
    else:
        source = {"sentence_iterator": iter(texts_or_path)}
    settings = dict(
        model_prefix=model_prefix, vocab_size=vocab_size, model_type=model_type,
        byte_fallback=True, normalization_rule_name="identity", remove_extra_whitespaces=False,
        add_dummy_prefix=False, split_digits=split_digits, allow_whitespace_only_pieces=True,
        character_coverage=1.0, user_defined_symbols=list(user_defined_symbols),
        unk_id=0, bos_id=1, eos_id=2, pad_id=3, minloglevel=2,
    )
    settings.update(options)
    spm.SentencePieceTrainer.train(**source, **settings)
    return f"{model_prefix}.model"


class SentencePieceTokenizer(Tokenizer):
    """A SentencePiece `.model` file.

    Control pieces (<s>, </s>, <pad>) decode to nothing, as in SentencePiece itself. The chat
    template defaults to ChatML when the vocabulary has both ChatML markers, and to none otherwise.
    """

    def __init__(self, model_file: str | os.PathLike, chat_template: str | None = None):
        if not os.path.isfile(model_file):
            raise FileNotFoundError(f"SentencePiece model file not found: {model_file}")
        self._sp = spm.SentencePieceProcessor(model_file=os.fspath(model_file))
        marker_ids = [self._sp.piece_to_id(m) for m in CHAT_MARKERS]
        has_chatml = all(self._sp.id_to_piece(i) == m for i, m in zip(marker_ids, CHAT_MARKERS))
        if chat_template is None and has_chatml:
            chat_template = CHATML_TEMPLATE
        bos, pad = self._sp.bos_id(), self._sp.pad_id()  # -1 where the model has none
        super().__init__(
            vocab_size=self._sp.get_piece_size(),
            bos_id=bos if bos >= 0 else None,
            eos_id=self._sp.eos_id(),
            pad_id=pad if pad >= 0 else None,
            eos_ids=marker_ids[1:] if has_chatml else (),
            chat_template=chat_template,
        )

    def encode(self, text: str) -> list[int]:
        return self._sp.encode(text)

    def decode(self, ids: Iterable[int]) -> str:
        return self._sp.decode([int(i) for i in ids])

    def id_to_token(self, token_id: int) -> str:
        return self._sp.id_to_piece(int(token_id))


# ---------------------------------------------------------------------------------------------
# Byte-level BPE (tokenizers)


def _gpt2_byte_level() -> pre_tokenizers.PreTokenizer:
    """GPT-2's regex split (contractions, letters, digits, punctuation, whitespace), then GPT-2's
    byte-to-unicode spelling."""
    return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)


def _digits_then_byte_level() -> pre_tokenizers.PreTokenizer:
    """Every digit split off on its own first, then GPT-2's split: StarCoder's and SmolLM2's
    pre-tokenizer. llama.cpp runs the same two regexes (`\\p{N}`, then GPT-2's)."""
    return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                    _gpt2_byte_level()])


# `tokenizer.ggml.pre` (the pre-tokenizer name llama.cpp's converter records) -> pre-tokenizer.
# The digit-splitting group is llama.cpp's own grouping of these names. Other names (llama3's
# and qwen2's regexes, ...) are not supported yet: a wrong split silently changes the ids.
GGUF_PRE_TOKENIZERS = {
    "gpt2": _gpt2_byte_level,
    **dict.fromkeys(("smollm", "starcoder", "refact", "command-r", "codeshell", "exaone",
                     "minerva"), _digits_then_byte_level),
}

# llama.cpp's token types (`tokenizer.ggml.token_type`).
_CONTROL, _USER_DEFINED = 3, 4


class BPETokenizer(Tokenizer):
    """A HuggingFace `tokenizers.Tokenizer` (byte-level BPE) with rljax's special ids.

    Special tokens are decoded as their text ("<|im_end|>"), so a rendered chat round-trips.
    """

    def __init__(self, tokenizer: tokenizers.Tokenizer, *, bos_id: int | None, eos_id: int,
                 pad_id: int | None = None, eos_ids: Iterable[int] = (),
                 chat_template: str | None = None):
        self._tokenizer = tokenizer
        super().__init__(vocab_size=tokenizer.get_vocab_size(with_added_tokens=True),
                         bos_id=bos_id, eos_id=eos_id, pad_id=pad_id, eos_ids=eos_ids,
                         chat_template=chat_template)

    @property
    def backend(self) -> tokenizers.Tokenizer:
        """The wrapped `tokenizers.Tokenizer` (e.g. for batch encoding or saving as JSON)."""
        return self._tokenizer

    def encode(self, text: str) -> list[int]:
        return self._tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Iterable[int]) -> str:
        return self._tokenizer.decode([int(i) for i in ids], skip_special_tokens=False)

    def id_to_token(self, token_id: int) -> str:
        return self._tokenizer.id_to_token(int(token_id))

    def save_hf(self, path: str | os.PathLike) -> None:
        """Writes tokenizer.json and tokenizer_config.json (with the chat template and the
        special tokens) into directory `path`: what `transformers.AutoTokenizer.from_pretrained`
        loads as a fast tokenizer with the same ids."""
        path = os.fspath(path)
        self._tokenizer.save(os.path.join(path, "tokenizer.json"))
        name = lambda i: None if i is None else self.id_to_token(i)  # noqa: E731
        config = {"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False,
                  "bos_token": name(self.bos_id), "eos_token": name(self.eos_id),
                  "pad_token": name(self.pad_id if self.pad_id is not None else self.eos_id),
                  "chat_template": self.chat_template}
        with open(os.path.join(path, "tokenizer_config.json"), "w") as f:
            json.dump({k: v for k, v in config.items() if v is not None}, f, indent=2)

    @classmethod
    def from_gguf_metadata(cls, metadata: Mapping[str, Any]) -> BPETokenizer:
        """Builds the tokenizer a GGUF file describes (`tokenizer.*` metadata keys).

        The vocabulary (`tokenizer.ggml.tokens`) is already spelled in GPT-2's byte-to-unicode
        alphabet and `tokenizer.ggml.merges` lists the merges best first, so they make a
        `tokenizers` BPE model as they are. Tokens typed CONTROL become special added tokens and
        USER_DEFINED ones plain added tokens, both matched whole in the text (as transformers'
        GGUF converter does); the pre-tokenizer follows `tokenizer.ggml.pre` (see
        `GGUF_PRE_TOKENIZERS`). `tokenizer.chat_template` is kept for `apply_chat_template`.
        """
        kind = metadata.get("tokenizer.ggml.model")
        if kind != "gpt2":
            raise NotImplementedError(
                f"GGUF tokenizer model {kind!r} is not supported; only 'gpt2' (byte-level BPE)")
        pre = metadata.get("tokenizer.ggml.pre", "gpt2")
        if pre not in GGUF_PRE_TOKENIZERS:
            raise NotImplementedError(f"GGUF pre-tokenizer {pre!r} is not supported; supported: "
                                      f"{sorted(GGUF_PRE_TOKENIZERS)}")
        tokens = list(metadata["tokenizer.ggml.tokens"])
        merges = [tuple(m.split(" ")) for m in metadata.get("tokenizer.ggml.merges", ())]
        model = tokenizers.models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges,
                                      fuse_unk=False, byte_fallback=False)
        tok = tokenizers.Tokenizer(model)
        tok.pre_tokenizer = GGUF_PRE_TOKENIZERS[pre]()
        tok.decoder = decoders.ByteLevel()

        types = metadata.get("tokenizer.ggml.token_type", ())
        control = [i for i, kind in enumerate(types) if kind == _CONTROL]
        tok.add_special_tokens([tokenizers.AddedToken(tokens[i], special=True, normalized=False)
                                for i in control])
        tok.add_tokens([tokenizers.AddedToken(tokens[i], special=False, normalized=False)
                        for i, kind in enumerate(types) if kind == _USER_DEFINED])

        declared = [metadata[f"tokenizer.ggml.{k}_token_id"] for k in ("eot", "eom")
                    if f"tokenizer.ggml.{k}_token_id" in metadata]
        by_name = [i for i in control if tokens[i] in END_OF_GENERATION_TOKENS]
        return cls(tok, bos_id=metadata.get("tokenizer.ggml.bos_token_id"),
                   eos_id=metadata["tokenizer.ggml.eos_token_id"],
                   pad_id=metadata.get("tokenizer.ggml.padding_token_id"),
                   eos_ids=(*declared, *by_name),
                   chat_template=metadata.get("tokenizer.chat_template"))
