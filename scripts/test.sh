#!/usr/bin/env bash
# Install if needed, check that the optional stack imports, fetch the test model, run the whole test suite
# (slow end-to-end tests included; each test has a hang guard, pytest-timeout, and the slowest are listed).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
. .venv/bin/activate
export OMP_WAIT_POLICY=PASSIVE
# DeepSpeed's one-time C++ build (about a minute) goes into this checkout: a build lock left by a
# process killed elsewhere on the machine cannot hang the suite.
export TORCH_EXTENSIONS_DIR="$PWD/.cache/torch_extensions"
# The optional stack must import here: a broken one would only turn its tests into skips.
python scripts/check_stack.py
rlpost model fetch smollm2-135m-instruct >/dev/null
python -m pytest -q "$@"
