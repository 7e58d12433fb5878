"""Datasets for rlpost: loading rows from files, folders, the Hub or the built-in arithmetic task, and building prompts.

- `load_rows(source, split, data_config=...)`: rows with canonical `question`, `answer` (and optional
  `solution`) fields, the answer extracted by `data.answer_format` (GSM8K `####`, `\\boxed{}`, plain).
- `build_prompts(rows, tokenizer, data_config)`: `PromptSet` of templated, tokenised `Prompt`s;
  `build_training_prompts` also refuses a set that the length filter left empty.
- `generate_arithmetic(...)`: the built-in word-problem task, its test split by held-out templates
  (docs/data.md).
"""

from rlpost.data.arithmetic import generate_arithmetic
from rlpost.data.errors import DatasetError
from rlpost.data.loading import load_rows
from rlpost.data.prompts import PromptSet, build_prompts, build_training_prompts

__all__ = ["DatasetError", "PromptSet", "build_prompts", "build_training_prompts", "generate_arithmetic", "load_rows"]
