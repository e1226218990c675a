"""Config validation happens before anything is built, and names the key and the fix."""

import os
import subprocess
import sys

import jax
import ml_collections
import pytest

from configs import base
from rljax.train import experiment
from rljax.train.config_check import ConfigError, check_config
from tests.test_configs import CONFIGS, ROOT, load_config


@pytest.mark.parametrize("path", CONFIGS + [os.path.join(ROOT, "configs", "grpo_gsm8k_smollm2.py")],
                         ids=lambda p: os.path.basename(p)[:-3])
def test_every_shipped_config_passes(path):
    check_config(load_config(path), base.get_config())


def _config(name="grpo_arithmetic", **changes):
    """A shipped config (by default the main job's) as a plain dict (what a notebook might pass:
    ConfigDict itself refuses some wrong types on assignment), with `section__key=value` changes."""
    config = load_config(os.path.join(ROOT, "configs", f"{name}.py")).to_dict()
    for dotted, value in changes.items():
        *sections, key = dotted.split("__")
        target = config
        for name in sections:
            target = target[name]
        target[key] = value
    return config


@pytest.mark.parametrize("changes,message", [
    ({"rl__learning_rat": 1e-3}, r"rl\.learning_rat: unknown key"),
    ({"evall": {}}, r"evall: unknown key"),
    ({"rl__steps": "10"}, r"rl\.steps='10' is a str, expected a int"),
    ({"rl__learning_rate": True}, r"rl\.learning_rate=True is a bool, expected a float"),
    ({"sft": 3}, r"sft=3: expected a section"),
    ({"rl__group_size": 1}, r"rl\.group_size=1: .*group_size >= 2"),
    ({"rl__minibatches": 3}, r"divisible by rl\.minibatches \* rl\.micro_batches = 3"),
    ({"rl__lr_decay": "exp"}, r"rl\.lr_decay='exp': choose one of \('constant', 'cosine', 'linear'\)"),
    ({"sft__lr_decay": "exp"}, r"sft\.lr_decay='exp': choose one of \('constant', 'cosine', 'linear'\)"),
    ({"sft__lr_final_fraction": 1.5}, r"sft\.lr_final_fraction=1\.5: .* must be in \[0, 1\]"),
    ({"sft__micro_batches": 5}, r"sft\.batch_size=64 is not divisible by sft\.micro_batches=5"),
    ({"data__max_prompt_tokens": 60}, r"exceeds the model's context model\.overrides\.max_seq_len=64"),
    # Meshes: none of these needs more than one device (a mesh of product 3 fits no device count
    # the tests run with, and data=2 cannot split a batch of 9 rows whatever the devices).
    ({"mesh__data": 0}, r"mesh\.data=0: a mesh axis size is a positive integer, or -1"),
    ({"mesh__tensor": -2}, r"mesh\.tensor=-2: a mesh axis"),
    ({"mesh__data": -1, "mesh__fsdp": -1}, r"mesh\.data and mesh\.fsdp are all -1: at most one mesh axis"),
    ({"mesh__data": 3}, r"mesh\.data x mesh\.fsdp x mesh\.tensor = 3 needs 3 devices, but there are \d+: make"),
    ({"mesh__data": 2, "rl__prompts_per_step": 3, "rl__group_size": 3},
     r"rl\.prompts_per_step \* rl\.group_size / \(rl\.minibatches \* rl\.micro_batches\) = 9 rows per "
     r"micro-batch are not divisible by mesh\.data \* mesh\.fsdp = 2"),
    ({"mesh__fsdp": 2, "sft__batch_size": 6, "sft__micro_batches": 2},
     r"sft\.batch_size / sft\.micro_batches = 3 rows per micro-batch are not divisible by mesh\.data \* "
     r"mesh\.fsdp = 2"),
    ({"mesh__data": 2, "eval__batch_size": 5}, r"eval\.batch_size=5 is not divisible by mesh\.data \* mesh\.fsdp = 2"),
])
def test_bad_settings_are_named_with_the_fix(changes, message):
    with pytest.raises(ConfigError, match=message):
        check_config(_config(**changes), base.get_config())


@pytest.mark.parametrize("changes,message", [
    ({"rl__algorithm": "grpo"}, r"init_critic makes PPO's critic: set rl\.algorithm='ppo'"),
    ({"preference__reward_model__steps": 0}, r"init_critic needs a trained reward model: set "
                                              r"preference\.reward_model\.steps > 0"),
])
def test_a_critic_from_the_reward_model_needs_ppo_and_a_reward_model(changes, message):
    config = _config("ppo_rm_arithmetic", preference__reward_model__init_critic=True, **changes)
    with pytest.raises(ConfigError, match=message):
        check_config(config, base.get_config())


def test_a_mesh_axis_of_minus_one_takes_the_devices_the_others_leave(monkeypatch):
    monkeypatch.setattr(jax, "device_count", lambda: 8)
    check_config(_config(mesh__data=-1, mesh__tensor=2, eval__batch_size=200), base.get_config())
    with pytest.raises(ConfigError, match=r"eval\.batch_size=250 is not divisible by mesh\.data \* mesh\.fsdp = 8"):
        check_config(_config(mesh__data=-1), base.get_config())
    with pytest.raises(ConfigError, match=r"cannot infer mesh\.fsdp=-1: 8 devices are not divisible by the product 3"):
        check_config(_config(mesh__fsdp=-1, mesh__tensor=3), base.get_config())


def test_integers_are_accepted_for_floats_and_every_problem_is_listed():
    check_config(_config(rl__learning_rate=1), base.get_config())
    with pytest.raises(ConfigError) as error:
        check_config(_config(rl__stepz=1, eval__everyy=2), base.get_config())
    assert "rl.stepz" in str(error.value) and "eval.everyy" in str(error.value)


def test_run_checks_before_building_anything(tmp_path):
    with pytest.raises(ConfigError, match="rl.group_size"):
        experiment.run(ml_collections.ConfigDict(_config(rl__group_size=1)), str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()  # nothing written, nothing built


def test_cli_prints_one_line_per_problem_and_no_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "experiments", "train.py"),
         f"--config={os.path.join(ROOT, 'configs', 'grpo_arithmetic.py')}", f"--workdir={tmp_path}",
         "--config.rl.group_size=1"],
        capture_output=True, text=True, timeout=120, env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert proc.returncode == 1
    assert "rl.group_size=1" in proc.stderr and "Traceback" not in proc.stderr


def test_a_tokenizer_larger_than_the_model_vocabulary_is_caught_at_start(monkeypatch):
    from rljax import models

    config = load_config(os.path.join(ROOT, "configs", "grpo_arithmetic.py"))
    config.model.source, config.model.path = "hf", "/some/checkpoint"
    small = models.get_config("tiny", vocab_size=100)
    monkeypatch.setattr(models, "load_hf", lambda path, **overrides: (small, None))

    class Tokenizer:
        vocab_size = 300

    with pytest.raises(ValueError, match="tokenizer has 300 ids but the model only 100"):
        experiment.build_model(config, Tokenizer(), None)
