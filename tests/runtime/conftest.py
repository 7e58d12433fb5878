"""Configs of the runtime tests: the real SmolLM2 model, tiny batches, actors sized to fit 2 cores."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session")
def model_path(smollm2_path) -> str:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return smollm2_path
