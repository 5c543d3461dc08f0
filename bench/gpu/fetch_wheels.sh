#!/usr/bin/env bash
# Download (and, for sdist-only packages, build) the wheels bench/gpu needs on a lent H200 that has no internet.
# Run it HERE (a machine with pip access), from the repo root; then carry the folder to the GPU machine:
#
#   bash bench/gpu/fetch_wheels.sh [.whl] [--with-transformers]
#   # device run: carry [".whl"], command: bash bench/gpu/run.sh --wheels .whl
#
# The H200 image has Python 3.12, torch, triton, transformers, accelerate, peft, pandas, pyarrow (README.md lists
# what it lacks). Versions below are the repo's known-good ones (.venv). Installed there with --no-deps, so every
# missing dependency is listed explicitly. Total ~10 MB (+15 MB with --with-transformers); the carry limit is 64 MiB.
# Transformer Engine (~400 MB of CUDA 12 libraries) and flash-attn (no binary wheel on PyPI) do not fit: the bench
# records them as skipped.
set -euo pipefail

DEST="${1:-.whl}"
[[ "${1:-}" == --* ]] && DEST=.whl
PY="${PYTHON:-.venv/bin/python}"
mkdir -p "$DEST"

PLATFORM=(--only-binary=:all: --no-deps --python-version 3.12 --implementation cp
          --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64
          --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64)

# Binary or pure-python wheels on PyPI, for CPython 3.12 on x86-64.
WHEELS=(
  megatron-core==0.16.1                                   # Megatron section (TE spec still needs TE)
  pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 hjson==3.1.0  # deepspeed
  kvpress==0.5.5 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 cachetools==5.5.2 termcolor==3.3.0  # kvpress
)
if [[ " $* " == *" --with-transformers "* ]]; then
  WHEELS+=(transformers==5.2.0 tokenizers==0.22.2 typer-slim)  # the repo's pin (the image has a newer one)
fi
"$PY" -m pip download "${PLATFORM[@]}" -d "$DEST" "${WHEELS[@]}"

# Only an sdist on PyPI: build pure-python wheels here (DeepSpeed builds no ops: DS_BUILD_OPS=0).
DS_BUILD_OPS=0 "$PY" -m pip wheel --no-deps --no-build-isolation -w "$DEST" deepspeed==0.19.8 fire==0.6.0

ls -la "$DEST"
du -sh "$DEST"
