"""Config validation: the typed sections check every key's type and range and the settings that
cannot work together, before anything is built, and each problem is one line naming the key and
the fix; old keys name their new place; the shipped configs pass."""

import dataclasses
import os
import subprocess
import sys

import jax
import ml_collections
import pytest

from rljax.train import experiment
from rljax.train.config import ConfigError, ExperimentConfig, RLConfig, experiment_config
from tests.test_configs import ALL_CONFIGS, ROOT, load_config


@pytest.mark.parametrize("path", ALL_CONFIGS, ids=lambda p: os.path.basename(p)[:-3])
def test_every_shipped_config_passes(path):
    assert isinstance(experiment_config(load_config(path)), ExperimentConfig)


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
    ({"rl__learning_rat": 1e-3}, r"rl\.learning_rat: unknown key \(did you mean rl\.optim\.learning_rate\?\)"),
    ({"evall": {}}, r"evall: unknown key \(did you mean eval\?\)"),
    ({"rl__steps": "10"}, r"rl\.steps='10' is a str, expected int"),
    ({"rl__optim__learning_rate": True}, r"rl\.optim\.learning_rate=True is a bool, expected float"),
    ({"sft": 3}, r"sft=3: expected a section"),
    ({"rl__group_size": 1}, r"rl\.group_size=1: .*group_size >= 2"),
    ({"rl__minibatches": 3}, r"divisible by rl\.minibatches \* rl\.micro_batches = 3"),
    ({"rl__minibatches": 0}, r"rl\.minibatches=0: must be >= 1"),
    ({"rl__prompts_per_step": -4}, r"rl\.prompts_per_step=-4: must be >= 1"),
    ({"rl__optim__learning_rate": -1e-3}, r"rl\.optim\.learning_rate=-0\.001: must be > 0"),
    ({"rl__optim__lr_decay": "exp"}, r"rl\.optim\.lr_decay='exp': choose one of 'constant', 'cosine', 'linear'"),
    ({"sft__optim__lr_final_fraction": 1.5}, r"sft\.optim\.lr_final_fraction=1\.5: must be in \[0, 1\]"),
    ({"sft__micro_batches": 5}, r"sft\.batch_size=64 is not divisible by sft\.micro_batches=5"),
    ({"rl__sampling__temperature": -1.0}, r"rl\.sampling\.temperature=-1\.0: must be >= 0"),
    ({"rl__sampling__top_p": 0.0}, r"rl\.sampling\.top_p=0\.0: must be in \(0, 1\]"),
    ({"eval__batch_size": 0}, r"eval\.batch_size=0: must be >= 1"),
    ({"data__max_prompt_tokens": 60}, r"exceeds the model's context model\.overrides\.max_seq_len=64"),
    ({"rl__advantage": "a2c"}, r"rl\.advantage='a2c': choose one of .*'grpo'"),
    ({"rl__surrogate_hparams": {"clip": 0.1}}, r"rl\.surrogate_hparams\.clip: the 'ppo' surrogate has no such "
                                               r"hyperparameter; its hyperparameters are clip_eps, "),
    ({"rl__kl": {"placement": "none", "estimator": "k3", "coef": 0.1}}, r"rl\.kl\.coef=0\.1 with "
                                                                         r"rl\.kl\.placement='none'"),
    ({"rl__advantage": "gae"}, r"rl\.advantage='gae' needs a critic: set model\.overrides\.value_head=True"),
    ({"model__overrides": {"d_modl": 3}}, r"model\.overrides\.d_modl: not a ModelConfig field \(did you mean "
                                          r"'d_model'\?\)"),
    # Meshes: none of these needs more than one device (a mesh of product 3 fits no device count
    # the tests run with, and data=2 cannot split a batch of 9 rows whatever the devices).
    ({"mesh__data": 0}, r"mesh\.data=0: a mesh axis size is a positive integer, or -1"),
    ({"mesh__tensor": -2}, r"mesh\.tensor=-2: a mesh axis"),
    ({"mesh__data": -1, "mesh__fsdp": -1}, r"mesh\.data and mesh\.fsdp are all -1: at most one mesh axis"),
    ({"mesh__data": 3}, r"mesh\.data x mesh\.fsdp x mesh\.tensor = 3 needs 3 devices, but there are \d+: make"),
    ({"mesh__data": 2, "rl__prompts_per_step": 3, "rl__group_size": 3},
     r"rl\.prompts_per_step \* rl\.group_size / \(rl\.minibatches \* rl\.micro_batches\) = 9 rows are not "
     r"divisible by mesh\.data \* mesh\.fsdp = 2"),
    ({"mesh__fsdp": 2, "sft__batch_size": 6, "sft__micro_batches": 2},
     r"sft\.batch_size / sft\.micro_batches = 3 rows are not divisible by mesh\.data \* mesh\.fsdp = 2"),
    ({"mesh__data": 2, "eval__batch_size": 5}, r"eval\.batch_size = 5 rows are not divisible by mesh\.data \* "
                                               r"mesh\.fsdp = 2"),
])
def test_bad_settings_are_named_with_the_fix(changes, message):
    with pytest.raises(ConfigError, match=message):
        experiment_config(_config(**changes))


@pytest.mark.parametrize("old,new", [
    ("algorithm", "removed: name the pieces instead; PPO is rl.advantage='gae'"),
    ("estimator", "renamed rl.advantage"),
    ("policy_loss", "renamed rl.surrogate; the old 'grpo' is rl.surrogate='ppo' with rl.kl.placement='loss'"),
    ("beta", "moved to rl.kl.coef"),
    ("kl_in_reward", "replaced by rl.kl.placement='reward'"),
    ("learning_rate", "moved to rl.optim.learning_rate"),
    ("max_new_tokens", "moved to rl.sampling.max_new_tokens"),
    ("clip_eps", "moved to rl.surrogate_hparams.clip_eps"),
])
def test_old_keys_name_the_new_key(old, new):
    with pytest.raises(ConfigError, match=f"rl\\.{old}: {new}"):
        experiment_config(_config(**{f"rl__{old}": 1}))


@pytest.mark.parametrize("changes,message", [
    ({"rl__advantage": "grpo"}, r"init_critic makes the critic of an advantage that needs one"),
    ({"preference__reward_model__steps": 0}, r"init_critic needs a trained reward model: set "
                                              r"preference\.reward_model\.steps > 0"),
])
def test_a_critic_from_the_reward_model_needs_a_critic_and_a_reward_model(changes, message):
    config = _config("ppo_rm_arithmetic", preference__reward_model__init_critic=True, **changes)
    with pytest.raises(ConfigError, match=message):
        experiment_config(config)


def test_a_mesh_axis_of_minus_one_takes_the_devices_the_others_leave(monkeypatch):
    monkeypatch.setattr(jax, "device_count", lambda: 8)
    experiment_config(_config(mesh__data=-1, mesh__tensor=2, eval__batch_size=200))
    with pytest.raises(ConfigError, match=r"eval\.batch_size = 100 rows are not divisible by mesh\.data \* "
                                          r"mesh\.fsdp = 8"):
        experiment_config(_config(mesh__data=-1))
    with pytest.raises(ConfigError, match=r"cannot infer mesh\.fsdp=-1: 8 devices are not divisible by the product 3"):
        experiment_config(_config(mesh__fsdp=-1, mesh__tensor=3))


def test_integers_are_accepted_for_floats_and_every_problem_is_listed():
    assert experiment_config(_config(rl__optim__learning_rate=1)).rl.optim.learning_rate == 1.0
    with pytest.raises(ConfigError) as error:
        experiment_config(_config(rl__stepz=1, eval__everyy=2, sft__batch_size=0))
    assert len(error.value.problems) == 3
    assert "rl.stepz" in str(error.value) and "eval.everyy" in str(error.value) and "sft.batch_size" in str(error.value)


def test_sections_are_usable_without_a_config_file():
    rl = RLConfig(advantage="rloo", surrogate="reinforce", group_size=4)
    assert rl.problems("rl") == [] and rl.rows == 16 * 4
    assert dataclasses.replace(rl, group_size=1).problems("rl")[0].startswith("rl.group_size=1")


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

    config = _config()
    config["model"].update(source="hf", path="/some/checkpoint")
    small = models.get_config("tiny", vocab_size=100)
    monkeypatch.setattr(models, "load_hf", lambda path, **overrides: (small, None))

    class Tokenizer:
        vocab_size = 300

    with pytest.raises(ValueError, match="tokenizer has 300 ids but the model only 100"):
        experiment.build_model(experiment_config(config), Tokenizer(), None)
