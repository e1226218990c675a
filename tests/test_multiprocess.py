"""Two processes joined by `jax.distributed` (4 fake CPU devices each, gloo collectives) run the
sharded GRPO step and end with the same params and metrics as one process with 8 devices.

The processes are launched by `tests/multiprocess/check.py` (also a script for the reliability
figures), with this suite's persistent compile cache. Skipped only when the installed jax has no
CPU collectives; any other failure quotes each process's output.
"""

import jax
import pytest

from tests.multiprocess.check import run_check


def test_two_processes_equal_one_process():
    result = run_check(compile_cache=jax.config.jax_compilation_cache_dir)
    if result["unavailable"]:
        pytest.skip(f"no multi-process CPU runtime: {result['unavailable']}")
    assert result["error"] is None, result["error"]
    print(f"2 processes vs 1: max |diff| params {result['max_param_diff']:.2e}, metrics "
          f"{result['max_metric_diff']:.2e}, losses {result['loss_multiprocess']}; {result['seconds']} s")
    assert result["multiprocess_equal"] == 1, result
