"""Built-in rewards, one module each: `math_verify` (is the final answer right) and `boxed_format`
(is an answer boxed). Each registers itself with `@register_reward`; the reward registry imports every
module of this package the first time a name is looked up, so a new built-in is one new file here."""

from rlpost.rewards.builtin.boxed_format import boxed_contents, boxed_format_reward
from rlpost.rewards.builtin.math_answer import math_verify_reward

__all__ = ["boxed_contents", "boxed_format_reward", "math_verify_reward"]
