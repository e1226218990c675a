"""What the benchmark scripts share: the machine they ran on, a timing loop, the results files,
and a printed table.

Standard library only, and imported by bare name (`import bench_common`: a script's own directory
is first on sys.path), because bench_generate_tunix.py and bench_train.py's tunix worker run it
in Tunix's own virtual environment, where rljax is not installed.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")
# The /proc/cpuinfo flags that decide which matrix and vector kernels XLA and PyTorch may use.
VECTOR_FLAGS = re.compile(r"avx2|avx512.*|amx.*")
GPU_PENDING = "none yet: experiments/bench_gpu.py writes this on a GPU"


def _cpuinfo_field(name: str) -> str | None:
    """The first `name : value` of /proc/cpuinfo (the first core's), or None."""
    try:
        for line in CPUINFO.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == name:
                return value.strip()
    except OSError:
        pass
    return None


def cpu_model() -> str:
    return _cpuinfo_field("model name") or platform.processor() or "unknown"


def cpu_vector_flags() -> list[str]:
    """The CPU's avx2, avx512* and amx* flags, sorted; empty off x86 Linux."""
    return sorted(f for f in (_cpuinfo_field("flags") or "").split() if VECTOR_FLAGS.fullmatch(f))


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages: the machine is shared, so every figure carries them."""
    return [round(x, 2) for x in os.getloadavg()]


def versions(*packages: str) -> dict[str, str | None]:
    """Installed versions by distribution name (None where one is not installed), read from the
    package metadata so that nothing is imported."""
    found = {}
    for name in packages:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def machine(*packages: str, **extra) -> dict:
    """The machine a benchmark ran on: CPU model and vector flags, cores, memory, load average
    (when this is called), platform, and the versions of python, jax, jaxlib and `packages`;
    `extra` adds the script's own entries."""
    return {"cpu": cpu_model(), "cpu_flags": cpu_vector_flags(), "cores": os.cpu_count(),
            "memory_bytes": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
            "load_average": load_average(), "platform": platform.platform(),
            "python": platform.python_version(), "versions": versions("jax", "jaxlib", *packages),
            **extra}


def time_calls(fn: Callable[[int], object], repeats: int,
               warm_up: Callable[[int], object] | None = None) -> dict:
    """Calls `warm_up` (default `fn`) once untimed with seed 0, then `fn(seed)` for seeds 1 to
    `repeats`, each timed alone. `fn` must wait for its result (block on JAX arrays). Returns
    `first_call_s` (the warm-up's time: tracing and compilation on the JAX sides) and `times_s`."""
    start = time.perf_counter()
    (warm_up or fn)(0)
    first = time.perf_counter() - start
    times = []
    for seed in range(1, repeats + 1):
        start = time.perf_counter()
        fn(seed)
        times.append(time.perf_counter() - start)
    return {"first_call_s": first, "times_s": times}


def read_results(path: Path | str) -> dict:
    """A results file's JSON object, or {} when there is none yet."""
    path = Path(path)
    return json.loads(path.read_text()) if path.exists() else {}


def write_results(path: Path | str, results: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")


def kept_gpu_entry(previous: dict):
    """The `gpu` entry of a CPU benchmark's results: experiments/bench_gpu.py writes it on an
    accelerator, and a CPU run keeps what `previous` (the file before this run) holds."""
    return previous.get("gpu") or GPU_PENDING


def table(rows: Sequence[Sequence[object]]) -> str:
    """Rows (the first the header) as aligned text columns: the first left-aligned, the others
    right-aligned, as numbers read best."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
    return "\n".join("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                               for i, (c, w) in enumerate(zip(row, widths))).rstrip()
                     for row in cells)
