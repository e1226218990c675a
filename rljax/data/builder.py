"""The machinery shared by rljax's task datasets: knob configs, one tfds builder base, dedup.

Every task is a `tfds.core.GeneratorBasedBuilder` whose examples are made in memory by one
function of its config (`TaskBuilder.make_splits`), written as ArrayRecord files and read back
with `tfds.data_source`. Without TensorFlow, this works in tensorflow-datasets 4.9.x: examples
are serialised to `tf.train.Example` bytes with the protobuf classes tfds vendors
(`tensorflow_datasets.proto.tf_example_pb2`) and parsed back with NumPy (`ExampleParserNp`), so
only features made of Text, Scalar and Tensor are used here (no images, no ragged nesting).

Three tfds details this module handles:
- `code_path` is overridden: tfds 4.9.10's own version, for a builder defined in an importable
  package, evaluates `isinstance(path, importlib_resources.abc.Traversable)`, which imports the
  `importlib_resources` backport that tfds only requires on Python < 3.9, so it fails with
  ModuleNotFoundError on newer Pythons. The module's file path is what tfds wants there (it looks
  for a checksums file beside it, which these builders do not need).
- `_info` builds `tfds.core.DatasetInfo` directly: `dataset_info_from_configs` looks for
  metadata files (checksums, README) beside the builder's module, which a builder living in a
  library module does not have.
- Knobs live in a `TaskConfig` (a `tfds.core.BuilderConfig`) whose name is a hash of the knobs,
  so every distinct setting is prepared once, into its own directory
  `data_dir/<builder>/<config hash>/<version>`, and the knobs are written into that directory's
  `dataset_info.json` (the config description).
Bump a builder's VERSION whenever its generator changes what a config produces.
"""

from __future__ import annotations

import abc
import dataclasses
import hashlib
import inspect
import json
import random
from collections.abc import Callable, Hashable, Mapping
from typing import Any, ClassVar, TypeVar

import tensorflow_datasets as tfds
from etils import epath

Example = dict[str, Any]
Problem = TypeVar("Problem")
SPLITS = ("train", "test")
# A builder whose `make_splits` also gives a "validation" split (`TaskBuilder.VALIDATION`), drawn
# apart from both, is read as its validation split instead of the tail of its train split.
VALIDATION = "validation"


@dataclasses.dataclass(eq=False)
class TaskConfig(tfds.core.BuilderConfig):
    """Knobs of a task dataset. Leave `name` empty: it is derived from the knobs.

    Subclasses add knob fields (with defaults) and may override `validate` and `fingerprint`.
    """

    name: str = ""
    seed: int = 0

    def __post_init__(self):
        self.validate()
        if not self.name:
            identity = json.dumps(self.fingerprint(), sort_keys=True)
            self.name = "cfg-" + hashlib.sha256(identity.encode()).hexdigest()[:16]
            self.description = identity

    def knobs(self) -> dict[str, Any]:
        """The task's own fields (not tfds' name/version/description...)."""
        base = {f.name for f in dataclasses.fields(tfds.core.BuilderConfig)}
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.name not in base}

    def fingerprint(self) -> dict[str, Any]:
        """What determines the data; hashed into the config name (so into the cache path)."""
        return self.knobs()

    def validate(self) -> None:
        """Raises ValueError for knob values the generator cannot honour."""


def check_positive(config: TaskConfig, *names: str) -> None:
    """Raises ValueError naming the first knob among `names` that is not a positive int."""
    for name in names:
        value = getattr(config, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{type(config).__name__}.{name} must be a positive int, "
                             f"got {value!r}")


class TaskBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Base of the task builders: common features, splits "train"/"test" from `make_splits`.

    Every example has `id` (unique across splits), `question` and `answer` (the canonical answer
    as text); `task_features` adds the task's own fields. Splits are written in the order
    `make_splits` returns them (`disable_shuffling`), so index i of a split is its i-th example.
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    CONFIG_CLASS: ClassVar[type[TaskConfig]]
    # True when `make_splits` gives a "validation" split too, sized by a `validation_size` knob.
    HAS_VALIDATION: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs):
        # tfds wants the default config among BUILDER_CONFIGS: it is CONFIG_CLASS's defaults.
        if "CONFIG_CLASS" in cls.__dict__ and "BUILDER_CONFIGS" not in cls.__dict__:
            cls.BUILDER_CONFIGS = [cls.CONFIG_CLASS()]
        super().__init_subclass__(**kwargs)

    @classmethod
    def config_for(cls, **knobs: Any) -> TaskConfig:
        """The config for `knobs` (defaults for the rest). The class's own default config object
        is returned when the knobs equal the defaults, as tfds requires."""
        try:
            config = cls.CONFIG_CLASS(**knobs)
        except TypeError as e:  # unknown knob
            known = sorted(cls.CONFIG_CLASS().knobs())
            raise TypeError(f"{cls.name}: {e}; the knobs are {known}") from e
        return next((c for c in cls.BUILDER_CONFIGS if c.name == config.name), config)

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        """The builder's source file (see the module docstring for why this is overridden)."""
        return epath.Path(inspect.getfile(cls))

    def task_features(self) -> dict[str, tfds.features.FeatureConnector]:
        """Features beyond id/question/answer."""
        return {}

    @staticmethod
    @abc.abstractmethod
    def make_splits(config: TaskConfig) -> dict[str, list[Example]]:
        """All examples of every split in `SPLITS` (and "validation" with `HAS_VALIDATION`), as
        plain Python values."""

    def _info(self) -> tfds.core.DatasetInfo:
        text = tfds.features.Text()
        features = {"id": text, "question": text, "answer": text, **self.task_features()}
        return tfds.core.DatasetInfo(builder=self, description=type(self).__doc__,
                                     features=tfds.features.FeaturesDict(features),
                                     disable_shuffling=True)

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing is downloaded
        splits = self.make_splits(self.builder_config)
        ids = [example["id"] for examples in splits.values() for example in examples]
        if len(ids) != len(set(ids)):
            raise AssertionError(f"{self.name}: example ids repeat across splits")
        return {name: self._generate_examples(examples) for name, examples in splits.items()}

    def _generate_examples(self, examples: list[Example]):
        for example in examples:
            yield example["id"], example


def unique_problems(sample: Callable[[random.Random], Problem | None],
                    key: Callable[[Problem], Hashable], sizes: Mapping[str, int], seed: int,
                    what: str) -> dict[str, list[Problem]]:
    """Draws problems from one stream seeded by `seed`, drops repeats, and fills the splits in
    the order of `sizes`.

    Splits never share a problem (equal `key`), and each is a prefix-stable function of the seed:
    with sizes {"test": m, "train": n}, the test set does not change when n does, and a larger n
    extends the training set. `sample` may return None to reject a draw. Raises ValueError when
    the knobs allow too few distinct problems (e.g. 1-digit sums asked for 10,000 examples).
    """
    rng = random.Random(seed)
    total = sum(sizes.values())
    max_draws = 100 * total + 10_000
    seen: set[Hashable] = set()
    problems: list[Problem] = []
    draws = 0
    while len(problems) < total:
        if draws == max_draws:
            raise ValueError(f"only {len(problems)} distinct {what} problems found in {max_draws} "
                             f"draws, but {total} were asked for ({dict(sizes)}): the knobs allow "
                             f"too few distinct problems; ask for fewer or widen the knobs")
        draws += 1
        problem = sample(rng)
        if problem is not None and key(problem) not in seen:
            seen.add(key(problem))
            problems.append(problem)
    out, start = {}, 0
    for split, size in sizes.items():
        out[split] = problems[start:start + size]
        start += size
    return out
