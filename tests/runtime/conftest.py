"""Models of the runtime tests: tiny batches, actors sized to fit 2 cores.

`model_path` is the real SmolLM2: the vLLM pipeline needs it (vLLM's CPU attention has no kernel for the
tiny model's head size), and the fault tests time a worker's kill against its generation. The parity and
multi-node tests take the tiny random model with SmolLM2's tokenizer (`tiny_chat_model_path`): what they
test is the runtime, and the length reward in `helpers.runtime_config` gives every group reward spread.
"""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session")
def model_path(smollm2_path) -> str:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return smollm2_path
