"""Typed config sections: what each stage reads, each section validated once.

Config files stay ml_collections ConfigDicts (`configs/*.py`, `--config.a.b=value` overrides);
`experiment_config(config)` turns one into an `ExperimentConfig` of frozen dataclasses, or raises
`ConfigError` listing every problem at once, one line each, naming the key and the fix:
  - unknown keys, with the closest valid name, and keys that moved, with their new name;
  - values of the wrong type;
  - values out of range: every field declares its range (`field(default, check)`);
  - settings that cannot work together (each section's `problems`, then the experiment's).
Nothing is built before this check passes. The dataclass defaults are the defaults of every
experiment (`configs/base.py` is `as_config_dict(ExperimentConfig())`), so schema and defaults
live in one place. Each stage receives its own section (SFT `SFTConfig`, RL `RLConfig`, ...).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Mapping
from typing import Any, Callable, Union

from rljax.losses import AGG_MODES, KL_KINDS
from rljax.losses import registry

LR_DECAYS = ("constant", "cosine", "linear")
Check = Callable[[Any], "str | None"]


class ConfigError(ValueError):
    """One line per problem, each naming the key and the fix."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("invalid config:\n  " + "\n  ".join(self.problems))


# -- ranges ----------------------------------------------------------------------------------------
def at_least(low) -> Check:
    return lambda v: None if v >= low else f"must be >= {low}"


def positive(v) -> str | None:
    return None if v > 0 else "must be > 0"


def fraction(v) -> str | None:
    return None if 0 <= v <= 1 else "must be in [0, 1]"


def open_fraction(v) -> str | None:
    return None if 0 < v <= 1 else "must be in (0, 1]"


def below_one(v) -> str | None:
    return None if 0 <= v < 1 else "must be in [0, 1)"


def one_of(*choices) -> Check:
    return lambda v: None if v in choices else f"choose one of {', '.join(map(repr, choices))}"


COUNT, NONNEGATIVE = at_least(1), at_least(0)


def field(default, check: Check | None = None):
    """A config field: its default and the range its values must lie in (checked when set)."""
    if dataclasses.is_dataclass(default) or isinstance(default, dict):
        return dataclasses.field(default_factory=lambda: _copy(default), metadata={"check": check})
    return dataclasses.field(default=default, metadata={"check": check})


def _copy(default):
    return dataclasses.replace(default) if dataclasses.is_dataclass(default) else dict(default)


# -- sections -------------------------------------------------------------------------------------
class Section:
    """A config section: a frozen dataclass of fields (`field`), each with its range. `problems`
    lists the settings of the section that cannot work together (none by default)."""

    def problems(self, key: str) -> list[str]:
        return []


@dataclasses.dataclass(frozen=True)
class OptimConfig(Section):
    """AdamW (Loshchilov & Hutter 2019) behind global-norm clipping, warmup then decay to
    `lr_final_fraction` of the rate at the last step (`rljax.train.optim.make_optimizer`)."""

    learning_rate: float = field(1e-5, positive)
    warmup_steps: int = field(0, NONNEGATIVE)
    lr_decay: str = field("constant", one_of(*LR_DECAYS))
    lr_final_fraction: float = field(0.0, fraction)
    weight_decay: float = field(0.0, NONNEGATIVE)
    clip_norm: float | None = field(1.0, positive)
    b1: float = field(0.9, below_one)
    b2: float = field(0.999, below_one)
    eps: float = field(1e-8, positive)


    def make(self, total_steps: int):
        from rljax.train.optim import make_optimizer

        return make_optimizer(self.learning_rate, total_steps=total_steps, warmup_steps=self.warmup_steps,
                              decay=self.lr_decay, final_fraction=self.lr_final_fraction,
                              weight_decay=self.weight_decay, b1=self.b1, b2=self.b2, eps=self.eps,
                              clip_norm=self.clip_norm)


@dataclasses.dataclass(frozen=True)
class SamplingConfig(Section):
    """How rollouts sample (`rljax.generate.generate`); temperature 0 is greedy."""

    max_new_tokens: int = field(16, COUNT)
    temperature: float = field(1.0, NONNEGATIVE)
    top_p: float = field(1.0, open_fraction)
    top_k: int = field(0, NONNEGATIVE)


@dataclasses.dataclass(frozen=True)
class KLConfig(Section):
    """A KL penalty toward the frozen reference π_ref: in the reward (Ziegler et al. 2019),
    in the loss (Shao et al. 2024) or none; `estimator` one of Schulman's (`losses.kl_estimate`)."""

    placement: str = field("none", one_of(*registry.KL_PLACEMENTS))
    estimator: str = field("k3", one_of(*KL_KINDS))
    coef: float = field(0.0, NONNEGATIVE)

    @property
    def active(self) -> bool:
        return self.placement != "none" and self.coef > 0

    def problems(self, key: str) -> list[str]:
        if self.placement == "none" and self.coef > 0:
            return [f"{key}.coef={self.coef} with {key}.placement='none': set {key}.placement to 'reward' or "
                    "'loss', or the coefficient to 0"]
        if self.placement != "none" and self.coef == 0:
            return [f"{key}.placement={self.placement!r} with {key}.coef=0: give the coefficient, or set "
                    f"{key}.placement='none'"]
        return []


@dataclasses.dataclass(frozen=True)
class RLConfig(Section):
    """The RL stage: each iteration samples `prompts_per_step` × `group_size` completions, scores
    them, and updates the policy `epochs` × `minibatches` times (`rljax.train.learner`).
    Defaults are GRPO's (Shao et al. 2024) without a KL; see `rljax.losses.registry`."""

    advantage: str = field("grpo", one_of(*registry.ADVANTAGES))
    surrogate: str = field("ppo", one_of(*registry.SURROGATES))
    # Hyperparameters of the two rows above (their keyword arguments; defaults are the paper's).
    advantage_hparams: dict = field({})
    surrogate_hparams: dict = field({})
    kl: KLConfig = field(KLConfig())
    steps: int = field(100, NONNEGATIVE)
    prompts_per_step: int = field(16, COUNT)  # P
    group_size: int = field(8, COUNT)  # G
    sampling: SamplingConfig = field(SamplingConfig())
    optim: OptimConfig = field(OptimConfig())
    epochs: int = field(1, COUNT)
    minibatches: int = field(1, COUNT)
    micro_batches: int = field(1, COUNT)
    agg: str = field("seq-mean-token-mean", one_of(*AGG_MODES))
    entropy_coef: float = field(0.0, NONNEGATIVE)
    # The critic's loss (advantages that need one, e.g. "gae"): weight and PPO's value clip.
    value_coef: float = field(0.5, NONNEGATIVE)
    value_clip: float | None = field(0.2, positive)
    # π_old: "trainer" (the learner's own forward pass) or "sampler" (the rollout's log-probs).
    old_logp: str = field("trainer", one_of("trainer", "sampler"))
    # Sampler/trainer importance correction (`losses.importance_weights`): "truncate" or "mask".
    is_correction: str | None = field(None, one_of("truncate", "mask"))
    dynamic_sampling: bool = field(False)  # DAPO: refill groups whose rewards all tie
    max_sampling_rounds: int = field(3, COUNT)
    # A learned reward: minus each group's mean (a Bradley-Terry reward is identified only up to
    # a constant per prompt); False leaves that constant to a critic.
    center_learned_reward: bool = field(True)

    @property
    def rows(self) -> int:
        return self.prompts_per_step * self.group_size

    @property
    def updates_per_rollout(self) -> int:
        return self.epochs * self.minibatches

    def problems(self, key: str) -> list[str]:
        problems = registry.check_hparams("advantage", self.advantage, self.advantage_hparams,
                                          f"{key}.advantage_hparams")
        problems += registry.check_hparams("surrogate", self.surrogate, self.surrogate_hparams,
                                           f"{key}.surrogate_hparams")
        row = registry.advantage(self.advantage)
        if self.group_size < row.min_group:
            problems.append(f"{key}.group_size={self.group_size}: the {self.advantage} advantage compares "
                            f"samples of a group, so it needs {key}.group_size >= {row.min_group}")
        parts = self.minibatches * self.micro_batches
        if self.rows % parts:
            problems.append(f"{key}.prompts_per_step * {key}.group_size = {self.rows} must be divisible by "
                            f"{key}.minibatches * {key}.micro_batches = {parts}")
        if self.is_correction is not None and self.old_logp != "trainer":
            problems.append(f"{key}.is_correction compares trainer and sampler log-probs: set "
                            f"{key}.old_logp='trainer'")
        return problems


@dataclasses.dataclass(frozen=True)
class SFTConfig(Section):
    """The supervised warm start: masked NLL of (prompt, answer + EOS) pairs of the train split."""

    steps: int = field(300, NONNEGATIVE)
    batch_size: int = field(64, COUNT)
    micro_batches: int = field(1, COUNT)
    optim: OptimConfig = field(OptimConfig(learning_rate=3e-3, warmup_steps=30, lr_decay="cosine"))

    def problems(self, key: str) -> list[str]:
        if self.batch_size % self.micro_batches:
            return [f"{key}.batch_size={self.batch_size} is not divisible by {key}.micro_batches="
                    f"{self.micro_batches}: change one of them"]
        return []


@dataclasses.dataclass(frozen=True)
class PairsConfig(Section):
    """Preference pairs: sampled from the policy on training prompts ("task"), or a JSONL file."""

    source: str = field("task", one_of("task", "jsonl"))
    path: str = field("")
    prompts: int = field(3000, COUNT)
    samples_per_prompt: int = field(8, at_least(2))
    pairs_per_prompt: int = field(1, COUNT)
    max_new_tokens: int = field(6, COUNT)
    temperature: float = field(1.0, positive)
    test_size: int = field(200, COUNT)

    def problems(self, key: str) -> list[str]:
        if self.source == "jsonl" and not self.path:
            return [f"{key}.source='jsonl' needs {key}.path: the preference JSONL file"]
        return []


@dataclasses.dataclass(frozen=True)
class PreferencePolicyConfig(Section):
    """Offline preference optimisation of the policy (`rljax.train.preference`); steps 0: off."""

    loss: str = field("dpo", one_of("dpo", "ipo", "kto", "simpo", "orpo"))
    steps: int = field(0, NONNEGATIVE)
    batch_size: int = field(64, COUNT)
    micro_batches: int = field(1, COUNT)
    hparams: dict = field({})
    optim: OptimConfig = field(OptimConfig(learning_rate=3e-4, warmup_steps=10, lr_decay="cosine"))

    def problems(self, key: str) -> list[str]:
        if self.steps and self.batch_size % self.micro_batches:
            return [f"{key}.batch_size={self.batch_size} is not divisible by {key}.micro_batches="
                    f"{self.micro_batches}"]
        return []


@dataclasses.dataclass(frozen=True)
class RewardModelConfig(Section):
    """A Bradley-Terry reward model (`rljax.train.reward_model`); steps 0: off. use_in_rl makes
    it the RL reward; init_critic makes a copy of it PPO's critic (InstructGPT)."""

    steps: int = field(0, NONNEGATIVE)
    batch_size: int = field(64, COUNT)
    micro_batches: int = field(1, COUNT)
    eval_every: int = field(50, NONNEGATIVE)
    use_in_rl: bool = field(False)
    init_critic: bool = field(False)
    hparams: dict = field({})
    optim: OptimConfig = field(OptimConfig(learning_rate=3e-4, warmup_steps=10, lr_decay="cosine"))

    def problems(self, key: str) -> list[str]:
        problems = []
        if self.steps and self.batch_size % self.micro_batches:
            problems.append(f"{key}.batch_size={self.batch_size} is not divisible by {key}.micro_batches="
                            f"{self.micro_batches}")
        for flag in ("use_in_rl", "init_critic"):
            if getattr(self, flag) and self.steps == 0:
                problems.append(f"{key}.{flag} needs a trained reward model: set {key}.steps > 0")
        return problems


@dataclasses.dataclass(frozen=True)
class PreferenceConfig(Section):
    """The preference stages after the SFT warm start: pairs, then the policy and/or a reward model."""

    pairs: PairsConfig = field(PairsConfig())
    policy: PreferencePolicyConfig = field(PreferencePolicyConfig())
    reward_model: RewardModelConfig = field(RewardModelConfig())


@dataclasses.dataclass(frozen=True)
class TaskConfig(Section):
    """The task dataset (`rljax.data.load_task`): its knobs, and how prompts are written. The
    last `validation_size` examples of the train split are held out as the validation split:
    evaluations during training and sweeps read it; the test split is read once, at the end."""

    name: str = field("arithmetic")
    knobs: dict = field(dict(num_operands=2, digits=2, operators="+-", train_size=12_000, test_size=500))
    data_dir: str | None = field(None)  # default: $RLJAX_DATA_DIR or ~/.cache/rljax/tfds
    # "plain" (from-scratch models), "chat" (the question and the answer format's instruction
    # through the chat template) or "chat_question" (the question alone as the user's message).
    prompt: str = field("plain", one_of("plain", "chat", "chat_question"))
    answer_format: str = field("plain", one_of("plain", "hash", "boxed", "answer_tag", "code_block"))
    validation_size: int = field(200, NONNEGATIVE)

    def problems(self, key: str) -> list[str]:
        from rljax.data.tasks import TASKS

        if self.name not in TASKS:
            return [f"{key}.name={self.name!r}: choose one of {sorted(TASKS)}"]
        return []


@dataclasses.dataclass(frozen=True)
class DataConfig(Section):
    """Token budgets: prompts are left-padded to max_prompt_tokens (a longer one is refused);
    SFT answers take at most max_answer_tokens."""

    max_prompt_tokens: int = field(24, COUNT)
    max_answer_tokens: int = field(6, COUNT)


@dataclasses.dataclass(frozen=True)
class TokenizerConfig(Section):
    """A SentencePiece tokenizer trained on the task (from-scratch models), or the GGUF's own."""

    kind: str = field("sentencepiece", one_of("sentencepiece", "gguf"))
    vocab_size: int = field(300, at_least(8))
    # Other `SentencePieceTrainer` options, e.g. split_by_whitespace=False for pieces that span
    # words (a long fixed system prompt then takes few tokens).
    options: dict = field({})


@dataclasses.dataclass(frozen=True)
class LoraSection(Section):
    """LoRA adapters on the policy (`rljax.models.lora`): rank 0 trains the whole model; rank
    r > 0 trains adapters of rank r and scale alpha/r on the `targets` projections only, the
    base frozen (and the KL's reference). `base_dtype` stores the frozen base in that dtype."""

    rank: int = field(0, NONNEGATIVE)
    alpha: float = field(16.0, positive)
    targets: tuple = field(("q", "k", "v", "o", "gate", "up", "down"))
    base_dtype: str | None = field(None, one_of("float32", "bfloat16"))

    def problems(self, key: str) -> list[str]:
        from rljax.models.config import LORA_TARGETS

        unknown = [t for t in self.targets if t not in LORA_TARGETS]
        problems = [f"{key}.targets: {', '.join(map(repr, unknown))} not projections of the model; choose from "
                    f"{', '.join(LORA_TARGETS)}"] if unknown else []
        if self.rank and not self.targets:
            problems.append(f"{key}.targets is empty: name the projections the adapters sit on")
        return problems


@dataclasses.dataclass(frozen=True)
class ModelSection(Section):
    """The policy: a preset from scratch, or a pretrained GGUF / Hugging Face checkpoint;
    `overrides` are ModelConfig fields."""

    source: str = field("scratch", one_of("scratch", "gguf", "hf"))
    preset: str = field("tiny")
    path: str = field("")
    overrides: dict = field(dict(d_model=128, n_layers=4, n_heads=4, n_kv_heads=2, head_dim=32, mlp_dim=384,
                                 max_seq_len=64))
    lora: LoraSection = field(LoraSection())

    def problems(self, key: str) -> list[str]:
        from rljax.models.config import PRESETS, ModelConfig

        problems = []
        if self.source == "scratch" and self.preset not in PRESETS:
            problems.append(f"{key}.preset={self.preset!r}: choose one of {sorted(PRESETS)}")
        if self.source == "hf" and not self.path:
            problems.append(f"{key}.source='hf' needs {key}.path: a Hugging Face checkpoint directory")
        fields = {f.name for f in dataclasses.fields(ModelConfig)}
        problems += [f"{key}.overrides.{name}: not a ModelConfig field{_suggest(name, fields)}"
                     for name in self.overrides if name not in fields]
        return problems


@dataclasses.dataclass(frozen=True)
class EvalConfig(Section):
    """Greedy evaluation: on the validation split every `every` RL iterations (0: only at the
    start and end), and once on `num_examples` of the test split at the end (`final_test`)."""

    every: int = field(10, NONNEGATIVE)
    num_examples: int = field(200, COUNT)
    batch_size: int = field(100, COUNT)
    final_test: bool = field(True)


@dataclasses.dataclass(frozen=True)
class CheckpointConfig(Section):
    """Orbax checkpoints of every stage: every `every` iterations (and at the end), the last `keep`."""

    every: int = field(50, COUNT)
    keep: int = field(2, COUNT)


@dataclasses.dataclass(frozen=True)
class FaultsConfig(Section):
    # A step with a non-finite loss or gradient is skipped; this many in a row stop the run.
    max_consecutive_nonfinite: int = field(5, COUNT)


@dataclasses.dataclass(frozen=True)
class LogConfig(Section):
    """TensorBoard event files and a progress bar, beside metrics.jsonl (always written)."""

    tensorboard: bool = field(True)
    progress: bool = field(True)


@dataclasses.dataclass(frozen=True)
class MeshConfig(Section):
    """Devices (`rljax.sharding.make_mesh`): batches split over data × fsdp, params sharded over
    fsdp and tensor. All 1 is one device; any other mesh uses every device (one axis may be -1:
    the devices the others leave)."""

    data: int = field(1)
    fsdp: int = field(1)
    tensor: int = field(1)

    @property
    def one_device(self) -> bool:
        return (self.data, self.fsdp, self.tensor) == (1, 1, 1)


@dataclasses.dataclass(frozen=True)
class EnvSection(Section):
    """Multi-turn RL against environments (`rljax.envs`), one per task example: `name` among
    `rljax.envs.games.ENVIRONMENTS`, with `tools` (tool_qa: names in `rljax.envs.games.TOOLS`),
    at most `max_turns` policy turns of at most rl.sampling.max_new_tokens tokens, and
    `max_total_tokens` for a whole conversation. `knobs` are the environment's own arguments.
    The SFT warm start imitates the scripted expert (`rljax.envs.games.demonstration`)."""

    name: str = field("tool_qa")
    tools: tuple = field(())
    max_turns: int = field(3, COUNT)
    max_total_tokens: int = field(256, at_least(2))
    knobs: dict = field({})

    def problems(self, key: str) -> list[str]:
        from rljax.envs.games import ENVIRONMENTS, TOOLS

        problems = []
        if self.name not in ENVIRONMENTS:
            problems.append(f"{key}.name={self.name!r}: choose one of {sorted(ENVIRONMENTS)}")
        unknown = [t for t in self.tools if t not in TOOLS]
        if unknown:
            problems.append(f"{key}.tools: {unknown} are not tools; choose from {sorted(TOOLS)}")
        return problems


@dataclasses.dataclass(frozen=True)
class ExperimentConfig(Section):
    """A whole run (`rljax.train.experiment.run`): data, model, the stages and their plumbing."""

    seed: int = field(0, NONNEGATIVE)
    task: TaskConfig = field(TaskConfig())
    data: DataConfig = field(DataConfig())
    tokenizer: TokenizerConfig = field(TokenizerConfig())
    model: ModelSection = field(ModelSection())
    sft: SFTConfig = field(SFTConfig())
    rl: RLConfig = field(RLConfig())
    eval: EvalConfig = field(EvalConfig())
    checkpoint: CheckpointConfig = field(CheckpointConfig())
    faults: FaultsConfig = field(FaultsConfig())
    log: LogConfig = field(LogConfig())
    mesh: MeshConfig = field(MeshConfig())
    # Write <workdir>/export/ at the end: a Hugging Face model directory (`rljax.train.export`).
    export: bool = field(False)
    preference: PreferenceConfig | None = field(None)  # only the configs with preference stages
    env: EnvSection | None = field(None)  # only the multi-turn configs

    def problems(self, key: str = "") -> list[str]:
        """The checks across sections (each section has checked itself); the mesh is checked
        against the devices by `experiment_config` (`mesh_problems`)."""
        problems = []
        context = self.model.overrides.get("max_seq_len")
        prompt = self.data.max_prompt_tokens
        for name, extra in (("rl.sampling.max_new_tokens", self.rl.sampling.max_new_tokens),
                            ("data.max_answer_tokens", self.data.max_answer_tokens)):
            if context is not None and prompt + extra > context:
                problems.append(f"data.max_prompt_tokens + {name} = {prompt + extra} exceeds the model's context "
                                f"model.overrides.max_seq_len={context}: raise it or shorten the prompt/answer")
        if self.env is not None:
            problems += self._env_problems(context)
        critic = registry.advantage(self.rl.advantage).needs_critic
        reward_model = self.preference.reward_model if self.preference is not None else None
        if reward_model is not None and reward_model.init_critic and not critic:
            problems.append("preference.reward_model.init_critic makes the critic of an advantage that needs "
                            f"one (rl.advantage='gae'), but rl.advantage={self.rl.advantage!r}")
        if critic and self.rl.steps and not self.model.overrides.get("value_head") and not (
                reward_model is not None and reward_model.init_critic):
            problems.append(f"rl.advantage={self.rl.advantage!r} needs a critic: set model.overrides.value_head=True "
                            "(a value head on the policy's trunk) or preference.reward_model.init_critic=True")
        if self.export and self.tokenizer.kind != "gguf":
            problems.append("export=True writes a Hugging Face tokenizer, which needs tokenizer.kind='gguf' (a "
                            "pretrained model's own)")
        if self.model.lora.rank and (self.sft.steps or (self.preference is not None and (
                self.preference.policy.steps or self.preference.reward_model.steps))):
            problems.append("model.lora.rank > 0 adapts the RL stage only: set sft.steps=0 and no preference stages, "
                            "or model.lora.rank=0")
        return problems

    def _env_problems(self, context: int | None) -> list[str]:
        env, problems = self.env, []
        if context is not None and env.max_total_tokens > context:
            problems.append(f"env.max_total_tokens={env.max_total_tokens} exceeds the model's context "
                            f"model.overrides.max_seq_len={context}")
        if self.preference is not None:
            problems.append("env (multi-turn RL) has no preference stages: drop the preference section")
        if self.rl.dynamic_sampling:
            problems.append("rl.dynamic_sampling is for single-turn runs; set it False with env")
        if registry.advantage(self.rl.advantage).needs_baseline:
            problems.append(f"rl.advantage={self.rl.advantage!r} needs a greedy baseline rollout, which env runs do "
                            "not make; choose another advantage")
        return problems


def mesh_problems(config: ExperimentConfig, n_devices: int | None = None) -> list[str]:
    """The mesh must use every device (`n_devices`, default every device of every process; an
    ahead-of-time compile passes its topology's), and every batch a step or the evaluation splits
    over the data-parallel devices must divide evenly (else part of it is replicated)."""
    from rljax import sharding

    mesh = config.mesh
    if mesh.one_device:  # this process's first device alone, whatever the device count
        return []
    sizes, problems = sharding.resolve_mesh_axes(mesh.data, mesh.fsdp, mesh.tensor, n_devices=n_devices,
                                                 names="mesh.")
    if sizes is None:
        return problems
    data_parallel = sizes["data"] * sizes["fsdp"]
    split = f"mesh.data * mesh.fsdp = {data_parallel}"
    rl, sft = config.rl, config.sft
    batches = []  # (what, rows per micro-batch)
    if rl.steps:
        batches.append(("rl.prompts_per_step * rl.group_size / (rl.minibatches * rl.micro_batches)",
                        rl.rows // (rl.minibatches * rl.micro_batches)))
    if sft.steps:
        batches.append(("sft.batch_size / sft.micro_batches", sft.batch_size // sft.micro_batches))
    batches.append(("eval.batch_size", config.eval.batch_size))
    problems += [f"{what} = {rows} rows are not divisible by {split}: change the batch or the mesh"
                 for what, rows in batches if rows % data_parallel]
    return problems


# -- reading a config ------------------------------------------------------------------------------
# Keys of earlier versions, and where each went (a config or override naming one gets this line).
MOVED = {
    "rl.algorithm": "removed: name the pieces instead; PPO is rl.advantage='gae' with a critic "
                    "(model.overrides.value_head=True), anything else is critic-free",
    "rl.estimator": "renamed rl.advantage",
    "rl.policy_loss": "renamed rl.surrogate; the old 'grpo' is rl.surrogate='ppo' with "
                      "rl.kl.placement='loss'",
    "rl.beta": "moved to rl.kl.coef (with rl.kl.placement 'reward' or 'loss')",
    "rl.kl_estimator": "moved to rl.kl.estimator",
    "rl.kl_in_reward": "replaced by rl.kl.placement='reward' (or 'loss')",
    "rl.clip_eps": "moved to rl.surrogate_hparams.clip_eps",
    "rl.clip_eps_high": "moved to rl.surrogate_hparams.clip_eps_high",
    "rl.gamma": "moved to rl.advantage_hparams.gamma (advantage 'gae')",
    "rl.lam": "moved to rl.advantage_hparams.lam (advantage 'gae')",
    "rl.whiten_advantages": "moved to rl.advantage_hparams.whiten_advantages (advantage 'gae')",
    **{f"{stage}.{key}": f"moved to {stage}.optim.{key}"
       for stage in ("rl", "sft", "preference.policy", "preference.reward_model")
       for key in ("learning_rate", "warmup_steps", "lr_decay", "lr_final_fraction", "weight_decay", "clip_norm")},
    **{f"rl.{key}": f"moved to rl.sampling.{key}" for key in ("max_new_tokens", "temperature", "top_p")},
}


def _suggest(name: str, known) -> str:
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _leaf_paths(cls, prefix: str) -> dict[str, str]:
    """Every key under section `cls`, by its last name: {name: dotted path}."""
    paths = {}
    for f in dataclasses.fields(cls):
        section = next((t for t in _allowed_types(typing.get_type_hints(cls)[f.name]) if dataclasses.is_dataclass(t)),
                       None)
        if section is not None:
            paths.update(_leaf_paths(section, f"{prefix}{f.name}."))
        paths.setdefault(f.name, prefix + f.name)
    return paths


def _unknown_key(cls, name: str, prefix: str) -> str:
    """What to say of key `name` that section `cls` (at `prefix`) does not have: the closest key
    anywhere under it (a typo, or a key one section down), else the section's keys."""
    paths = _leaf_paths(cls, prefix)
    close = difflib.get_close_matches(name, list(paths), n=1, cutoff=0.6)
    if close:
        return f"unknown key (did you mean {paths[close[0]]}?)"
    return f"unknown key; the keys here are {', '.join(f.name for f in dataclasses.fields(cls))}"


def _allowed_types(hint) -> tuple:
    if typing.get_origin(hint) in (Union, types.UnionType):
        return typing.get_args(hint)
    return (hint,)


def _type_ok(value, allowed) -> bool:
    for t in allowed:
        if t is type(None) and value is None:
            return True
        if t is bool and isinstance(value, bool):
            return True
        if t is int and isinstance(value, int) and not isinstance(value, bool):
            return True
        if t is float and isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return True
        if t in (str, dict) and isinstance(value, Mapping if t is dict else str):
            return True
        if t is tuple and isinstance(value, (list, tuple)):
            return True
    return False


def _type_name(allowed) -> str:
    return " or ".join("None" if t is type(None) else t.__name__ for t in allowed)


def parse_section(cls, values: Mapping, key: str, problems: list[str]):
    """An instance of section `cls` from `values`, appending what is wrong to `problems` (keys
    prefixed by `key`); None when a value could not be used."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    prefix = f"{key}." if key else ""
    for name in values:
        if name not in fields:
            path = prefix + name
            problems.append(f"{path}: {MOVED.get(path) or _unknown_key(cls, name, prefix)}")
    kwargs, ok = {}, True
    for name, f in fields.items():
        if name not in values:
            continue
        value, path, allowed = values[name], prefix + name, _allowed_types(hints[name])
        section = next((t for t in allowed if dataclasses.is_dataclass(t)), None)
        if section is not None and value is not None:
            if not isinstance(value, Mapping):
                problems.append(f"{path}={value!r}: expected a section with keys "
                                f"{', '.join(x.name for x in dataclasses.fields(section))}")
                ok = False
                continue
            parsed = parse_section(section, value, path, problems)
            ok &= parsed is not None
            kwargs[name] = parsed
            continue
        if not _type_ok(value, allowed):
            problems.append(f"{path}={value!r} is a {type(value).__name__}, expected {_type_name(allowed)}")
            ok = False
            continue
        if float in allowed and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if isinstance(value, Mapping):
            value = dict(value)
        if isinstance(value, list):
            value = tuple(value)
        check = f.metadata.get("check")
        if check is not None and value is not None and (problem := check(value)) is not None:
            problems.append(f"{path}={value!r}: {problem}")
            ok = False
        kwargs[name] = value
    if not ok:
        return None
    section = cls(**kwargs)
    problems += section.problems(key)
    return section


def _plain(config) -> dict:
    return config.to_dict() if hasattr(config, "to_dict") else dict(config)


def experiment_config(config, n_devices: int | None = None) -> ExperimentConfig:
    """The typed config of a ConfigDict or dict; raises `ConfigError` with every problem. The mesh
    must use `n_devices` (default: every device of every process; `mesh_problems`)."""
    problems: list[str] = []
    parsed = parse_section(ExperimentConfig, _plain(config), "", problems)
    if parsed is not None:
        problems += mesh_problems(parsed, n_devices)
    if problems:
        raise ConfigError(problems)
    return parsed


def as_dict(section) -> dict:
    """A section (or the whole config) as nested plain dicts, e.g. for a ConfigDict or JSON."""
    return dataclasses.asdict(section)


def as_config_dict(section):
    """A section as an ml_collections ConfigDict (what config files start from)."""
    import ml_collections

    return ml_collections.ConfigDict(as_dict(section))


# -- config files and command-line overrides ------------------------------------------------------
def load_config_file(path: str) -> dict:
    """`get_config()` of the Python config file at `path`, as nested plain dicts. Configs import
    each other as `configs.X`, so the directory above the file's is put on sys.path."""
    import importlib.util
    import os
    import sys

    path = os.path.abspath(path)
    if not os.path.isfile(path):
        raise ConfigError([f"--config={path}: no such config file"])
    root = os.path.dirname(os.path.dirname(path))
    if root not in sys.path:
        sys.path.insert(0, root)
    spec = importlib.util.spec_from_file_location(os.path.splitext(os.path.basename(path))[0], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return _plain(module.get_config())


def parse_value(text: str):
    """A command-line value: a Python literal (10, 1e-3, True, None, "a", (1, 2)), else the text
    itself; `true`/`false` are booleans too."""
    import ast

    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def apply_overrides(config: dict, overrides) -> dict:
    """`config` (nested dicts) with `key.path=value` overrides applied, creating keys that are not
    there: whether a key exists, and whether its value is right, is `experiment_config`'s to say,
    one line per problem, so an override never fails here with a traceback."""
    config = json_copy(config)
    for override in overrides:
        path, sep, text = override.partition("=")
        if not sep or not path:
            raise ConfigError([f"{override!r}: an override is --config.<key>=<value>"])
        *sections, key = path.split(".")
        target = config
        for i, name in enumerate(sections):
            child = target.setdefault(name, {})
            if not isinstance(child, dict):
                raise ConfigError([f"{'.'.join(sections[:i + 1])}={child!r} is a value, not a section: "
                                   f"{path} cannot be set"])
            target = child
        target[key] = parse_value(text)
    return config


def json_copy(tree):
    """A deep copy of nested dicts, lists and tuples of plain values."""
    if isinstance(tree, Mapping):
        return {k: json_copy(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(json_copy(v) for v in tree)
    return tree
