#!/usr/bin/env bash
# Fill DIR, on a machine with PyPI, with the wheels a GPU machine without a package registry needs to
# run rlpost and scripts/gpu_smoke.sh: what its image (Python 3.12, torch, triton, transformers, peft,
# accelerate, numpy, pyyaml, tqdm, safetensors) lacks, as pure-Python or manylinux x86_64 cp312 wheels,
# plus rlpost's own wheel and a tiny random-weight SmolLM2 (the quickstart model is too large to carry).
#
#   bash scripts/gpu_wheels.sh /tmp/w     # then carry /tmp/w and run: bash scripts/gpu_smoke.sh --wheels /tmp/w
#
# Fails when DIR ends up over 60 MiB (64 MiB can be carried, with the checkout beside it).
# Versions are the ones this checkout's tests run with.
set -euo pipefail
cd "$(dirname "$0")/.."
dir="${1:?usage: bash scripts/gpu_wheels.sh DIR}"
mkdir -p "$dir"
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
pip=("$PYTHON" -m pip --disable-pip-version-check)

# Binary wheels for the target image, whatever this machine's Python is (RLPOST_WHEELS_PYTHON=3.11:
# for an image with another Python, e.g. to rehearse the offline install on this machine).
py="${RLPOST_WHEELS_PYTHON:-3.12}"
target=(--no-deps --only-binary=:all: --python-version "$py" --implementation cp --abi "cp${py/./}" --abi abi3 --abi none
        --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 --platform any)
wanted=(
  # rlpost's config schema
  pydantic==2.14.3 pydantic-core==2.50.4 annotated-types==0.8.0 typing-inspection==0.4.5
  # pydantic 2.14 needs typing-extensions >= 4.16, newer than the image's torch may bring
  typing-extensions==4.16.0
  # the quickstart's math_verify reward (sympy and mpmath come with torch)
  math-verify==0.9.0 latex2sympy2_extended==1.11.0 antlr4-python3-runtime==4.13.2
  # what deepspeed imports (psutil and packaging are in the image)
  hjson==3.1.0 py-cpuinfo==9.0.0 msgpack==1.2.4 einops==0.8.2 ninja==1.13.2
)
"${pip[@]}" download --quiet "${target[@]}" -d "$dir" "${wanted[@]}"

# DeepSpeed publishes only a source archive: build its pure-Python wheel here (no ops compiled:
# DS_BUILD_OPS=0; its setup imports torch, hence --no-build-isolation in an environment with torch).
if ! ls "$dir"/deepspeed-*.whl >/dev/null 2>&1; then
  build=$(mktemp -d)
  DS_BUILD_OPS=0 "${pip[@]}" wheel --quiet --no-deps --no-build-isolation -w "$build" deepspeed==0.19.8
  mv "$build"/deepspeed-*-py3-none-any.whl "$dir"/
  rm -rf "$build"
fi

# rlpost's wheel, built from a copy: an in-tree build would rewrite the checkout's build/ and egg-info.
rm -f "$dir"/rlpost-*.whl
src=$(mktemp -d)
cp -r pyproject.toml README.md rlpost "$src"/
find "$src/rlpost" -name __pycache__ -prune -exec rm -rf {} +
"${pip[@]}" wheel --quiet --no-deps --no-build-isolation -w "$dir" "$src" >"$src.log" 2>&1 || { cat "$src.log"; exit 1; }
rm -rf "$src" "$src.log"

rm -rf "$dir/tiny-smollm2"
"$PYTHON" scripts/gpu_smoke.py --make-tiny-model "$dir/tiny-smollm2" 2>/dev/null

ls -l "$dir" | sed 1d
bytes=$(du -sb "$dir" | cut -f1)
mib=$(( (bytes + 1048575) / 1048576 ))
echo "total: $mib MiB ($bytes bytes) in $dir"
if [ "$bytes" -gt $((60 * 1048576)) ]; then
  echo "FAIL: over 60 MiB"
  exit 1
fi
