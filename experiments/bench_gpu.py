"""The accelerator figures of the generation and train-step benchmarks, in one run on one device.

    PYTHONPATH=. python experiments/bench_gpu.py [--only generate,train] [--tiny --out F]

1. Ceilings, measured first: the copy bandwidth (a jitted x + 1 over a 2 GiB bf16 array, bytes
   read plus bytes written) and the bf16 matrix rate (8192^3 products on random data, three
   operand pairs in turn so that no product finds its inputs in the cache).
2. Generation (issue 3): the qwen2.5-0.5b preset with random weights, bf16 weights and compute;
   batch 64 and 256, prompts of 256 tokens, 256 new tokens at temperature 1, no EOS (every row
   generates every token). tokens/s = rows x new tokens / wall time of one `generate` call,
   prefill included. The decoding step time is (t(256 new) - t(1 new)) / 255. Its roofline is the
   fewest bytes a decoding step must read (every weight once, plus the keys and values of the
   tokens cached, P + N/2 on average over the decode) over the measured copy bandwidth;
   `roofline_fraction` is that time over the measured step (target >= 0.5). The bytes this
   implementation reads (every cache slot at every step) are reported beside it.
3. Train step (issue 5): qwen2.5-0.5b, bf16 compute with float32 weights and AdamW state, 16
   sequences x 1024 tokens (512-token prompt and completion slots), the GRPO step and inputs of
   experiments/bench_train.py. MFU = `rljax.models.cost.train_step_flops` (logits on the
   completion rows, which the fused LM head computes) / step time / the device's dense bf16 rate
   by its datasheet (target >= 0.4); beside it, the same over the measured matrix rate.

Each figure is the median of several timed calls after a warm-up call (which compiles). The
results go to the `gpu` entries of experiments/results/bench_generate.json and bench_train.json
(the CPU figures there are kept), rewritten after each measurement so that a run cut short
keeps what it measured; a table is printed at the end. `--tiny` runs every path at toy sizes on
any device (the test suite runs it on the CPU) and writes only to `--out`.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import optax

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_common and bench_train, beside this file

import bench_common  # noqa: E402
import bench_train  # noqa: E402

from rljax import generate, models  # noqa: E402
from rljax.models import cost  # noqa: E402
from rljax.train.state import TrainState  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"

# Dense bf16 matrix rates by datasheet (FLOP/s), matched against jax's device_kind.
DATASHEET_BF16 = [("H200", 989.4e12), ("H100 PCIe", 756.0e12), ("H100", 989.4e12), ("A100", 312.0e12)]

FULL = dict(
    preset="qwen2.5-0.5b", copy_mib=2048, matmul_n=8192, repeats=5,
    generate=dict(batches=(64, 256), prompt_len=256, new_tokens=256),
    train=dict(rows=16, prompt=512, completion=512, group=4),
)
TINY = dict(
    preset="tiny", copy_mib=16, matmul_n=256, repeats=2,
    generate=dict(batches=(2,), prompt_len=8, new_tokens=16),
    train=dict(rows=4, prompt=8, completion=8, group=2),
)


def datasheet_bf16(device_kind: str) -> float | None:
    for name, rate in DATASHEET_BF16:
        if name in device_kind:
            return rate
    return None


def _median_time(fn, repeats: int) -> float:
    """fn() once untimed (compilation), then the median wall time of `repeats` calls."""
    timing = bench_common.time_calls(lambda _: jax.block_until_ready(fn()), repeats)
    return statistics.median(timing["times_s"])


def ceilings(size: dict) -> dict:
    x = jax.random.normal(jax.random.PRNGKey(0), (size["copy_mib"] * 2**19,), jnp.bfloat16)
    add_one = jax.jit(lambda a: a + 1)
    copy_s = _median_time(lambda: add_one(x), size["repeats"])
    n = size["matmul_n"]
    pairs = [tuple(jax.random.normal(k, (2, n, n), jnp.bfloat16)) for k in jax.random.split(jax.random.PRNGKey(1), 3)]
    matmul = jax.jit(lambda a, b: a @ b)
    in_turn = itertools.cycle(pairs)
    matmul_s = _median_time(lambda: matmul(*next(in_turn)), 3 * size["repeats"])
    return dict(copy_bytes=2 * x.nbytes, copy_s=copy_s, copy_bytes_per_s=2 * x.nbytes / copy_s,
                matmul_n=n, matmul_s=matmul_s, matmul_flops_per_s=2 * n**3 / matmul_s)


def generation(size: dict, copy_bytes_per_s: float, report, save) -> None:
    g = size["generate"]
    cfg = models.get_config(size["preset"], dtype="bfloat16", param_dtype="bfloat16")
    cfg = cfg.replace(max_seq_len=max(cfg.max_seq_len, g["prompt_len"] + g["new_tokens"]))
    params = models.init(cfg, jax.random.PRNGKey(0))
    n_params = models.count_params(params)
    P, N = g["prompt_len"], g["new_tokens"]
    report["config"] = dict(preset=size["preset"], dtype="bfloat16", n_params=n_params,
                            prompt_len=P, new_tokens=N, temperature=1.0)
    for rows in g["batches"]:
        tokens = jax.random.randint(jax.random.PRNGKey(rows), (rows, P), 1, cfg.vocab_size)
        mask = jnp.ones((rows, P), bool)

        def call(new_tokens):
            return lambda: generate.generate(cfg, params, tokens, mask, jax.random.PRNGKey(2),
                                             max_new_tokens=new_tokens).tokens

        call_s = _median_time(call(N), size["repeats"])
        prefill_s = _median_time(call(1), size["repeats"])
        step_s = (call_s - prefill_s) / (N - 1)
        fewest = cost.weight_bytes(cfg, n_params) + cost.kv_bytes(cfg, rows, P + N / 2)
        read = cost.weight_bytes(cfg, n_params) + cost.kv_bytes(cfg, rows, P + N - 1)
        roofline_s = fewest / copy_bytes_per_s
        report[f"batch_{rows}"] = dict(
            rows=rows, call_s=call_s, tokens_per_s=rows * N / call_s, prefill_and_first_token_s=prefill_s,
            decode_step_s=step_s, bytes_per_step_fewest=fewest, bytes_per_step_read=read,
            roofline_step_s=roofline_s, roofline_fraction=roofline_s / step_s)
        print(f"generate batch {rows}: {rows * N / call_s:.0f} tokens/s, decode step "
              f"{step_s * 1e3:.2f} ms, roofline {roofline_s * 1e3:.2f} ms "
              f"({roofline_s / step_s:.0%})", flush=True)
        save()


def train_step(size: dict, peak: float | None, matmul_flops_per_s: float, report: dict) -> None:
    t = size["train"]
    cfg = models.get_config(size["preset"], dtype="bfloat16", param_dtype="float32")
    optimizer = optax.adamw(bench_train.LR, b1=bench_train.B1, b2=bench_train.B2, eps=bench_train.EPS,
                            weight_decay=bench_train.WD)
    step, to_batch = bench_train.rljax_update(cfg, optimizer)
    key = jax.random.PRNGKey(0)
    params = models.init(cfg, key)
    holder = {"state": TrainState.create({"policy": params}, optimizer, key)}
    batch = to_batch(jax.device_put(bench_train.rljax_batch(bench_train.make_batch(
        rows=t["rows"], prompt=t["prompt"], completion=t["completion"], group=t["group"],
        vocab=cfg.vocab_size))))

    def one_step():
        holder["state"], metrics = step(holder["state"], batch)
        return holder["state"], metrics

    step_s = _median_time(one_step, size["repeats"])
    seq_len = t["prompt"] + t["completion"]
    flops = cost.train_step_flops(cfg, t["rows"], seq_len, logit_rows=t["rows"] * t["completion"])
    report.update(
        config=dict(preset=size["preset"], compute_dtype="bfloat16", param_dtype="float32",
                    rows=t["rows"], seq_len=seq_len, completion_slot=t["completion"],
                    n_params=models.count_params(params), loss="GRPO, as bench_train.py"),
        step_s=step_s, tokens_per_s=t["rows"] * seq_len / step_s, model_flops_per_step=flops,
        model_flops_per_s=flops / step_s, datasheet_bf16_flops_per_s=peak,
        mfu=None if peak is None else flops / step_s / peak,
        fraction_of_measured_matmul_rate=flops / step_s / matmul_flops_per_s)
    mfu = "n/a" if peak is None else f"{flops / step_s / peak:.1%}"
    print(f"train step: {step_s * 1e3:.1f} ms, {flops / step_s / 1e12:.1f} TFLOP/s, MFU {mfu}", flush=True)


def _write(path: Path, gpu: dict) -> None:
    """Sets the `gpu` entry of a results file, keeping everything else in it."""
    bench_common.write_results(path, {**bench_common.read_results(path), "gpu": gpu})


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default="generate,train", help="the ceilings are always measured")
    ap.add_argument("--tiny", action="store_true", help="toy sizes on any device; needs --out")
    ap.add_argument("--out", default=None, help="one JSON with every figure (instead of the results files)")
    args = ap.parse_args(argv)
    if args.tiny and not args.out:
        ap.error("--tiny writes only to --out: give a path")
    size = TINY if args.tiny else FULL
    parts = set(args.only.split(","))
    if not parts <= {"generate", "train"}:
        ap.error(f"--only takes generate and train, got {args.only!r}")

    device = jax.devices()[0]
    common = dict(device=device.device_kind, platform=device.platform, jax=jax.__version__,
                  measured=time.strftime("%Y-%m-%d"), method="experiments/bench_gpu.py",
                  machine=bench_common.machine())
    print(f"device: {device.device_kind} ({device.platform}), jax {jax.__version__}", flush=True)
    ceiling = ceilings(size)  # the roofline and MFU below are relative to it
    print(f"copy {ceiling['copy_bytes_per_s'] / 1e9:.0f} GB/s, bf16 matmul "
          f"{ceiling['matmul_flops_per_s'] / 1e12:.1f} TFLOP/s", flush=True)
    gen_report, train_report = {}, {}
    everything = dict(**common, ceilings=ceiling, generate=gen_report, train=train_report)

    def save():
        if args.out:
            bench_common.write_results(args.out, everything)
            return
        if gen_report:
            _write(RESULTS / "bench_generate.json", dict(**common, ceilings=ceiling, **gen_report))
        if train_report:
            _write(RESULTS / "bench_train.json", dict(**common, ceilings=ceiling, **train_report))

    if "generate" in parts:
        generation(size, ceiling["copy_bytes_per_s"], gen_report, save)
    if "train" in parts:
        train_step(size, datasheet_bf16(device.device_kind), ceiling["matmul_flops_per_s"], train_report)
    save()

    rows = [("measurement", "figure", "target")]
    for key, r in gen_report.items():
        if key.startswith("batch_"):
            rows += [(f"generate {key} tokens/s", f"{r['tokens_per_s']:.0f}", ""),
                     (f"generate {key} roofline", f"{r['roofline_fraction']:.1%}", ">= 50%")]
    if train_report:
        mfu = train_report["mfu"]
        rows += [("train step ms", f"{train_report['step_s'] * 1e3:.1f}", ""),
                 ("train step MFU", "n/a" if mfu is None else f"{mfu:.1%}", ">= 40%")]
    print("\n" + bench_common.table(rows))
    return everything


if __name__ == "__main__":
    main()
