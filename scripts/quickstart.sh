#!/usr/bin/env bash
# Fresh machine to a trained model: install, fetch SmolLM2-135M-Instruct, train GRPO on the
# built-in arithmetic task (CPU), evaluate before/after on 300 held-out problems (the test split's phrasings
# never appear in training), print the difference with its confidence interval, plot the curves.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
. .venv/bin/activate
export OMP_WAIT_POLICY=PASSIVE
rlpost model fetch smollm2-135m-instruct
rlpost train configs/quickstart.yaml "$@"
out=$(rlpost config show configs/quickstart.yaml "$@" | python -c 'import sys,yaml; print(yaml.safe_load(sys.stdin)["train"]["output_dir"])')
rlpost eval --config configs/quickstart.yaml --model smollm2-135m-instruct --data arithmetic --limit 300 --max-new-tokens 128 --out "$out/eval_before.json"
rlpost eval --config configs/quickstart.yaml --model "$out/final" --data arithmetic --limit 300 --max-new-tokens 128 --out "$out/eval_after.json"
rlpost eval --compare "$out/eval_before.json" "$out/eval_after.json"
rlpost plot "$out"
