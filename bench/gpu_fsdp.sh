#!/bin/bash
# train.hf.sharding on the one lent GPU (issue 14's FSDP point, without the second GPU): the train stage on
# a Llama-3.1-8B shape (fp32 weights, 30 GiB) with and without a per-process memory budget of
# FRACTION of the GPU (default 0.2, 28 GiB on an H200): unsharded it must run out of memory; FSDP with
# its shards offloaded to the CPU must train. Each run is `python -m stages.train` (bench/train_multigpu.py).
#   bash bench/gpu_fsdp.sh [FRACTION]
# Needs .gpu_site.tgz (trl, datasets and a dvclive stand-in: bench/README.md) carried. Writes
# $OUT/train_multigpu.json (the committed results, these runs' records replacing those of the same shape,
# processes, sharding and cap): copy it over bench/results/train_multigpu.json, then `make results`.
fraction=${1:-0.2}
mkdir -p /tmp/site && tar -xzf .gpu_site.tgz -C /tmp/site
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
cp bench/results/train_multigpu.json "$OUT/"
dir=/tmp/fsdp-8b
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python bench/train_throughput.py build --shape llama-3.1-8b --dir "$dir" --rows 400 --fixed-length 128 \
  > "$OUT/build.log" 2>&1; tail -1 "$OUT/build.log"
runs=("none 0" "none $fraction" "fsdp_offload $fraction" "fsdp 0")
for r in "${runs[@]}"; do
  set -- $r
  timeout "${PER_RUN_S:-240}" python bench/train_multigpu.py --dir "$dir" --processes 1 --sharding "$1" \
    --memory-fraction "$2" --steps ${STEPS:-40} --warmup 12 --batch-size 4 --out "$OUT/train_multigpu.json" \
    > "$OUT/run-$1-$2.log" 2>&1
  echo "$1 $2 rc=$?"; grep -v -i warn "$OUT/run-$1-$2.log" | tail -3
done
# the sharded runs' adapters against the unsharded one's: the same tensors, whole (gathered from the shards)
python - "$dir" <<'PY'
import sys
from pathlib import Path
from safetensors.torch import load_file
runs = {p.name: load_file(p / "adapter" / "adapter_model.safetensors")
        for p in sorted(Path(sys.argv[1]).glob("run-*")) if (p / "adapter").is_dir()}
ref = runs.pop("run-1-none-0")
for name, got in runs.items():
    same = got.keys() == ref.keys() and all(got[k].shape == ref[k].shape for k in ref)
    worst = max((got[k].float() - ref[k].float()).abs().max().item() for k in ref) if same else None
    scale = max(ref[k].float().abs().max().item() for k in ref)
    print(f"adapter {name}: {len(got)} tensors, shapes as unsharded: {same}, max |diff| {worst:.3g} "
          f"(largest |weight| {scale:.3g})")
PY
