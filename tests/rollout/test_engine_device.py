"""The HF engine goes to the GPU when there is one (checked through its constructor's arguments,
since this machine has none)."""

from __future__ import annotations

import torch

import rlpost.rollout.hf as hf
from rlpost.config.schema import RolloutConfig
from rlpost.rollout import build_engine


class RecordedEngine:
    """Stands in for HFEngine's constructor: keeps the arguments build_engine passes."""

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs


def test_hf_engine_uses_cuda_when_present(monkeypatch):
    monkeypatch.setattr(hf, "HFEngine", RecordedEngine)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    engine = build_engine(RolloutConfig(engine="hf"), "model-folder", seed=3)
    assert engine.kwargs["device"] == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert build_engine(RolloutConfig(engine="hf"), "model-folder").kwargs["device"] == "cpu"
