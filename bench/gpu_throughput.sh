#!/bin/bash
# bench/train_throughput.py on the GPU machine: one shape, then each configuration in its own process.
#   bash bench/gpu_throughput.sh SHAPE "seed hf unsloth" [LAYERS] [STEPS]
# Needs .gpu_site.tgz (the carried packages, bench/RESULTS.md) in the working tree; writes into $OUT.
shape=$1; configs=$2; layers=$3; steps=${4:-60}
mkdir -p /tmp/site && tar -xzf .gpu_site.tgz -C /tmp/site
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
dir=/tmp/tp-$shape
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python bench/train_throughput.py build --shape "$shape" --dir "$dir" --rows 4000 ${layers:+--layers $layers} \
  > "$OUT/build-$shape.log" 2>&1; tail -1 "$OUT/build-$shape.log"
df -h /tmp | tail -1
for config in $configs; do
  timeout "${PER_RUN_S:-420}" python bench/train_throughput.py run --config "$config" --dir "$dir" --steps "$steps" \
    --out "$OUT/train_throughput.jsonl" > "$OUT/$shape-$config.log" 2>&1
  echo "$config rc=$?"; grep -v Warning "$OUT/$shape-$config.log" | tail -4
done
