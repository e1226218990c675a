"""Multi-turn rollouts on SmolLM2's chat template: the token stream is exactly what was sampled
and said, the cached continuation scores tokens as a fresh forward pass does, and one failing
row leaves the others alone."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rljax import envs, generate, losses, models
from rljax.envs.chat import ChatBridge, TemplateError
from rljax.train.trajectories import TrajectoryBatch

MESSAGES = ("Line one\n  indented, trailing space ", "héllo ✓ — {\"json\": [1, 2]}", "<b>tags</b>\n\n\nblank lines")


class Echo(envs.Env):
    """Answers each reply with a fixed message of its own (rows differ in length), records what it got."""

    def __init__(self, row: int, turns: int = 3):
        self.row, self.turns = row, turns

    def reset(self):
        self.received = []
        return [{"role": "user", "content": "Talk to me" + "!" * self.row}]

    def step(self, reply):
        self.received.append(reply)
        text = MESSAGES[(self.row + len(self.received)) % len(MESSAGES)] + " #" * self.row
        return envs.Step(messages=[{"role": "user", "content": text}], reward=0.5, done=len(self.received) == self.turns)


def runs(mask_row: np.ndarray) -> list[tuple[int, int]]:
    """[start, stop) of each run of True."""
    edges = np.diff(np.concatenate([[0], mask_row.astype(int), [0]]))
    return list(zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)))


@pytest.fixture(scope="module")
def echo_rollout(chatty_policy, smollm2_tokenizer):
    cfg, params = chatty_policy
    environments = [Echo(row) for row in range(5)]
    traj = envs.rollout(cfg, params, smollm2_tokenizer, environments, jax.random.PRNGKey(3), max_turns=4,
                        max_new_tokens=12, max_total_tokens=320)
    return traj, environments


def test_every_sampled_run_decodes_to_the_reply_its_environment_received(echo_rollout, smollm2_tokenizer):
    traj, environments = echo_rollout
    eos = set(smollm2_tokenizer.eos_ids)
    ended_on_stop = 0
    for row, env in enumerate(environments):
        spans = runs(traj.loss_mask[row])
        assert len(spans) == len(env.received) == traj.num_turns[row] == 3
        for (start, stop), reply in zip(spans, env.received):
            ids = [int(t) for t in traj.tokens[row, start:stop]]
            ended_on_stop += ids[-1] in eos
            assert smollm2_tokenizer.decode([t for t in ids if t not in eos]) == reply
    assert 0 < ended_on_stop < 15, "both ways a turn ends (stop token, token budget) must occur"
    np.testing.assert_array_equal(traj.rewards, np.full(5, 1.5, np.float32))
    assert not traj.truncated.any() and not traj.errored.any()


def test_environment_messages_appear_verbatim_and_the_stream_is_the_template_rendering(echo_rollout,
                                                                                      smollm2_tokenizer):
    traj, environments = echo_rollout
    tok, rendered = smollm2_tokenizer, 0
    for row, env in enumerate(environments):
        text = tok.decode([int(t) for t in traj.tokens[row][traj.mask[row]]])
        conversation = Echo(row).reset()  # a fresh one: reset() clears what env received
        for k, reply in enumerate(env.received):
            conversation += [{"role": "assistant", "content": reply}]
            if k < len(env.received) - 1:  # the last step says done: its message is not sent
                said = MESSAGES[(row + k + 1) % len(MESSAGES)] + " #" * row
                assert said in text
                conversation += [{"role": "user", "content": said}]
        # The stream is the template's own rendering of the conversation: a reply the policy
        # ended on <|im_end|> and a cut-off one that the bridge closed read alike.
        last = traj.tokens[row][traj.mask[row]][-1]
        ending = "\n" if last == tok.eos_id else "<|im_end|>\n"
        if not (set(tok.eos_ids) - {tok.eos_id}) & set(traj.tokens[row][traj.loss_mask[row]].tolist()):
            assert text + ending == tok.apply_chat_template(conversation, add_generation_prompt=False)
            rendered += 1
    assert rendered >= 4


def test_rollout_logprobs_equal_a_teacher_forced_forward_pass(echo_rollout, chatty_policy):
    traj, _ = echo_rollout
    cfg, params = chatty_policy
    logits, _ = models.apply(cfg, params, traj.tokens, mask=traj.mask)
    forced = np.asarray(losses.token_logprobs(logits[:, :-1], jnp.asarray(traj.tokens[:, 1:])))
    sampled = traj.loss_mask[:, 1:]
    assert sampled.sum() > 40
    np.testing.assert_allclose(forced[sampled], traj.logprobs[:, 1:][sampled], atol=1e-4, rtol=0)
    assert np.all(traj.logprobs[~traj.loss_mask] == 0)


def test_the_policy_gradient_is_exactly_zero_off_the_loss_mask(echo_rollout, chatty_policy):
    traj, _ = echo_rollout
    cfg, params = chatty_policy
    batch = TrajectoryBatch.from_trajectories(traj, group_size=5, turn_rewards=True)
    np.testing.assert_allclose(batch.token_rewards.sum(axis=1), traj.rewards, rtol=1e-6)
    assert np.all(batch.token_rewards[~batch.loss_mask] == 0)
    logits, _ = models.apply(cfg, params, batch.tokens, mask=batch.attention_mask)
    advantages = jnp.asarray([-1.0, -0.5, 0.5, 1.0, 2.0])

    def loss(logits):
        logp = losses.token_logprobs(logits[:, :-1], jnp.asarray(batch.tokens[:, 1:]))
        return losses.ppo_policy_loss(logp, jax.lax.stop_gradient(logp), advantages,
                                      jnp.asarray(batch.loss_mask[:, 1:]))[0]

    grad = np.asarray(jax.grad(loss)(logits))[:, :-1]  # position t predicts token t + 1
    off = ~batch.loss_mask[:, 1:]
    assert np.all(grad[off] == 0)
    assert np.abs(grad[~off]).sum(axis=-1).min() > 0


class Raises(Echo):
    def step(self, reply):
        if self.received:
            raise RuntimeError("the environment broke")
        return super().step(reply)


class Floods(envs.ToolEnv):
    """A tool env whose every reply calls a tool that floods and one that hangs."""

    def __init__(self):
        def flood(n: int) -> str:
            """Returns a lot of text.

            Args:
              n: how many characters.
            """
            return "start" + "x" * n + "end"

        def hang(seconds: float) -> str:
            """Sleeps.

            Args:
              seconds: how long.
            """
            import time

            time.sleep(seconds)
            return "woke up"

        super().__init__(envs.Task("Call the tools.", score=lambda reply: 1.0), [flood, hang], max_turns=3,
                         timeout_s=0.5, max_output_chars=200)

    def step(self, reply):
        calls = ('<tool_call>{"name": "flood", "arguments": {"n": 1000000}}</tool_call>'
                 '<tool_call>{"name": "hang", "arguments": {"seconds": 3}}</tool_call>')
        return super().step(calls if self.turn == 0 else "done")


def test_a_raising_environment_and_a_flooding_tool_leave_the_rest_of_the_batch_intact(chatty_policy,
                                                                                      smollm2_tokenizer):
    cfg, params = chatty_policy
    environments = [Echo(0), Raises(1), Floods(), Echo(3)]
    traj = envs.rollout(cfg, params, smollm2_tokenizer, environments, jax.random.PRNGKey(4), max_turns=4,
                        max_new_tokens=8, max_total_tokens=400)
    np.testing.assert_array_equal(traj.errored, [False, True, False, False])
    assert traj.rewards[1] == 0 and traj.num_turns[1] == 2 and "the environment broke" in traj.infos[1][-1]["error"]
    assert traj.metrics["errored_frac"] == 0.25
    np.testing.assert_array_equal(traj.num_turns[[0, 3]], [3, 3])
    np.testing.assert_allclose(traj.rewards[[0, 2, 3]], [1.5, 1.0, 1.5])
    text = smollm2_tokenizer.decode([int(t) for t in traj.tokens[2][traj.mask[2]]])
    assert "characters cut" in text and "start" in text and "end" in text and "x" * 200 not in text
    assert "timed out after 0.5 s" in text
    assert traj.metrics["tool_calls"] == 2 and traj.metrics["tool_seconds"] < 2.5


def test_budgets_truncate_rows_without_overflowing_the_trajectory(chatty_policy, smollm2_tokenizer):
    cfg, params = chatty_policy
    traj = envs.rollout(cfg, params, smollm2_tokenizer, [Echo(row, turns=10) for row in range(3)],
                        jax.random.PRNGKey(5), max_turns=10, max_new_tokens=12, max_total_tokens=90)
    assert traj.truncated.all() and traj.tokens.shape == (3, 90)
    for row in range(3):  # each stream ends with the policy's last reply, not with template glue
        assert traj.loss_mask[row, -1] and traj.mask[row].sum() <= 90
    few = envs.rollout(cfg, params, smollm2_tokenizer, [Echo(0, turns=10)], jax.random.PRNGKey(5), max_turns=2,
                       max_new_tokens=4, max_total_tokens=200)
    assert few.truncated[0] and few.num_turns[0] == 2
    with pytest.raises(ValueError, match="leaves no room for a reply"):
        envs.rollout(cfg, params, smollm2_tokenizer, [Echo(0)], jax.random.PRNGKey(5), max_turns=2,
                     max_new_tokens=4, max_total_tokens=10)


def test_extend_on_an_empty_cache_samples_what_generate_samples(chatty_policy, smollm2_tokenizer):
    cfg, params = chatty_policy
    tokens = np.array([[0, 0, 5, 9, 11], [7, 8, 9, 10, 11]], np.int32)
    mask = tokens > 0
    key = jax.random.PRNGKey(6)
    out = generate.generate(cfg, params, tokens, mask, key, 10, eos_ids=smollm2_tokenizer.eos_ids)
    ext, _ = generate.extend(cfg, params, generate.new_cache(cfg, 2, 40), tokens, mask, key, 10,
                             eos_ids=smollm2_tokenizer.eos_ids)
    np.testing.assert_array_equal(out.tokens, ext.tokens)
    np.testing.assert_array_equal(out.mask, ext.mask)
    np.testing.assert_allclose(out.logprobs, ext.logprobs, atol=1e-5)
    with pytest.raises(ValueError, match="left-padded"):
        generate.extend(cfg, params, generate.new_cache(cfg, 2, 40), tokens[:, ::-1], mask[:, ::-1], key, 10)
    with pytest.raises(ValueError, match="max_steps"):
        generate.extend(cfg, params, generate.new_cache(cfg, 2, 40), tokens, mask, key, 10, max_steps=11)


def test_the_bridge_is_exactly_the_template_between_turns(smollm2_tokenizer):
    tok = smollm2_tokenizer
    chat = ChatBridge(tok)
    history = [{"role": "user", "content": "What is 2 + 2?"}]
    tool = [{"role": "tool", "content": "4"}]
    reply_ids = tok.encode("Let me check.")
    stopped = chat.opening(history) + reply_ids + [chat.end_of_turn()] + chat.between(
        history, "Let me check.", chat.end_of_turn(), tool)
    full = tok.apply_chat_template([*history, {"role": "assistant", "content": "Let me check."}, *tool])
    assert tok.decode(stopped) == full
    cut = chat.opening(history) + reply_ids + chat.between(history, "Let me check.", None, tool)
    assert tok.decode(cut) == full  # the template's own end of turn closes a cut-off reply
    ids, loss = chat.conversation([*history, {"role": "assistant", "content": "Let me check."}, *tool,
                                   {"role": "assistant", "content": "4"}])
    assert tok.decode([i for i, m in zip(ids, loss) if m]) == "Let me check.<|im_end|>4<|im_end|>"


def test_a_template_that_rewrites_the_conversation_is_refused(smollm2_tokenizer):
    import copy

    tok = copy.copy(smollm2_tokenizer)
    tok.chat_template = smollm2_tokenizer.chat_template.replace("message['content']", "message['content'] | trim")
    with pytest.raises(TemplateError, match="does not extend the conversation"):
        ChatBridge(tok).between([{"role": "user", "content": "hi"}], "hello  ", None, [{"role": "user", "content": "?"}])


def test_a_grown_cache_continues_as_one_allocated_at_full_size(chatty_policy):
    cfg, params = chatty_policy
    tokens = np.array([[0, 3, 4], [5, 6, 7]], np.int32)
    key = jax.random.PRNGKey(7)
    small = generate.extend(cfg, params, generate.new_cache(cfg, 2, 8), tokens, tokens > 0, key, 4)[1]
    grown = generate.grow_cache(small, 40)
    assert all(k.shape[-1] == 40 for k in grown["k"]) and all(v.shape[2] == 40 for v in grown["v"]) and not np.asarray(grown["mask"])[:, 8:].any()
    full = generate.extend(cfg, params, generate.new_cache(cfg, 2, 40), tokens, tokens > 0, key, 4)[1]
    more = np.array([[0, 9], [10, 11]], np.int32)
    a, _ = generate.extend(cfg, params, grown, more, more > 0, key, 6)
    b, _ = generate.extend(cfg, params, full, more, more > 0, key, 6)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    np.testing.assert_allclose(a.logprobs, b.logprobs, atol=1e-5)
    with pytest.raises(ValueError, match="cannot grow"):
        generate.grow_cache(generate.new_cache(cfg, 2, 8), 4)
