"""Two processes joined by `jax.distributed` (4 fake CPU devices each, gloo collectives) end where
one process with 8 devices ends, on the same data=2 x fsdp=2 x tensor=2 mesh: the sharded GRPO
step (same params and metrics), and the whole experiment loop of `experiment.run` (same
completions, rewards and metrics.jsonl rows, losses and final params to float32 rounding).

The processes are launched by `tests/multiprocess/check.py` (also a script for the reliability
figures), with this suite's persistent compile cache. Skipped only when the installed jax has no
CPU collectives; any other failure quotes each process's output.
"""

import jax
import pytest

from tests.multiprocess.check import run_check, run_experiment_check


def _checked(result: dict) -> dict:
    if result["unavailable"]:
        pytest.skip(f"no multi-process CPU runtime: {result['unavailable']}")
    assert result["error"] is None, result["error"]
    return result


def test_two_processes_equal_one_process():
    result = _checked(run_check(compile_cache=jax.config.jax_compilation_cache_dir))
    print(f"2 processes vs 1: max |diff| params {result['max_param_diff']:.2e}, metrics "
          f"{result['max_metric_diff']:.2e}, losses {result['loss_multiprocess']}; {result['seconds']} s")
    assert result["multiprocess_equal"] == 1, result


def test_experiment_on_two_processes_equals_one_process():
    result = _checked(run_experiment_check(compile_cache=jax.config.jax_compilation_cache_dir))
    print(f"experiment, 2 processes vs 1: {result['completions']} completions; largest relative "
          f"difference losses {result['max_loss_diff']:.1e}, metrics {result['max_metric_diff']:.1e}, "
          f"params {result['max_param_diff']:.1e}; {result['seconds']} s")
    assert result["multiprocess_equal"] == 1, result
