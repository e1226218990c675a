"""Executions per second of `rljax.rewards.sandbox.run_code` (bubblewrap sandbox) on this CPU.

    python experiments/bench_sandbox.py [--runs 120] [--workers 1 2 4]

The workload is what the RL loop sends: programs from the `code` task's test split run against
their hidden tests, in a fixed mix of one third each: the reference solution (passes), another
problem's reference renamed to the right entry point (wrong: fails an assert, or raises on an
argument of the wrong type) and a syntax error.
Each worker count runs the same `--runs` programs through a thread pool of that size (1 =
sequential, as `rewards.score` calls them today); exec/s = runs / wall time. One untimed call
first pays the sandbox check. Each run costs one bwrap start (namespaces, mounts) plus one
Python start-up inside, so the figure is bounded by process creation, not by the programs.
The load average before and after is recorded: the machine is shared.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import bench_common
from rljax.data.code import CodeBuilder
from rljax.rewards import sandbox

RESULTS = Path(__file__).parent / "results" / "bench_sandbox.json"


def workload(n: int) -> list[tuple[str, str, str]]:
    """(kind, program, tests) triples, cycling pass / wrong / syntax error."""
    problems = CodeBuilder.make_splits(CodeBuilder.config_for(train_size=1, test_size=n))["test"]
    jobs = []
    for i, problem in enumerate(problems):
        kind = ("pass", "wrong", "syntax_error")[i % 3]
        if kind == "pass":
            program = problem["answer"]
        elif kind == "wrong":
            other = problems[(i + 1) % n]
            program = other["answer"].replace(f"def {other['entry_point']}(",
                                              f"def {problem['entry_point']}(", 1)
        else:
            program = problem["answer"].replace("):", ")", 1)
        jobs.append((kind, program, problem["tests"]))
    return jobs


def measure(jobs, workers: int) -> dict:
    load_before = bench_common.load_average()
    start = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        results = list(pool.map(lambda job: sandbox.run_code(job[1], job[2]), jobs))
    wall = time.perf_counter() - start
    statuses: dict[str, int] = {}
    for result in results:
        statuses[result.status] = statuses.get(result.status, 0) + 1
    per_run = sorted(r.seconds for r in results)
    return {"workers": workers, "runs": len(jobs), "wall_s": round(wall, 3),
            "exec_per_s": round(len(jobs) / wall, 1),
            "median_run_s": round(per_run[len(per_run) // 2], 4),
            "p95_run_s": round(per_run[int(0.95 * (len(per_run) - 1))], 4),
            "statuses": statuses,
            "load_average": {"before": load_before, "after": bench_common.load_average()}}


def machine() -> dict:
    bwrap = subprocess.run([sandbox._bwrap_path(), "--version"], capture_output=True, text=True)
    return bench_common.machine(sandbox_python=sandbox.sandbox_python()[0],
                                bwrap=bwrap.stdout.strip(), host_is_root=os.geteuid() == 0)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=120)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()

    sandbox.check_sandbox()
    jobs = workload(args.runs)
    rows = []
    for workers in args.workers:
        row = measure(jobs, workers)
        rows.append(row)
        print(f"workers {workers}: {row['exec_per_s']:6.1f} exec/s  (median run "
              f"{row['median_run_s'] * 1e3:.0f} ms, p95 {row['p95_run_s'] * 1e3:.0f} ms, "
              f"{row['statuses']}, load {row['load_average']['before'][0]:.2f})", flush=True)
    passes = sum(kind == "pass" for kind, _, _ in jobs)
    # The same outcomes whatever the concurrency, and only the references pass.
    assert all(row["statuses"] == rows[0]["statuses"] for row in rows), rows
    assert rows[0]["statuses"].get("passed") == passes, rows[0]["statuses"]

    print("\n" + bench_common.table(
        [("workers", "exec/s", "median run (ms)", "p95 run (ms)", "load before")]
        + [(row["workers"], row["exec_per_s"], f"{row['median_run_s'] * 1e3:.0f}",
            f"{row['p95_run_s'] * 1e3:.0f}", f"{row['load_average']['before'][0]:.2f}") for row in rows]))
    report = {"machine": machine(), "workload": "code task test split: 1/3 references, 1/3 "
              "another problem's reference, 1/3 syntax errors", "sequential_exec_per_s": rows[0]["exec_per_s"],
              "best_exec_per_s": max(row["exec_per_s"] for row in rows), "rows": rows}
    bench_common.write_results(args.out, report)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
