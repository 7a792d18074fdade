#!/usr/bin/env bash
# `serve` on the lent GPU (no network there): bench/serve_latency.py through the real openai client.
# The default base's weights (538 MB) cannot travel (the device tool carries 64 MiB), so the base's
# architecture runs with random weights (--random-weights) next to the real adapter and tokenizer.
# The image has torch + CUDA, transformers and peft; the serving stack's wheels travel in .gpu_wheels/
# (git-ignored), downloaded here for the machine's Python:
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux_2_28_x86_64 \
#     --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform any -d .gpu_wheels \
#     fastapi starlette uvicorn openai jiter h11 sniffio anyio httpx2 httpcore2 opentelemetry-api \
#     annotated-doc annotated-types typing-inspection pydantic pydantic_core typing_extensions click importlib_metadata zipp \
#     idna certifi truststore          # pinned to the versions in requirements.lock
# Carry: .gpu_wheels models/base/tokenizer models/base/model/config.json models/base/model/base.json
#        models/adapter data/format/test.parquet
# Writes $OUT/serve_latency.json (the committed results, this run's record replacing the one of the same
# device, merge and weights): copy it over bench/results/serve_latency.json, then `make results`.
set -euo pipefail
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1
cp bench/results/serve_latency.json "${OUT:-/tmp}/"
pip install -q --no-deps --target /tmp/site .gpu_wheels/*.whl 2>&1 | grep -v -i warn | tail -3 || true
python -c "import torch, transformers, peft, fastapi, openai; print(torch.__version__, transformers.__version__, peft.__version__, fastapi.__version__, openai.__version__, torch.cuda.get_device_name(0))"
python bench/serve_latency.py --base models/base --adapter models/adapter --test data/format/test.parquet \
  --random-weights --threads 8 --out "${OUT:-/tmp}/serve_latency.json" "$@" 2>&1 | grep -v -i "warn\|Loading"
