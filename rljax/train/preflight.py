"""Will the RL stage fit? Its learner and its rollout compiled before the first step, and what the
compiled programs need, read from XLA: memory per device, collectives, bytes gathered per token.

`check_rl_memory` is the HBM preflight of `rljax.train.experiment.run_rl` on an accelerator: it
compiles the learner (`MeshStep.lower`), the reshard of the policy into the generation layout
(`rljax.sharding.to_generation_layout`) and the rollout's generation (`rljax.generate.loop.lower`)
for the run's own shapes and stops with `HBMError`, one line, before anything would die of an
out-of-memory error at step 1. The same functions serve `experiments/aot_compile.py`, which
compiles them for TPU topologies from this host (`jax.experimental.topologies`) without any
weight existing.

Memory per device (`memory`, from `compiled.memory_analysis()`): arguments + outputs − outputs
aliased to donated arguments + temporaries + generated code is the program's peak. A rollout
also holds what is resident beside it: the learner's state (params, optimiser moments, the
reference) stays on the devices while generation runs, so its bytes add to generation's peak.

HLO reading (`collectives`, `loop_collective_bytes`): the compiled module's text, computations
and their call graph (fusions, while bodies); a while loop's trip count is read from its condition
when that is a counter (`i < N`, as `lax.scan` and `fori_loop` compile), so the bytes a layer
scan inside the token loop gathers are counted once per layer. Bytes are those of each
collective's result (for a reduce-scatter, which XLA:TPU writes as an all-reduce inside an
"all-reduce-scatter" fusion, the all-reduce's: the unsliced input).
"""

from __future__ import annotations

import dataclasses
import math
import re
import time

import jax
import jax.numpy as jnp
import numpy as np

from rljax import sharding
from rljax.generate import loop as generate_loop
from rljax.models.config import ModelConfig
from rljax.train.config import RLConfig
from rljax.train.rollout import generation_kwargs
from rljax.train.sharded import on_mesh, state_shardings
from rljax.train.trajectories import TrajectoryBatch

GiB = 1 << 30


@dataclasses.dataclass(frozen=True)
class Chip:
    """An accelerator's figures per chip: HBM capacity, dense bf16 peak FLOP/s and HBM bandwidth
    (the vendor's published numbers)."""

    name: str
    hbm_bytes: int
    peak_flops: float
    hbm_bandwidth: float  # bytes/s


CHIPS = {
    "v4": Chip("v4", 32 * GiB, 275e12, 1.2e12),
    "v5e": Chip("v5e", 16 * GiB, 197e12, 0.819e12),
    "v5p": Chip("v5p", 95 * GiB, 459e12, 2.765e12),
    "v6e": Chip("v6e", 32 * GiB, 918e12, 1.64e12),
}
# `device.device_kind` of each TPU generation.
_KINDS = {"TPU v4": "v4", "TPU v5 lite": "v5e", "TPU v5e": "v5e", "TPU v5": "v5p", "TPU v5p": "v5p",
          "TPU v6 lite": "v6e", "TPU v6e": "v6e"}


def chip(device: jax.Device) -> Chip | None:
    """The figures of a TPU device's chip (None for other devices)."""
    name = _KINDS.get(device.device_kind)
    return CHIPS[name] if name else None


def device_memory_bytes(device: jax.Device) -> int | None:
    """The memory one device can hold: what its runtime reports (`memory_stats`, on a device this
    process runs), else its chip's HBM (a compile-only topology device); None when unknown."""
    try:
        stats = device.memory_stats()
    except (RuntimeError, NotImplementedError, AttributeError):  # compile-only devices have no runtime
        stats = None
    if stats and stats.get("bytes_limit"):
        return int(stats["bytes_limit"])
    found = chip(device)
    return found.hbm_bytes if found else None


class HBMError(RuntimeError):
    """The run would not fit in device memory (one line: bytes needed and available, the knobs)."""


# -- memory ----------------------------------------------------------------------------------------
def memory(compiled) -> dict[str, int]:
    """Per-device bytes of a compiled program (`jax.stages.Compiled`): its arguments, outputs,
    outputs aliased to donated arguments, temporaries and generated code, and the peak they add
    up to (arguments + outputs − aliased + temporaries + code)."""
    m = compiled.memory_analysis()
    out = {"argument_bytes": m.argument_size_in_bytes, "output_bytes": m.output_size_in_bytes,
           "alias_bytes": m.alias_size_in_bytes, "temp_bytes": m.temp_size_in_bytes,
           "code_bytes": m.generated_code_size_in_bytes}
    out["peak_bytes"] = (out["argument_bytes"] + out["output_bytes"] - out["alias_bytes"] + out["temp_bytes"]
                         + out["code_bytes"])
    return out


def per_device_bytes(tree) -> int:
    """Bytes of the largest shard of each leaf (arrays or `jax.ShapeDtypeStruct`s with shardings),
    summed: what one device holds of `tree`."""
    return sum(math.prod(x.sharding.shard_shape(x.shape)) * np.dtype(x.dtype).itemsize
               for x in jax.tree.leaves(tree))


# -- HLO ------------------------------------------------------------------------------------------
COLLECTIVES = {"all-gather": "all-gather", "all-gather-start": "all-gather", "reduce-scatter": "reduce-scatter",
               "all-reduce": "all-reduce", "all-reduce-start": "all-reduce", "all-to-all": "all-to-all",
               "collective-permute": "collective-permute", "collective-permute-start": "collective-permute"}
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%[\w.\-]+ = (.+?) ([a-z][a-z0-9\-]*)\(")
_HEADER = re.compile(r"^(ENTRY )?%([\w.\-]+) .*\{\s*$")
_CALLEES = re.compile(r"(?:calls|body|condition|to_apply|branch_computations|called_computations)=\{?([^}\s]+(?:, %[^,}\s]+)*)")
_ARRAY = re.compile(r"\b(pred|[subf]\d+|bf16|f8e\w+)\[([\d,]*)\]")
_DTYPE_BYTES = {"pred": 1, "bf16": 2}


@dataclasses.dataclass
class _Computation:
    collectives: list  # (kind, bytes, channel) of its own instructions
    calls: list  # callees run once per run of it (fusions, calls, conditions)
    loops: list  # (body, trip count or None, the jax op_name of the loop) of its while loops


def _parse(hlo: str) -> tuple[dict[str, _Computation], str]:
    """The computations of an HLO module's text, and the entry's name."""
    computations, entry, current, conditions = {}, None, None, {}
    for line in hlo.splitlines():
        header = _HEADER.match(line)
        if header:
            current = header.group(2)
            entry = current if header.group(1) else entry
            computations[current], conditions[current] = _Computation([], [], []), []
            continue
        if current is None:
            continue
        conditions[current].append(line)
        c, m = computations[current], _INSTRUCTION.match(line)
        if not m:
            continue
        if m.group(2) in COLLECTIVES:
            arrays = _ARRAY.findall(m.group(1))
            if m.group(2).endswith("-start"):  # (operands, result): the result's bytes
                arrays = arrays[-1:]
            # XLA:TPU writes a reduce-scatter as an "all-reduce-scatter" fusion: an all-reduce
            # whose result is sliced, which the backend runs as one reduce-scatter.
            kind = "reduce-scatter" if current.startswith("all-reduce-scatter") else COLLECTIVES[m.group(2)]
            channel = re.search(r"channel_id=(\d+)", line)
            c.collectives.append((kind, sum(_array_bytes(*a) for a in arrays),
                                  channel.group(1) if channel else f"{current}/{len(c.collectives)}"))
        if m.group(2) == "while":
            cond = re.search(r"condition=%([\w.\-]+)", line).group(1)
            op_name = re.search(r'op_name="([^"]*)"', line)
            c.loops.append((re.search(r"body=%([\w.\-]+)", line).group(1), cond, op_name and op_name.group(1)))
            c.calls.append(cond)
        else:
            c.calls += [n.strip().lstrip("%") for group in _CALLEES.findall(line) for n in group.split(",")]
    for c in computations.values():  # a condition's text gives its loop's trip count
        c.loops = [(body, _trip_count(conditions.get(cond, [])), op) for body, cond, op in c.loops]
    return computations, entry


def _array_bytes(dtype: str, dims: str) -> int:
    size = 1 if dtype.startswith("f8") else _DTYPE_BYTES.get(dtype) or int(dtype[1:]) // 8
    return size * math.prod(int(d) for d in dims.split(",") if d)


def _trip_count(condition: list[str]) -> int | None:
    """N of a counter loop's condition (`i < N`: one integer constant and a less-than compare),
    else None (a loop that stops on data, such as the token loop)."""
    text = "\n".join(condition)
    constants = re.findall(r"s32\[\](?:\{[^}]*\})? constant\((\d+)\)", text)  # with or without a layout
    if len(constants) == 1 and "direction=LT" in text and text.count(" compare(") == 1:
        return int(constants[0])
    return None


def collectives(hlo: str) -> dict[str, int]:
    """How many of each collective the compiled module's text holds (each instruction once)."""
    counts = {kind: 0 for kind in dict.fromkeys(COLLECTIVES.values())}
    computations, _ = _parse(hlo)
    for c in computations.values():
        for kind, _, _ in c.collectives:
            counts[kind] += 1
    return counts


def _channels_under(computations, name: str, times: int, found: dict, seen=()) -> dict:
    """{channel: (kind, bytes, times it runs)} of the collectives that one run of computation
    `name` reaches through what it calls (a counter loop's body its trip count times; a loop of
    unknown trip count once). XLA:TPU writes one asynchronous collective into several
    computations (its start, the fusion that overlaps it, pipelined clones) under one channel id,
    so each channel counts once: the figures are a floor."""
    c = computations.get(name)
    if c is None or name in seen:
        return found
    for kind, n, channel in c.collectives:
        found.setdefault(channel, (kind, n, times))
    for callee, trips in [(n, 1) for n in c.calls] + [(body, trips or 1) for body, trips, _ in c.loops]:
        _channels_under(computations, callee, times * trips, found, seen + (name,))
    return found


def loop_collective_bytes(hlo: str, loop: str = "jit(_generate)/while") -> dict[str, float] | None:
    """Per-device bytes of each collective kind that one iteration of the module's top-level while
    loop `loop` (its jax op_name; the default: generation's token loop, one iteration per generated
    token) moves; None when the module has no such loop. Other top-level loops (a layer scan of
    the prefill, XLA's windowed matrix products) are told apart by that name."""
    computations, entry = _parse(hlo)
    for body, _, op_name in computations[entry].loops:
        if op_name == loop:
            totals: dict[str, float] = {}
            for kind, n, times in _channels_under(computations, body, 1, {}).values():
                totals[kind] = totals.get(kind, 0) + n * times
            return totals
    return None


# -- the RL stage's programs, lowered ----------------------------------------------------------
def batch_like(rl: RLConfig, prompt_len: int) -> TrajectoryBatch:
    """The learner's batch as `jax.ShapeDtypeStruct`s: rl.rows trajectories of prompt_len +
    rl.sampling.max_new_tokens tokens (what a single-turn rollout gives it)."""
    rows, length = rl.rows, prompt_len + rl.sampling.max_new_tokens
    zeros = np.zeros((rows, length), np.int32)
    host = TrajectoryBatch.from_rows(zeros, zeros.astype(bool), zeros.astype(bool), zeros.astype(np.float32),
                                     np.zeros(rows, np.float32), rl.group_size, 0)
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype), host)


def lower_rollout(cfg: ModelConfig, params, mesh, rl: RLConfig, prompt_len: int, eos_ids=(), pad_id: int = 0,
                  generation_layout: bool = True):
    """(reshard, generate): `jax.stages.Lowered` of the rollout's two programs for `params` (the
    policy's, arrays or `jax.ShapeDtypeStruct`s with their training-layout shardings on `mesh`)
    and prompts [rl.prompts_per_step, prompt_len], as `rljax.train.rollout.Collector.sample` runs
    them: the copy into the generation layout (None on one device, where none is made), then
    `generate` on that copy, traced under `sharding.GENERATION_RULES`. With `generation_layout`
    False, `generate` on the training layout itself, for comparison (what decoding cost before)."""
    rows = sharding.batch_sharding(mesh, 2, batch_size=rl.prompts_per_step) if mesh.size > 1 else None
    prompts = jax.ShapeDtypeStruct((rl.prompts_per_step, prompt_len), jnp.int32, sharding=rows)
    key = jax.ShapeDtypeStruct((2,), jnp.uint32)
    reshard, rules = None, sharding.RULES
    if mesh.size > 1 and generation_layout:
        reshard, rules = sharding.lower_to_generation_layout(cfg, params, mesh), sharding.GENERATION_RULES
        shardings, dtypes = sharding.generation_shardings(params, mesh), sharding.generation_dtypes(cfg, params)
        params = jax.tree.map(lambda x, s, d: jax.ShapeDtypeStruct(x.shape, d, sharding=s), params, shardings, dtypes)
    with on_mesh(mesh, rules):
        gen = generate_loop.lower(cfg, params, prompts, jax.ShapeDtypeStruct(prompts.shape, bool, sharding=prompts.sharding),
                                  key, **generation_kwargs(rl.sampling, rl.sampling.temperature, rl.group_size,
                                                           eos_ids, pad_id))
    return reshard, gen


# -- the preflight --------------------------------------------------------------------------------
def knobs(cfg: ModelConfig, rl: RLConfig, what: str) -> list[str]:
    """The config keys that shrink `what` ("learn", or "generate" for the rollout's programs) per
    device, those not set yet."""
    turns = []
    if what == "learn":
        turns.append("raise mesh.fsdp (shards params and optimiser moments over more chips)")
        if not cfg.remat:
            turns.append("model.overrides.remat=True (recompute activations in the backward pass)")
        turns.append(f"raise rl.micro_batches (now {rl.micro_batches}: a smaller micro-batch per gradient pass)")
        if cfg.param_dtype != "bfloat16":
            turns.append("model.overrides.param_dtype='bfloat16' (halves params and moments)")
    else:
        turns = ["raise mesh.tensor (splits the generation copy of the weights and the KV cache's heads)",
                 (f"fewer rl.prompts_per_step x rl.group_size (now {rl.prompts_per_step} x {rl.group_size}) or "
                  f"rl.sampling.max_new_tokens (now {rl.sampling.max_new_tokens}): a smaller KV cache")]
        if cfg.dtype != "bfloat16":
            turns.append("model.overrides.dtype='bfloat16' (halves the generation copy and the cache)")
    return turns


def check_fits(reports: dict[str, dict], available: int, cfg: ModelConfig, rl: RLConfig, mesh) -> None:
    """Raises `HBMError` naming every program whose `needed_bytes` exceed `available`, and the
    knobs that shrink them."""
    over = {name: r for name, r in reports.items() if r["needed_bytes"] > available}
    if not over:
        return
    # "more than": XLA refused to compile it, and counted its temporaries only.
    needs = ", ".join(f"{name} {'more than ' if r.get('compiled', True) is None else ''}"
                      f"{r['needed_bytes'] / GiB:.2f} GiB" for name, r in over.items())
    turns = dict.fromkeys(t for name in over for t in knobs(cfg, rl, "learn" if name == "learn" else "generate"))
    raise HBMError(f"HBM preflight: per device, {needs}, but a device has {available / GiB:.2f} GiB "
                   f"(mesh {dict(mesh.shape)}); to fit: {'; '.join(turns)}")


def rl_reports(step, state, batch, key, cfg: ModelConfig, policy_params, mesh, rl: RLConfig, prompt_len: int,
               eos_ids=(), pad_id: int = 0, generation_layout: bool = True) -> dict[str, dict]:
    """Compiles the RL stage's programs for these shapes and returns, for "learn", "reshard" (on
    more than one device) and "generate": the `compiled` program, its `memory`, `compile_s`, the bytes
    `resident_bytes` beside it and `needed_bytes` = peak + resident, per device.

    step: the learner's `rljax.train.sharded.MeshStep`; state, batch, key: its arguments (arrays
    or `jax.ShapeDtypeStruct`s); policy_params: the policy's params as generation reads them, in
    the training layout (arrays, or structures with their shardings). The learner's state is
    resident while the rollout runs; the reshard's arguments are part of it. `generation_layout`:
    see `lower_rollout`."""
    lowered = {"learn": step.lower(state, batch, key)}
    lowered["reshard"], lowered["generate"] = lower_rollout(cfg, policy_params, mesh, rl, prompt_len, eos_ids, pad_id,
                                                           generation_layout)
    placed = state_shardings(state, mesh, step.param_axes, step.rules, step.frozen_axes)
    state_bytes = per_device_bytes(jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                                                state, placed))
    resident = {"learn": 0, "reshard": state_bytes - per_device_bytes(policy_params), "generate": state_bytes}
    reports = {}
    for name, low in lowered.items():
        if low is None:
            continue
        t0 = time.perf_counter()
        report = {"resident_bytes": resident[name]}
        try:
            report["compiled"] = low.compile()
            report["memory"] = memory(report["compiled"])
            report["needed_bytes"] = report["memory"]["peak_bytes"] + resident[name]
        except jax.errors.JaxRuntimeError as error:
            exhausted = out_of_memory(str(error))
            if exhausted is None:
                raise
            # XLA:TPU refuses to compile a program whose temporaries exceed the chip's HBM.
            report.update(compiled=None, memory=None, error=str(error).splitlines()[0],
                          needed_bytes=exhausted[0] + resident[name], xla_available_bytes=exhausted[1])
        report["compile_s"] = time.perf_counter() - t0
        reports[name] = report
    return reports


_EXHAUSTED = re.compile(r"RESOURCE_EXHAUSTED.*?\(([\d.]+)([KMGT])\) exceeds available HBM \(([\d.]+)([KMGT])\)")


def out_of_memory(message: str) -> tuple[int, int] | None:
    """(bytes needed at least, bytes available) of XLA:TPU's refusal to compile a program that does
    not fit ("RESOURCE_EXHAUSTED: ... HLO temporaries (16.85G) exceeds available HBM (15.75G)"),
    else None. Only the temporaries are counted there: the program needs its arguments too."""
    m = _EXHAUSTED.search(message)
    if m is None:
        return None
    unit = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    return int(float(m.group(1)) * unit[m.group(2)]), int(float(m.group(3)) * unit[m.group(4)])


def check_rl_memory(step, state, batch, key, cfg: ModelConfig, policy_params, mesh, rl: RLConfig,
                    prompt_len: int, eos_ids=(), pad_id: int = 0) -> dict[str, dict]:
    """The HBM preflight: `rl_reports`, then `HBMError` if any program needs more than a device
    of the mesh holds. The compiled programs land in JAX's persistent compilation cache, so the
    loop's own first calls do not compile them again."""
    reports = rl_reports(step, state, batch, key, cfg, policy_params, mesh, rl, prompt_len, eos_ids, pad_id)
    available = device_memory_bytes(mesh.devices.flat[0])
    if available is not None:
        check_fits(reports, available, cfg, rl, mesh)
    return reports
