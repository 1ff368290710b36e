"""MMIE: the MultiModal Insight Engine, a functional JAX/Flax multimodal research codebase."""

__version__ = "0.1.0"
