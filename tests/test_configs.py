"""Every experiment config parses and runs end to end for one step at tiny size, and a run
resumes from its workdir."""

import glob
import importlib.util
import json
import os

import pytest

from rljax.train import experiment
from rljax.train.workdir import InputError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Experiment configs (run by experiments/train.py); base.py holds their shared defaults and
# estimator_study.py configures the estimator study (tests/estimators runs it).
CONFIGS = sorted(p for p in glob.glob(os.path.join(ROOT, "configs", "*.py"))
                 if os.path.basename(p) not in ("__init__.py", "base.py", "estimator_study.py"))
ALL_CONFIGS = CONFIGS + [os.path.join(ROOT, "configs", "base.py")]
# Configs that run a real pretrained model rather than a from-scratch one.
REAL_MODEL = {"grpo_gsm8k_smollm2.py", "grpo_smollm2_arithmetic.py"}
# Pod configs: 1B-8B checkpoints that are not on this machine, compiled rather than run here
# (experiments/aot_compile.py; tests/aot compiles the same programs at tiny size).
POD = {"grpo_gsm8k_llama1b_pod.py", "grpo_gsm8k_llama8b_pod.py"}
# Configs whose rewards execute programs in the bubblewrap sandbox.
NEEDS_SANDBOX = {"grpo_code.py"}


def load_config(path):
    import sys

    sys.path.insert(0, ROOT)  # configs import each other as `configs.X`
    spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def shrink(config, real_model: bool):
    """One SFT step (when the config has SFT) and one RL iteration on the smallest shapes."""
    if real_model:
        config.model.overrides = {"scan_layers": True}  # one compiled block for 30 layers
        config.data.update(max_prompt_tokens=min(config.data.max_prompt_tokens, 192), max_answer_tokens=4)
        config.task.validation_size = 2
    else:
        config.model.overrides.update(d_model=32, n_layers=1, n_heads=2, n_kv_heads=1, head_dim=16,
                                      mlp_dim=64)
        config.task.knobs.update(train_size=200, test_size=20)
        config.task.validation_size = 4
        config.sft.update(steps=min(config.sft.steps, 1), batch_size=4)
    config.rl.update(steps=min(config.rl.steps, 1), prompts_per_step=2, group_size=2, micro_batches=1,
                     minibatches=min(config.rl.minibatches, 2))
    config.rl.sampling.max_new_tokens = 4
    if "preference" in config:  # a few sampled pairs, one step of each preference stage
        config.preference.pairs.update(prompts=16, test_size=4)
        for stage in (config.preference.policy, config.preference.reward_model):
            stage.update(steps=min(stage.steps, 1), batch_size=4)
    config.eval.update(every=1, num_examples=2, batch_size=2)
    config.checkpoint.update(every=1)
    config.log.update(progress=False, tensorboard=False)
    return config


def test_configs_are_found():
    names = {os.path.basename(p) for p in CONFIGS}
    assert {"grpo_arithmetic.py", "sft_arithmetic.py", "ppo_arithmetic.py", "rloo_arithmetic.py",
            "reinforce_pp_arithmetic.py", "dapo_arithmetic.py", "grpo_gsm8k_smollm2.py"} <= names


@pytest.mark.parametrize(
    "path", [pytest.param(p, marks=pytest.mark.sandbox if os.path.basename(p) in NEEDS_SANDBOX else ())
             for p in CONFIGS if os.path.basename(p) not in REAL_MODEL | POD],
    ids=lambda p: os.path.basename(p)[:-3])
def test_config_runs_one_step(path, tmp_path):
    config = shrink(load_config(path), real_model=False)
    results = experiment.run(config, str(tmp_path))
    assert 0.0 <= results["accuracy_after_rl"] <= 1.0
    rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    if config.rl.steps:
        rl_rows = [r for r in rows if "reward_mean" in r]
        assert len(rl_rows) == 1 and "mismatch/kl" in rl_rows[0] and "eval/accuracy" in rl_rows[0]
    assert os.path.exists(tmp_path / "curves.png") and os.path.exists(tmp_path / "results.json")


@pytest.mark.slow
@pytest.mark.parametrize("path", [p for p in CONFIGS if os.path.basename(p) in REAL_MODEL],
                         ids=lambda p: os.path.basename(p)[:-3])
def test_real_model_config_runs_a_step(path, tmp_path):
    config = shrink(load_config(path), real_model=True)
    config.rl.steps = 2 if config.model.lora.rank else 1  # LoRA: the second step reads the adapters' update
    results = experiment.run(config, str(tmp_path))
    assert results["model_params"] >= 134_515_008  # the base, and any adapters
    assert os.path.exists(tmp_path / "checkpoints" / "rl")
    if config.export:  # a Hugging Face directory, the adapter beside it
        assert {"config.json", "model.safetensors", "tokenizer.json", "adapter"} <= set(os.listdir(tmp_path / "export"))


@pytest.mark.parametrize("name", sorted(POD))
def test_pod_configs_are_valid_and_name_their_missing_checkpoint(name, tmp_path):
    config = experiment.experiment_config(load_config(os.path.join(ROOT, "configs", name)), n_devices=8)
    assert config.model.preset and config.model.overrides["remat"] and config.mesh.fsdp == -1
    with pytest.raises(InputError, match=f"model.path={config.model.path}: no such GGUF file"):
        experiment.run(config, str(tmp_path))
    assert not os.listdir(tmp_path)  # refused before the workdir is touched


def test_a_finished_run_resumes_without_repeating_work(tmp_path):
    config = shrink(load_config(os.path.join(ROOT, "configs", "grpo_arithmetic.py")), real_model=False)
    first = experiment.run(config, str(tmp_path))
    rows_before = open(tmp_path / "metrics.jsonl").read()
    second = experiment.run(config, str(tmp_path))
    assert open(tmp_path / "metrics.jsonl").read() == rows_before  # nothing re-run, nothing re-logged
    assert second["accuracy_after_rl"] == first["accuracy_after_rl"]


def test_unknown_rl_keys_and_bad_settings_are_named(tmp_path):
    config = shrink(load_config(os.path.join(ROOT, "configs", "grpo_arithmetic.py")), real_model=False)
    config.rl.group_size = 1
    with pytest.raises(ValueError, match="rl.group_size"):
        experiment.run(config, str(tmp_path))
