"""A scripted reward for a random tiny model, by the built-in task's difficulty level: level 1 always
right, level 3 never, level 2 right for about half the completions (those of even length). Success
rates 1, ~0.5 and 0 give Knapsack an easy, an informative and a hard prompt in every batch."""


def by_level(prompt: str, completion: str, *, level: int) -> float:
    if level == 1:
        return 1.0
    if level == 3:
        return 0.0
    return float(len(completion) % 2 == 0)
