"""Rewards of the runtime tests: spread inside every group (a policy gradient in short runs), or none where chosen."""


def text_length_reward(prompt: str, completion: str, **row) -> float:
    """Characters of the completion / 100 (differs between samples even at the token limit)."""
    del prompt, row
    return len(completion) / 100.0


def odd_answers_length_reward(prompt: str, completion: str, *, answer: str, **row) -> float:
    """`text_length_reward` for questions with an odd answer; 0 for an even one (a group without
    spread, which DAPO's dynamic sampling filters out)."""
    del prompt, row
    return len(completion) / 100.0 if int(float(answer)) % 2 else 0.0
