"""rlpost: reinforcement-learning post-training of LLMs (the GRPO family)."""

__version__ = "0.1.0"
