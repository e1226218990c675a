"""Validation of an experiment config before anything is built or compiled.

A typo in a key or a value of the wrong type would otherwise surface minutes later, deep inside
a trace, or not at all (a misspelt key is silently ignored). `check_config` compares the config
with the defaults it was derived from and checks the settings that cannot work together; each
problem is one line that names the key and the fix, and all of them are reported at once.
"""

from __future__ import annotations

from collections.abc import Mapping

from rljax import sharding

# Sections whose contents are keyword arguments checked by what receives them (the model preset's
# fields, the task builder's knobs), or that only some configs have.
FREE_FORM = {"model.overrides", "task.knobs"}
OPTIONAL_SECTIONS = {"preference"}


class ConfigError(ValueError):
    """One line per problem, each naming the key and the fix."""


def _as_dict(config) -> dict:
    return config.to_dict() if hasattr(config, "to_dict") else dict(config)


def _type_problem(key: str, value, default) -> str | None:
    if default is None or value is None:
        return None
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif isinstance(default, str):
        ok = isinstance(value, str)
    else:
        return None
    if ok:
        return None
    return (f"{key}={value!r} is a {type(value).__name__}, expected a {type(default).__name__} "
            f"like the default {default!r}")


def _compare(config: Mapping, defaults: Mapping, prefix: str, problems: list[str]) -> None:
    for key, value in config.items():
        path = f"{prefix}{key}"
        if key not in defaults:
            if prefix or key not in OPTIONAL_SECTIONS:
                known = ", ".join(sorted(defaults))
                problems.append(f"{path}: unknown key; the keys here are {known} (misspelt?)")
            continue
        default = defaults[key]
        if isinstance(default, Mapping):
            if path in FREE_FORM:
                continue
            if not isinstance(value, Mapping):
                problems.append(f"{path}={value!r}: expected a section with keys {sorted(default)}")
            else:
                _compare(value, default, path + ".", problems)
        elif (problem := _type_problem(path, value, default)) is not None:
            problems.append(problem)


def _data_parallel(mesh: Mapping, problems: list[str]) -> int | None:
    """data x fsdp of the `mesh` section (`sharding.resolve_mesh_axes`), after adding what is wrong
    with its sizes to `problems`; None when they give no such number. All sizes 1 is one device
    (`experiment.build_mesh`) whatever the device count, so only other meshes must cover them."""
    sizes = {axis: mesh.get(axis, 1) for axis in sharding.MESH_AXES}
    if set(sizes.values()) == {1}:
        return 1
    resolved, found = sharding.resolve_mesh_axes(**sizes, names="mesh.")
    problems += found
    return None if resolved is None else resolved["data"] * resolved["fsdp"]


def _batch_split(config: dict, data_parallel: int) -> list[str]:
    """Every batch a step or the evaluation splits over the data-parallel devices must divide
    evenly (`rljax.train.sharded`): otherwise part of it is replicated, and a micro-batch whose
    rows do not split is resharded inside the step."""
    rl, sft = config.get("rl", {}), config.get("sft", {})
    split = f"mesh.data * mesh.fsdp = {data_parallel}"
    micro_batches = []  # (what, rows, parts): each step's micro-batches have rows / parts rows
    if rl.get("steps", 0) > 0:
        micro_batches.append(("rl.prompts_per_step * rl.group_size / (rl.minibatches * rl.micro_batches)",
                              rl.get("prompts_per_step", 1) * rl.get("group_size", 1),
                              rl.get("minibatches", 1) * rl.get("micro_batches", 1)))
    if sft.get("steps", 0) > 0:
        micro_batches.append(("sft.batch_size / sft.micro_batches", sft.get("batch_size", 1),
                              sft.get("micro_batches", 1)))
    problems = [f"{what} = {rows // parts} rows per micro-batch are not divisible by {split}: change the "
                "batch or the mesh" for what, rows, parts in micro_batches
                if parts > 0 and rows % parts == 0 and (rows // parts) % data_parallel]
    eval_batch = config.get("eval", {}).get("batch_size", 1)
    if eval_batch % data_parallel:
        problems.append(f"eval.batch_size={eval_batch} is not divisible by {split}: change one of them")
    return problems


def _consistency(config: dict) -> list[str]:
    import dataclasses

    from rljax.train.optim import LR_DECAYS
    from rljax.train.rl import RLConfig, validate

    problems = []
    rl, data, sft = config.get("rl", {}), config.get("data", {}), config.get("sft", {})
    known = {f.name for f in dataclasses.fields(RLConfig)}
    try:  # the RL loop's own checks (estimator, group size, mini-batch divisibility, ...)
        validate(RLConfig(**{k: v for k, v in rl.items() if k in known}))
    except ValueError as e:
        problems.append(str(e))
    if sft.get("lr_decay", "constant") not in LR_DECAYS:
        problems.append(f"sft.lr_decay={sft['lr_decay']!r}: choose one of {LR_DECAYS}")
    if not 0.0 <= sft.get("lr_final_fraction", 0.0) <= 1.0:
        problems.append(f"sft.lr_final_fraction={sft['lr_final_fraction']}: the last learning rate's fraction of "
                        "sft.learning_rate must be in [0, 1]")
    if sft.get("steps", 0) > 0 and sft.get("batch_size", 1) % max(sft.get("micro_batches", 1), 1):
        problems.append(f"sft.batch_size={sft['batch_size']} is not divisible by sft.micro_batches="
                        f"{sft['micro_batches']}: change one of them")
    overrides = config.get("model", {}).get("overrides", {}) or {}
    context = overrides.get("max_seq_len")
    if context is not None:
        prompt = data.get("max_prompt_tokens", 0)
        for key, extra in (("rl.max_new_tokens", rl.get("max_new_tokens", 0)),
                           ("data.max_answer_tokens", data.get("max_answer_tokens", 0))):
            if prompt + extra > context:
                problems.append(f"data.max_prompt_tokens + {key} = {prompt + extra} exceeds the model's context "
                                f"model.overrides.max_seq_len={context}: raise it or shorten the prompt/answer")
    for key, section in (("rl.steps", rl), ("sft.steps", sft)):
        if section.get("steps", 0) < 0:
            problems.append(f"{key}={section['steps']}: must be >= 0")
    reward_model = config.get("preference", {}).get("reward_model", {})
    if reward_model.get("init_critic"):
        if rl.get("algorithm") != "ppo":
            problems.append("preference.reward_model.init_critic makes PPO's critic: set rl.algorithm='ppo' "
                            "or init_critic=False")
        if reward_model.get("steps", 0) <= 0:
            problems.append("preference.reward_model.init_critic needs a trained reward model: set "
                            "preference.reward_model.steps > 0")
    data_parallel = _data_parallel(config.get("mesh", {}), problems)
    if data_parallel is not None and data_parallel > 1:
        problems += _batch_split(config, data_parallel)
    return problems


def check_config(config, defaults=None) -> None:
    """Raises `ConfigError` listing every problem of `config` (a ConfigDict or a dict).

    defaults: the config it should match key for key (e.g. `configs.base.get_config()`); keys not
    there are reported as unknown and values of another type as wrong. Without it only the
    consistency of the settings is checked.
    """
    config = _as_dict(config)
    problems: list[str] = []
    if defaults is not None:
        _compare(config, _as_dict(defaults), "", problems)
    if not problems:  # consistency checks read the values, so only once the types are right
        problems = _consistency(config)
    if problems:
        raise ConfigError("invalid config:\n  " + "\n  ".join(problems))
