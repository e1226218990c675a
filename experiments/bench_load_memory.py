"""Peak host memory of `models.load_hf` on a ~1B-parameter checkpoint.

Writes a random checkpoint of the llama3.2-1b preset's shape (1.24B parameters, tied
embeddings) as bf16 safetensors with `models.save_hf` (which streams tensor by tensor, so the
writer holds the bf16 parameters plus one tensor), then loads it in a fresh subprocess per
configuration and reads that process's peak resident set (`ru_maxrss`). The figure of merit is

    ratio = (peak RSS - RSS before loading) / checkpoint bytes on disk

where "before loading" is after importing jax and rljax and starting the CPU backend. The
headline run loads bf16 files into bf16 params (final params = 1.0x the file, so the ratio shows
the loader's overhead); the float32 run (load_hf's default dtype) ends with params twice the
file's size, so its ratio is ~2 by construction. Results go to experiments/results/load_memory.json.

    python experiments/bench_load_memory.py [--preset llama3.2-1b] [--workdir /tmp]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import bench_common

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RUNS = (  # (name, load dtype, with a one-device mesh)
    ("bf16 file -> bf16 params", "bfloat16", False),
    ("bf16 file -> bf16 params, 1-device mesh", "bfloat16", True),
    ("bf16 file -> float32 params (default dtype)", "float32", False),
)


def write_checkpoint(preset: str, path: Path) -> int:
    """A random bf16 checkpoint of `preset`'s shape; returns its size in bytes."""
    import jax
    import ml_dtypes
    import numpy as np

    from rljax import models

    cfg = models.get_config(preset, param_dtype="bfloat16")
    shapes = jax.eval_shape(lambda k: models.init(cfg, k), jax.random.PRNGKey(0))
    rng = np.random.default_rng(0)
    # One leaf at a time in float32, kept in bf16: the writer holds the bf16 params only.
    params = jax.tree.map(
        lambda s: (0.02 * rng.standard_normal(s.shape, np.float32)).astype(ml_dtypes.bfloat16), shapes)
    models.save_hf(cfg, params, path, dtype=ml_dtypes.bfloat16)
    return sum(f.stat().st_size for f in path.glob("*.safetensors"))


def measure(path: str, dtype: str, use_mesh: bool) -> dict:
    """Runs in a fresh process: RSS before loading, peak RSS, and the load time."""
    import jax
    import psutil

    from rljax import models, sharding

    jax.devices()  # start the backend before the baseline
    baseline = psutil.Process().memory_info().rss
    t0 = time.perf_counter()
    mesh = sharding.make_mesh() if use_mesh else None
    shardings = (lambda cfg: sharding.param_shardings(cfg, mesh)) if use_mesh else None
    cfg, params = models.load_hf(path, dtype=dtype, shardings=shardings)
    jax.block_until_ready(params)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    param_bytes = sum(x.nbytes for x in jax.tree.leaves(params))
    return dict(baseline_rss_bytes=baseline, peak_rss_bytes=peak, param_bytes=param_bytes,
                load_seconds=round(seconds, 2), n_params=models.count_params(params))


def machine() -> dict:
    import jax

    return bench_common.machine(device=str(jax.devices()[0].device_kind))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="llama3.2-1b")
    parser.add_argument("--workdir", default=None, help="where the temporary checkpoint goes")
    parser.add_argument("--out", default=str(ROOT / "experiments/results/load_memory.json"))
    parser.add_argument("--measure", nargs=3, metavar=("PATH", "DTYPE", "MESH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:  # the child process
        path, dtype, mesh = args.measure
        print(json.dumps(measure(path, dtype, mesh == "1")))
        return

    tmp = Path(tempfile.mkdtemp(prefix="rljax_load_memory_", dir=args.workdir))
    try:
        t0 = time.perf_counter()
        checkpoint_bytes = write_checkpoint(args.preset, tmp)
        print(f"wrote {checkpoint_bytes / 2**30:.2f} GiB of bf16 safetensors in "
              f"{time.perf_counter() - t0:.0f} s to {tmp}")
        runs = []
        for name, dtype, mesh in RUNS:
            out = subprocess.run(
                [sys.executable, __file__, "--measure", str(tmp), dtype, "1" if mesh else "0"],
                check=True, capture_output=True, text=True).stdout
            run = dict(name=name, load_dtype=dtype, mesh=mesh, **json.loads(out.strip().splitlines()[-1]))
            run["ratio"] = round((run["peak_rss_bytes"] - run["baseline_rss_bytes"]) / checkpoint_bytes, 3)
            run["ratio_to_params"] = round(
                (run["peak_rss_bytes"] - run["baseline_rss_bytes"]) / run["param_bytes"], 3)
            runs.append(run)
    finally:
        shutil.rmtree(tmp)

    print("\n" + bench_common.table(
        [("run", "baseline", "peak", "params", "ratio", "/params", "time")]
        + [(r["name"], f"{r['baseline_rss_bytes'] / 2**30:.2f}G", f"{r['peak_rss_bytes'] / 2**30:.2f}G",
            f"{r['param_bytes'] / 2**30:.2f}G", f"{r['ratio']:.3f}", f"{r['ratio_to_params']:.3f}",
            f"{r['load_seconds']:.1f}s") for r in runs]))
    headline = runs[0]
    result = dict(
        preset=args.preset,
        checkpoint_dtype="bfloat16",
        load_dtype=headline["load_dtype"],
        checkpoint_bytes=checkpoint_bytes,
        peak_rss_bytes=headline["peak_rss_bytes"],
        baseline_rss_bytes=headline["baseline_rss_bytes"],
        ratio=headline["ratio"],
        ratio_definition="(peak_rss_bytes - baseline_rss_bytes) / checkpoint_bytes",
        machine=machine(),
        runs=runs,
    )
    bench_common.write_results(args.out, result)
    print(f"\nheadline ratio {headline['ratio']:.3f} (target < 1.5); wrote {args.out}")


if __name__ == "__main__":
    main()
