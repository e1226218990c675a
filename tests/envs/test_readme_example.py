"""README's custom environment runs as written, on the real SmolLM2-135M-Instruct."""

import pathlib
import re

import numpy as np

README = pathlib.Path(__file__).resolve().parents[2] / "README.md"


def test_the_readme_environment_example_runs():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.DOTALL)
    (example,) = [b for b in blocks if "class Countdown(envs.Env)" in b]
    namespace: dict = {}
    exec(compile(example, "README.md", "exec"), namespace)
    traj = namespace["traj"]
    assert traj.tokens.shape == (2, 256) and traj.loss_mask.sum() > 0
    assert np.all((traj.num_turns >= 1) & (traj.num_turns <= 4))
    assert np.all(traj.rewards <= traj.num_turns) and np.all(traj.logprobs[~traj.loss_mask] == 0)
