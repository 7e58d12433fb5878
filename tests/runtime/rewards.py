"""A reward with spread inside every group, so that short test runs always have a policy gradient."""


def text_length_reward(prompt: str, completion: str, **row) -> float:
    """Characters of the completion / 100 (differs between samples even at the token limit)."""
    del prompt, row
    return len(completion) / 100.0
