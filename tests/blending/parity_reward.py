"""A reward that a random tiny model gets right about half the time: completions of even length."""


def parity(prompt: str, completion: str, **row_fields) -> float:
    return float(len(completion) % 2 == 0)
