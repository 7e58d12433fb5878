"""rlpost: reinforcement-learning post-training of LLMs (the GRPO family).

`rlpost.train(...)` and `rlpost.evaluate(...)` are the Python API (`rlpost.api`); they load on
first use, so that `import rlpost` stays cheap (no torch, no transformers).
"""

__version__ = "0.1.0"

_API = ("train", "evaluate", "build_config")

__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        from rlpost import api

        return getattr(api, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
