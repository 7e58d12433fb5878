#!/usr/bin/env bash
# Install if needed, fetch the test model, run the whole test suite (slow end-to-end tests included).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
. .venv/bin/activate
export OMP_WAIT_POLICY=PASSIVE
rlpost model fetch smollm2-135m-instruct >/dev/null
python -m pytest -q "$@"
