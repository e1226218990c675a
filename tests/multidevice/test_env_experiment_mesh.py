"""A multi-turn config (configs/grpo_guess_number.py) run by `experiment.run` at tiny size on a
data=2, fsdp=2, tensor=2 mesh ends where the same run on one device ends: the SFT losses on the
expert's conversations, the multi-turn GRPO iterations' rewards, turns, loss and gradient norm,
and the held-out accuracy (values to float32 rounding, counts exactly).

Runs in its own process (tests/test_multidevice.py sets 8 fake CPU devices); skipped elsewhere.
"""

import os
import sys

import jax
import numpy as np
import pytest

from rljax.train import experiment
from rljax.train.metrics import read_jsonl

if jax.device_count() < 8:
    pytest.skip("needs 8 devices; tests/test_multidevice.py runs this file on 8 fake CPU devices",
                allow_module_level=True)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MESHES = {"one_device": dict(data=1, fsdp=1, tensor=1), "2x2x2": dict(data=2, fsdp=2, tensor=2)}
EXACT = ("reward_mean", "env/turns_mean", "env/sampled_tokens", "eval/accuracy")
CLOSE = ("sft/loss", "loss", "grad_norm")


def _config(mesh: dict):
    sys.path.insert(0, ROOT)
    from configs import grpo_guess_number

    config = grpo_guess_number.get_config()
    config.model.overrides.update(d_model=32, n_layers=1, n_heads=2, n_kv_heads=2, head_dim=16, mlp_dim=64)
    config.task.knobs.update(train_size=200)
    config.sft.update(steps=20, batch_size=8)
    config.rl.update(steps=2, prompts_per_step=2, group_size=4)
    config.eval.update(every=1, num_examples=8, batch_size=8)
    config.log.update(progress=False, tensorboard=False)
    config.mesh.update(**mesh)
    return config


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    out = {}
    for name, mesh in MESHES.items():
        workdir = str(tmp_path_factory.mktemp(name))
        experiment.run(_config(mesh), workdir)
        out[name] = read_jsonl(os.path.join(workdir, "metrics.jsonl"))
    return out


def _column(rows, key):
    return np.array([row[key] for row in rows if key in row], np.float64)


def test_sharded_multi_turn_run_equals_one_device_run(rows):
    want, got = rows["one_device"], rows["2x2x2"]
    assert len(_column(want, "reward_mean")) == 2 and _column(want, "env/turns_mean").min() > 1
    for key in EXACT:
        np.testing.assert_array_equal(_column(got, key), _column(want, key), err_msg=key)
    for key in CLOSE:
        np.testing.assert_allclose(_column(got, key), _column(want, key), rtol=1e-4, atol=1e-6, err_msg=key)
