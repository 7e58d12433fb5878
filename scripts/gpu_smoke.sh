#!/usr/bin/env bash
# GPU smoke test: one PASS/FAIL/SKIP line per check, a summary, exit 0 only when nothing failed.
#
#   bash scripts/gpu_smoke.sh                 # on one CUDA GPU, in this Python environment
#   bash scripts/gpu_smoke.sh --wheels DIR    # first install DIR's wheels (--no-deps, offline); DIR
#                                             #   comes from scripts/gpu_wheels.sh on a machine with PyPI
#   bash scripts/gpu_smoke.sh --dry           # every check on the CPU (Triton interpreted, tiny shapes)
#
# The checks are in scripts/gpu_smoke.py. On the GPU the run ends within 8 minutes: each check has
# its own time limit and all of them share one budget, with an outer timeout as a backstop.
# PYTHON picks the interpreter (default: .venv/bin/python when there is one and no --wheels, else python3).
set -uo pipefail
cd "$(dirname "$0")/.."

dry=0
wheels=""
while [ $# -gt 0 ]; do
  case "$1" in
    --dry) dry=1 ;;
    --wheels) wheels="${2:?--wheels needs a folder}"; shift ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "FAIL arguments (unknown argument $1)"; exit 2 ;;
  esac
  shift
done

if [ -z "${PYTHON:-}" ]; then
  if [ -z "$wheels" ] && [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi

# Wheels into a private folder put first on PYTHONPATH: the image's own packages stay as they are.
# rlpost itself runs from this checkout (the checks need its configs/ and benchmarks/), so its wheel
# in DIR is not installed here. Without pip, a wheel is a zip that unpacks to the same files.
install_wheels() {
  local dir="$1" site
  site="${RLPOST_SMOKE_SITE:-$(mktemp -d)/site}"
  mkdir -p "$site"
  local files=()
  for whl in "$dir"/*.whl; do
    case "$(basename "$whl")" in rlpost-*) ;; *) files+=("$whl") ;; esac
  done
  if [ ${#files[@]} -eq 0 ]; then echo "FAIL wheels (no .whl files in $dir)"; return 1; fi
  if "$PYTHON" -m pip --version >/dev/null 2>&1; then
    "$PYTHON" -m pip install --quiet --no-index --no-deps --disable-pip-version-check --target "$site" "${files[@]}" \
      || { echo "FAIL wheels (pip install --no-index --no-deps from $dir failed)"; return 1; }
  else
    for whl in "${files[@]}"; do "$PYTHON" -m zipfile -e "$whl" "$site" || { echo "FAIL wheels (unpacking $whl)"; return 1; }; done
  fi
  echo "PASS wheels (${#files[@]} wheels from $dir into $site)"
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
  export RLPOST_SMOKE_WHEELS="$dir"  # where the GRPO check finds tiny-smollm2 when nothing else is there
}

if [ -n "$wheels" ]; then
  install_wheels "$wheels" || { echo "SUMMARY 0 passed, 1 failed, 0 skipped (wheels)"; exit 1; }
fi

export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export OMP_WAIT_POLICY=PASSIVE
# DeepSpeed's JIT builds (if any) go into this checkout, not a shared folder another job may lock.
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-$PWD/.cache/torch_extensions}"

if [ "$dry" = 1 ]; then
  exec "$PYTHON" scripts/gpu_smoke.py --dry
fi
# Backstop over the checks' own 440 s budget: under 8 minutes with the wheel install before it.
timeout -k 10 460 "$PYTHON" scripts/gpu_smoke.py
status=$?
if [ $status -eq 124 ] || [ $status -eq 137 ]; then
  echo "FAIL budget (the smoke run passed its 460 s limit)"
fi
exit $status
