"""`code`: seeded function-writing problems with hidden tests, for code-execution rewards.

"Write a Python function g(xs) that returns the sum of the elements of xs greater than 3." Each
problem comes from a family (integer maps, list operations, string operations) with randomly
drawn constants and function name; its reference solution is a one-line `def` (short enough
for a small from-scratch model to write) and its tests are `assert` lines on inputs drawn from
the same seeded stream, never shown in the question, always including an edge case (0, the
empty list, the empty string). Expected outputs come from the reference solution; every
problem's reference is run against its tests when the dataset is built, in this process: the
reference is our own generated code, not a model's (a model's programs only ever run in
`rljax.rewards.sandbox.run_code`'s sandbox).

Example fields: `question`, `answer` (the reference program), `tests` (assert lines),
`entry_point` (the function name).
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable

import tensorflow_datasets as tfds

from .builder import Example, TaskBuilder, TaskConfig, check_positive, unique_problems

NAMES = ("f", "g", "h", "solve", "compute", "transform")
_LETTERS = "abcdexyz"

# A family: (description, body, draw). `draw(rng)` gives the constants, which fill both
# templates (`str.format`); the question reads "that <description>", the reference is
# `def name(arg): return <body>`.
Family = tuple[str, str, Callable[[random.Random], dict]]


def _nonzero(r: random.Random, lo: int, hi: int) -> int:
    return r.choice([i for i in range(lo, hi + 1) if i])


def _range(r: random.Random) -> dict:
    lo = r.randint(-10, 5)
    return {"lo": lo, "hi": lo + r.randint(1, 12)}


INT_FAMILIES: dict[str, Family] = {
    "affine": ("returns {a} * x + {b}", "{a} * x + {b}",
               lambda r: {"a": r.randint(2, 9), "b": _nonzero(r, -9, 9)}),
    "quadratic": ("returns x * x + {b} * x + {c}", "x * x + {b} * x + {c}",
                  lambda r: {"b": r.randint(-5, 5), "c": r.randint(-9, 9)}),
    "parity": ("returns x // 2 if x is even, else {a} * x + 1",
               "x // 2 if x % 2 == 0 else {a} * x + 1", lambda r: {"a": r.randint(2, 5)}),
    "clamp": ("returns x clamped to the range [{lo}, {hi}]", "min(max(x, {lo}), {hi})", _range),
    "distance": ("returns the distance between x and {a}", "abs(x - {a})",
                 lambda r: {"a": r.randint(-9, 9)}),
    "digit_sum": ("returns the sum of the decimal digits of abs(x), plus {a}",
                  "sum(int(d) for d in str(abs(x))) + {a}", lambda r: {"a": r.randint(1, 9)}),
}


def _step(r: random.Random) -> dict:
    k = r.randint(2, 4)
    return {"k": k, "nth": {2: "second", 3: "third", 4: "fourth"}[k]}


LIST_FAMILIES: dict[str, Family] = {
    "sum_above": ("returns the sum of the elements of xs greater than {t}",
                  "sum(v for v in xs if v > {t})", lambda r: {"t": r.randint(-3, 10)}),
    "scale": ("returns a list of the elements of xs multiplied by {k}", "[v * {k} for v in xs]",
              lambda r: {"k": r.randint(2, 9)}),
    "count_divisible": ("returns how many elements of xs are divisible by {k}",
                        "sum(1 for v in xs if v % {k} == 0)", lambda r: {"k": r.randint(2, 6)}),
    "below": ("returns the elements of xs that are less than {t}, in order",
              "[v for v in xs if v < {t}]", lambda r: {"t": r.randint(-3, 10)}),
    "max_or": ("returns the largest element of xs plus {k}, or {d} if xs is empty",
               "max(xs) + {k} if xs else {d}",
               lambda r: {"k": r.randint(1, 9), "d": r.randint(-9, 0)}),
    "every_kth": ("returns every {nth} element of xs, starting with the first", "xs[::{k}]",
                  _step),
    "last_k": ("returns the last {k} elements of xs (all of them if there are fewer)",
               "xs[-{k}:]", lambda r: {"k": r.randint(1, 4)}),
}

STR_FAMILIES: dict[str, Family] = {
    "repeat": ("returns s repeated {k} times", "s * {k}", lambda r: {"k": r.randint(2, 4)}),
    "count_letter": ("returns the number of times the letter {c!r} appears in s",
                     "s.count({c!r})", lambda r: {"c": r.choice(_LETTERS)}),
    "remove_letter": ("returns s with every {c!r} removed", "s.replace({c!r}, '')",
                      lambda r: {"c": r.choice(_LETTERS)}),
    "suffix": ("returns s followed by {w!r}", "s + {w!r}",
               lambda r: {"w": "".join(r.choices(_LETTERS, k=r.randint(1, 3)))}),
    "upper_prefix": ("returns s with its first {k} characters in upper case",
                     "s[:{k}].upper() + s[{k}:]", lambda r: {"k": r.randint(1, 3)}),
    "replace_letter": ("returns s with every {a!r} replaced by {b!r}", "s.replace({a!r}, {b!r})",
                       lambda r: dict(zip("ab", r.sample(_LETTERS, 2)))),
    "scaled_length": ("returns {k} times the length of s", "{k} * len(s)",
                      lambda r: {"k": r.randint(2, 9)}),
}


def _int_input(r: random.Random):
    return r.randint(-30, 30)


def _list_input(r: random.Random):
    return [r.randint(-9, 20) for _ in range(r.randint(1, 7))]


def _str_input(r: random.Random):
    return "".join(r.choices(_LETTERS, k=r.randint(1, 9)))


# group -> (argument name, the families, an input sampler, the edge-case input)
GROUPS = {"int": ("x", INT_FAMILIES, _int_input, 0),
          "list": ("xs", LIST_FAMILIES, _list_input, []),
          "str": ("s", STR_FAMILIES, _str_input, "")}


@dataclasses.dataclass(eq=False)
class CodeConfig(TaskConfig):
    """groups: comma-separated problem groups among "int", "list", "str"; num_tests: asserts
    per problem (the first on the edge-case input); train_size/test_size: examples per split;
    seed."""

    groups: str = "int,list,str"
    num_tests: int = 5
    train_size: int = 5_000
    test_size: int = 200

    def validate(self):
        check_positive(self, "num_tests", "train_size", "test_size")
        names = self.groups.split(",") if isinstance(self.groups, str) else None
        if not names or not set(names) <= set(GROUPS) or len(set(names)) != len(names):
            raise ValueError(f"CodeConfig.groups must be distinct comma-separated names among "
                             f"{sorted(GROUPS)}, got {self.groups!r}")


def sample_problem(rng: random.Random, config: CodeConfig) -> dict[str, str]:
    """One problem: question, reference program, tests (assert lines), entry point."""
    arg, families, draw_input, edge = GROUPS[rng.choice(config.groups.split(","))]
    description, body, draw = rng.choice(list(families.values()))
    constants = draw(rng)
    name = rng.choice(NAMES)
    program = f"def {name}({arg}): return {body.format(**constants)}"
    namespace: dict = {}
    exec(program, namespace)  # our own generated one-liner (see the module docstring)
    inputs = [edge]
    while len(inputs) < config.num_tests:
        value = draw_input(rng)
        if value not in inputs:
            inputs.append(value)
    tests = "\n".join(f"assert {name}({value!r}) == {namespace[name](value)!r}"
                      for value in inputs)
    return {"question": f"Write a Python function {name}({arg}) that "
                        f"{description.format(**constants)}.",
            "answer": program, "tests": tests, "entry_point": name}


def _check(problem: dict[str, str]) -> None:
    namespace: dict = {}
    try:
        exec(problem["answer"] + "\n" + problem["tests"], namespace)
    except Exception as e:
        raise AssertionError(f"reference {problem['answer']!r} fails its tests: {e!r}") from e


class CodeBuilder(TaskBuilder):
    """Function-writing problems with hidden assert tests, deterministic for a seed; the train
    and test splits share no question."""

    name = "rljax_code"
    CONFIG_CLASS = CodeConfig

    def task_features(self):
        return {"tests": tfds.features.Text(), "entry_point": tfds.features.Text()}

    @staticmethod
    def make_splits(config: CodeConfig) -> dict[str, list[Example]]:
        splits = unique_problems(lambda rng: sample_problem(rng, config),
                                 key=lambda p: p["question"],
                                 sizes={"test": config.test_size, "train": config.train_size},
                                 seed=config.seed, what="code")
        out = {}
        for split, problems in splits.items():
            for problem in problems:
                _check(problem)
            out[split] = [{"id": f"code-{split}-{i:06d}", **problem}
                          for i, problem in enumerate(problems)]
        return out

