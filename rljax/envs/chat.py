"""Token-in-token-out chat: the tokens between two policy turns, from the chat template.

A multi-turn trajectory is one token stream: the opening prompt, the policy's first reply exactly
as sampled, the template's glue and the environment's messages, the next reply, and so on. The
policy's tokens are never decoded and encoded again: text round trips are not exact (a
tokenizer may merge a reply's last characters with what follows, or drop a newline at a turn
boundary), and a trainer that scores other tokens than the sampler drew learns from the wrong
log-probabilities.

The glue comes from the template itself. With `history` the conversation so far and `prompt`
its rendering with the assistant turn opened, the template renders `history + [reply] +
messages` (the next turn opened) as `prompt + reply + rest`; `rest` is the end of the assistant
turn, the messages, and the next assistant header. When the policy stopped on the template's own
end-of-turn token, `rest` starts with it, and that text is dropped (the policy's token stands for
it). A template that does not render the conversation that way (one that rewrites earlier turns,
or strips a reply's whitespace) is refused with `TemplateError`: the tokens and the text the
environment saw would disagree.
"""

from __future__ import annotations

from collections.abc import Sequence


class TemplateError(ValueError):
    """The chat template cannot bridge two turns exactly (see the module docstring)."""


class ChatBridge:
    """The token ids of a conversation's opening and of the glue between turns, for `tokenizer`
    (an `rljax.data.tokenizers.Tokenizer` with a chat template)."""

    def __init__(self, tokenizer):
        if tokenizer.chat_template is None:
            raise TemplateError(f"multi-turn rollouts need a chat template; this {type(tokenizer).__name__} has none")
        self.tokenizer = tokenizer

    def render(self, messages: Sequence[dict]) -> str:
        return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True)

    def opening(self, messages: Sequence[dict]) -> list[int]:
        """The prompt of the first turn: `messages` rendered, the assistant turn opened."""
        ids = self.tokenizer.encode(self.render(messages))
        if not ids:
            raise TemplateError("the opening messages render to no tokens")
        return ids

    def between(self, history: Sequence[dict], reply: str, stop_token: int | None,
                messages: Sequence[dict]) -> list[int]:
        """The tokens that follow the policy's reply: the end of its turn, `messages`, and the
        next assistant header.

        history: the conversation before the reply (its earlier replies as their text).
        reply: the reply's text, as the environment received it.
        stop_token: the id the reply ended on (an EOS the policy sampled), or None when it was
          cut off; a stop token the template does not write itself stays in the stream, and the
          template's end of turn follows it.
        """
        prompt = self.render(history)
        full = self.render([*history, {"role": "assistant", "content": reply}, *messages])
        if not full.startswith(prompt + reply):
            at = next((i for i, (a, b) in enumerate(zip(full, prompt + reply)) if a != b),
                      min(len(full), len(prompt + reply)))
            raise TemplateError(
                f"the chat template does not extend the conversation it rendered before: at character {at} "
                f"it renders {full[at:at + 40]!r} where the token stream has {(prompt + reply)[at:at + 40]!r}")
        rest = full[len(prompt) + len(reply):]
        if stop_token is not None:
            stop_text = self.tokenizer.id_to_token(stop_token)
            if rest.startswith(stop_text):
                rest = rest[len(stop_text):]
        ids = self.tokenizer.encode(rest)
        if not ids:
            raise TemplateError("the template adds nothing between turns: the next reply would have no header")
        return ids

    def end_of_turn(self) -> int:
        """The stop token the template writes after an assistant reply (e.g. `<|im_end|>`): the
        token a demonstration's reply ends with, so that it reads as the policy's own would."""
        probe = [{"role": "user", "content": "?"}]
        rest = self.render([*probe, {"role": "assistant", "content": "!"}, *probe])[len(self.render(probe)) + 1:]
        for token in self.tokenizer.eos_ids:
            if rest.startswith(self.tokenizer.id_to_token(token)):
                return token
        raise TemplateError(f"no stop token of the tokenizer ({list(self.tokenizer.eos_ids)}) ends an assistant turn "
                            f"of this template; it writes {rest[:30]!r}")

    def conversation(self, messages: Sequence[dict]) -> tuple[list[int], list[bool]]:
        """(token ids, loss mask) of a whole conversation whose assistant turns are replies to
        learn (a demonstration): the same stream a rollout builds, each reply encoded and ended
        with `end_of_turn`, the loss on the replies and their stop tokens only."""
        first = next((i for i, m in enumerate(messages) if m["role"] == "assistant"), None)
        if first is None or first == 0:
            raise ValueError("a demonstration needs opening messages and then at least one assistant reply")
        ids, stop = self.opening(messages[:first]), self.end_of_turn()
        loss = [False] * len(ids)
        i = first
        while i < len(messages):
            reply = messages[i]["content"]
            reply_ids = self.tokenizer.encode(reply) + [stop]
            ids += reply_ids
            loss += [True] * len(reply_ids)
            j = next((k for k in range(i + 1, len(messages)) if messages[k]["role"] == "assistant"), len(messages))
            if j < len(messages):
                glue = self.between(messages[:i], reply, stop, messages[i + 1:j])
                ids += glue
                loss += [False] * len(glue)
            i = j
        return ids, loss
