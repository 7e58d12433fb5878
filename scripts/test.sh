#!/usr/bin/env bash
# Install if needed, fetch the test model, run the whole test suite (slow end-to-end tests included).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
. .venv/bin/activate
export OMP_WAIT_POLICY=PASSIVE
# DeepSpeed's one-time C++ build (about a minute) goes into this checkout: a build lock left by a
# process killed elsewhere on the machine cannot hang the suite.
export TORCH_EXTENSIONS_DIR="$PWD/.cache/torch_extensions"
rlpost model fetch smollm2-135m-instruct >/dev/null
python -m pytest -q "$@"
