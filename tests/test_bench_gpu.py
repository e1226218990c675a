"""experiments/bench_gpu.py runs every path at toy sizes (here on the CPU), so that a lent GPU's
few minutes are not spent finding a broken script."""

import importlib.util
import json
import os

from rljax import models

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _bench_gpu():
    spec = importlib.util.spec_from_file_location("bench_gpu", os.path.join(ROOT, "experiments", "bench_gpu.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tiny_run_measures_every_figure(tmp_path):
    bench = _bench_gpu()
    out = tmp_path / "gpu.json"
    bench.main(["--tiny", "--out", str(out)])
    report = json.loads(out.read_text())
    assert report["platform"] == "cpu" and report["ceilings"]["copy_bytes_per_s"] > 0

    g = bench.TINY["generate"]
    row = report["generate"][f"batch_{g['batches'][0]}"]
    rows, P, N = row["rows"], g["prompt_len"], g["new_tokens"]
    assert row["tokens_per_s"] == rows * N / row["call_s"]
    # The fewest bytes of a step: bf16 weights once, keys and values of P + N/2 cached tokens.
    cfg = models.get_config(bench.TINY["preset"])
    kv_per_token = 2 * cfg.n_layers * cfg.n_kv_heads * cfg.head_dim * 2
    n_params = report["generate"]["config"]["n_params"]
    assert row["bytes_per_step_fewest"] == 2 * n_params + rows * (P + N / 2) * kv_per_token
    assert row["bytes_per_step_read"] == 2 * n_params + rows * (P + N - 1) * kv_per_token
    assert row["roofline_fraction"] == row["roofline_step_s"] / row["decode_step_s"]

    train = report["train"]
    assert train["mfu"] is None  # no datasheet rate for a CPU
    assert train["step_s"] > 0 and train["fraction_of_measured_matmul_rate"] > 0


def test_datasheet_rates_by_device_kind():
    bench = _bench_gpu()
    assert bench.datasheet_bf16("NVIDIA H100 PCIe") == 756.0e12
    assert bench.datasheet_bf16("NVIDIA H100 80GB HBM3") == bench.datasheet_bf16("NVIDIA H200") == 989.4e12
    assert bench.datasheet_bf16("cpu") is None
