"""Multi-turn rollouts: a batch of environments talking to the policy, one KV cache throughout.

    traj = envs.rollout(cfg, params, tokenizer, [MyEnv() for _ in range(8)], key,
                        max_turns=4, max_new_tokens=64, max_total_tokens=512)

Each turn is one call of `rljax.generate.extend`: every live row appends what it has not yet
fed to the model (its last sampled token and the template's glue around the environment's
messages, `rljax.envs.chat`) at its own next position, and decoding continues from there. The
conversation is never prefilled again, and the policy's tokens are never re-tokenised: the
trajectory is exactly the token stream the sampler saw. Rows whose conversation has ended wait,
masked, until every row has.

Environments step on the host, all rows of a turn at once in threads (a tool waits on a
subprocess, not on the GIL). An exception inside `Env.step` ends that row alone: reward 0, the
error in its last `infos` entry and in `metrics["errored_frac"]`.

Budgets: a conversation holds at most `max_total_tokens` tokens (the trajectory's width), its
last reply cut to fit. The rows share the cache's slots, at most `cache_slots` (a turn takes as
many as its longest append plus its decoding steps, so shorter rows leave padding slots; the
default allows for a bucket's padding and a full reply's worth per turn). The cache starts
small and grows by `SLOT_BUCKET` slots as the conversations lengthen, since every decoding step
attends over all of it. A row still talking when its tokens, the slots or the turns run out is
`truncated`; its stream ends with its last sampled token.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import jax
import numpy as np

from jax.sharding import Mesh

from rljax import generate, sharding
from rljax.envs.base import Env, Step
from rljax.envs.chat import ChatBridge
from rljax.models.config import ModelConfig
from rljax.sharding import GENERATION_RULES, on_mesh, place_rows, to_host

# The cache grows in steps of this many slots (a few compiled shapes, little attention to spare).
SLOT_BUCKET = 64


@dataclasses.dataclass
class Trajectories:
    """What `rollout` returns, host (NumPy) arrays; B rows in the order of the environments,
    T = max_total_tokens columns, each row's stream right-aligned (left padding).

    tokens [B, T] int32, mask [B, T] bool (real tokens; positions are cumsum(mask) - 1, as in
      `models.apply`);
    loss_mask [B, T] bool: True exactly on the tokens the policy sampled;
    logprobs [B, T] float32: log π(tokens[t] | tokens[<t]) under the raw policy (temperature 1),
      as sampled; 0 off `loss_mask`;
    rewards [B] float32: the sum of the row's step rewards (0 for an errored row);
    num_turns [B] int32: the policy's turns; truncated [B] bool: out of turns or tokens before
      the environment said done; errored [B] bool: `Env.step` raised;
    turn_rewards [B, max_turns] float32: each turn's reward (0 after the last);
    turn_ends [B, max_turns] int32: the column of each turn's last sampled token (-1 after the
      last turn), where a turn's reward belongs for turn-level credit assignment;
    replies, infos: per row, each turn's reply text and its step's `info`;
    metrics: turns, truncated/errored fractions, tool calls and tool time, timings.
    """

    tokens: np.ndarray
    mask: np.ndarray
    loss_mask: np.ndarray
    logprobs: np.ndarray
    rewards: np.ndarray
    num_turns: np.ndarray
    truncated: np.ndarray
    errored: np.ndarray
    turn_rewards: np.ndarray
    turn_ends: np.ndarray
    replies: list[list[str]]
    infos: list[list[dict]]
    metrics: dict[str, float]


@dataclasses.dataclass
class _Row:
    """One conversation as the rollout tracks it."""

    env: Env
    history: list[dict]  # the messages so far, replies as their text
    stream: list[int]  # every token of the conversation so far
    sampled: list[bool]  # per token: the policy sampled it
    logprobs: list[float]
    fed: int = 0  # stream[:fed] is in the cache
    finished: bool = False
    truncated: bool = False
    errored: bool = False
    turn_rewards: list[float] = dataclasses.field(default_factory=list)
    turn_ends: list[int] = dataclasses.field(default_factory=list)
    replies: list[str] = dataclasses.field(default_factory=list)
    infos: list[dict] = dataclasses.field(default_factory=list)

    def add(self, tokens, sampled: bool, logprobs=None):
        self.stream += [int(t) for t in tokens]
        self.sampled += [sampled] * len(tokens)
        self.logprobs += [float(x) for x in logprobs] if logprobs is not None else [0.0] * len(tokens)

    def end_at_last_reply(self):
        """Drops the glue after the last reply (a row cut off before its next turn)."""
        keep = max((i + 1 for i, s in enumerate(self.sampled) if s), default=len(self.stream))
        del self.stream[keep:], self.sampled[keep:], self.logprobs[keep:]


def _checked_count(name: str, value, minimum: int) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _safe_step(env: Env, reply: str) -> tuple[Step | None, str | None]:
    """env.step(reply), or (None, the error) when it raises or returns something else."""
    try:
        step = env.step(reply)
    except Exception as error:  # noqa: BLE001 - any failure of user code ends its own row only
        return None, f"{type(error).__name__}: {error}"
    if not isinstance(step, Step):
        return None, f"TypeError: {type(env).__name__}.step returned {type(step).__name__}, not envs.Step"
    return step, None


def rollout(cfg: ModelConfig, params: dict, tokenizer, environments: Sequence[Env], key: jax.Array, *,
            max_turns: int, max_new_tokens: int, max_total_tokens: int, temperature: float = 1.0, top_k: int = 0,
            top_p: float = 1.0, append_bucket: int = 16, cache_slots: int | None = None,
            max_workers: int = 32, mesh: Mesh | None = None) -> Trajectories:
    """Runs every environment's conversation with the policy to its end (see the module docstring).

    Args:
      cfg, params: the policy. tokenizer: its tokenizer, with a chat template; generation
        stops at `tokenizer.eos_ids`.
      environments: one `Env` per row, fresh (`reset` is called here).
      key: PRNG key; turn k samples with fold_in(key, k).
      max_turns: policy turns per conversation at most. max_new_tokens: tokens per turn at most.
      max_total_tokens: the budget of a whole conversation (and the trajectory's width T).
      temperature, top_k, top_p: sampling, as `generate`; log-probs are the raw policy's anyway.
      append_bucket: a turn's append width is rounded up to a multiple of this, so that few
        widths compile.
      cache_slots: the shared cache's length; default max_total_tokens + max_turns ·
        (append_bucket + max_new_tokens).
      max_workers: threads stepping environments at once.
      mesh: the devices to sample on (default: the first device). On a mesh the rows, and the
        cache with them, are split over its data-parallel axes; `params` must already be placed
        on it (e.g. `sharding.to_generation_layout`). Every process of a multi-process run calls
        `rollout` alike: each reads the whole outputs and steps every environment.
    """
    mesh = mesh if mesh is not None else sharding.one_device_mesh()
    max_turns, max_new_tokens = _checked_count("max_turns", max_turns, 1), _checked_count("max_new_tokens",
                                                                                          max_new_tokens, 1)
    max_total_tokens = _checked_count("max_total_tokens", max_total_tokens, 2)
    bucket = _checked_count("append_bucket", append_bucket, 1)
    slots = _checked_count("cache_slots", max_total_tokens + max_turns * (bucket + max_new_tokens)
                           if cache_slots is None else cache_slots, 1)
    environments = list(environments)
    if not environments or not all(isinstance(e, Env) for e in environments):
        raise ValueError("environments must be a non-empty sequence of envs.Env instances")
    chat, eos = ChatBridge(tokenizer), set(tokenizer.eos_ids)
    if not eos:
        raise ValueError("the tokenizer declares no eos_ids: a turn could never end")
    t_start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=min(max_workers, len(environments))) as pool:
        rows = []
        for env, messages in zip(environments, pool.map(lambda e: list(e.reset()), environments)):
            row = _Row(env, messages, [], [], [])
            row.add(chat.opening(messages), sampled=False)
            rows.append(row)
        if (longest := max(len(r.stream) for r in rows)) >= min(max_total_tokens, slots):
            raise ValueError(f"an opening prompt has {longest} tokens, which leaves no room for a reply in "
                             f"max_total_tokens={max_total_tokens} (cache_slots={slots})")
        cache = None
        used, t_decode, t_env = 0, 0.0, 0.0
        for turn in range(max_turns):
            live = [r for r in rows if not r.finished]
            if not live:
                break
            room = slots - used
            for r in live:  # no token or slot left for this row's next reply
                if len(r.stream) >= max_total_tokens or len(r.stream) - r.fed > room:
                    r.truncated = r.finished = True
                    r.end_at_last_reply()
            pending = [r.stream[r.fed:] if not r.finished else [] for r in rows]
            if not (need := max(map(len, pending))):
                break
            width = min(-(-need // bucket) * bucket, room)
            tokens = np.full((len(rows), width), tokenizer.pad_id, np.int32)
            mask = np.zeros((len(rows), width), bool)
            for i, p in enumerate(pending):
                if p:
                    tokens[i, width - len(p):], mask[i, width - len(p):] = p, True
            active = np.array([not r.finished for r in rows])
            budget = np.array([min(max_new_tokens, max_total_tokens - len(r.stream), room - width + 1)
                               if not r.finished else 1 for r in rows])
            t0 = time.perf_counter()
            needed = min(-(-(used + width + int(budget.max()) - 1) // SLOT_BUCKET) * SLOT_BUCKET, slots)
            with on_mesh(mesh, GENERATION_RULES):
                cache = (generate.new_cache(cfg, len(rows), needed) if cache is None
                         else generate.grow_cache(cache, max(needed, cache["mask"].shape[1])))
                gen, cache = generate.extend(cfg, params, cache, place_rows(tokens, mesh), place_rows(mask, mesh),
                                             jax.random.fold_in(key, turn), max_new_tokens, temperature, top_k, top_p,
                                             tuple(eos), active=place_rows(active, mesh),
                                             max_steps=place_rows(budget.astype(np.int32), mesh),
                                             pad_id=tokenizer.pad_id)
            out_tokens, out_mask, out_logprobs, steps = to_host((gen.tokens, gen.mask, gen.logprobs, gen.num_steps))
            t_decode += time.perf_counter() - t0
            used += width + int(steps) - 1
            replies = {}
            for i, r in enumerate(rows):
                if r.finished:
                    continue
                n = int(out_mask[i].sum())
                sampled = out_tokens[i, :n]
                r.fed += len(pending[i]) + min(n, int(steps) - 1)
                r.add(sampled, sampled=True, logprobs=out_logprobs[i, :n])
                r.turn_ends.append(len(r.stream) - 1)
                stop = int(sampled[-1]) if int(sampled[-1]) in eos else None
                replies[i] = (tokenizer.decode([int(t) for t in sampled if int(t) not in eos]), stop)
                r.replies.append(replies[i][0])
            t0 = time.perf_counter()
            answers = dict(zip(replies, pool.map(lambda i: _safe_step(rows[i].env, replies[i][0]), replies)))
            t_env += time.perf_counter() - t0
            for i, (step, error) in answers.items():
                r = rows[i]
                if error is not None:
                    r.errored = r.finished = True
                    r.infos.append({"error": error})
                    r.turn_rewards = [0.0] * len(r.turn_ends)
                    continue
                r.turn_rewards.append(float(step.reward))
                r.infos.append(dict(step.info))
                if step.done:
                    r.finished = True
                elif turn == max_turns - 1:
                    r.truncated = r.finished = True
                else:
                    reply, stop = replies[i]
                    r.add(chat.between(r.history, reply, stop, step.messages), sampled=False)
                    r.history += [{"role": "assistant", "content": reply}, *step.messages]
    for r in rows:
        if not r.finished:
            r.truncated = True
            r.end_at_last_reply()
    return _assemble(rows, max_total_tokens, max_turns, {
        "rollout_seconds": time.perf_counter() - t_start, "decode_seconds": t_decode, "env_seconds": t_env,
        "cache_slots_used": used})


def _assemble(rows: list[_Row], width: int, max_turns: int, timings: dict) -> Trajectories:
    """The rows as right-aligned [B, width] arrays, with the rollout's metrics."""
    B = len(rows)
    tokens, logprobs = np.zeros((B, width), np.int32), np.zeros((B, width), np.float32)
    mask, loss_mask = np.zeros((B, width), bool), np.zeros((B, width), bool)
    turn_rewards, turn_ends = np.zeros((B, max_turns), np.float32), np.full((B, max_turns), -1, np.int32)
    for i, r in enumerate(rows):
        start = width - len(r.stream)
        tokens[i, start:], mask[i, start:] = r.stream, True
        loss_mask[i, start:], logprobs[i, start:] = r.sampled, r.logprobs
        turn_rewards[i, :len(r.turn_rewards)] = r.turn_rewards
        turn_ends[i, :len(r.turn_ends)] = np.asarray(r.turn_ends, np.int32) + start
    logprobs = np.where(loss_mask, logprobs, 0.0).astype(np.float32)
    num_turns = np.array([len(r.turn_ends) for r in rows], np.int32)
    total = lambda key: float(sum(info.get(key, 0) for r in rows for info in r.infos))  # noqa: E731
    sampled_tokens = int(loss_mask.sum())
    metrics = {**timings, "turns_mean": float(num_turns.mean()),
               "truncated_frac": float(np.mean([r.truncated for r in rows])),
               "errored_frac": float(np.mean([r.errored for r in rows])),
               "tool_calls": total("tool_calls"), "tool_seconds": total("tool_seconds"),
               "sampled_tokens": sampled_tokens,
               "decode_tokens_per_s": sampled_tokens / max(timings["decode_seconds"], 1e-9)}
    return Trajectories(tokens=tokens, mask=mask, loss_mask=loss_mask, logprobs=logprobs,
                        rewards=turn_rewards.sum(axis=1), num_turns=num_turns,
                        truncated=np.array([r.truncated for r in rows]), errored=np.array([r.errored for r in rows]),
                        turn_rewards=turn_rewards, turn_ends=turn_ends, replies=[r.replies for r in rows],
                        infos=[r.infos for r in rows], metrics=metrics)
