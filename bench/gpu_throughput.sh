#!/bin/bash
# bench/train_throughput.py on the GPU machine: one shape, then each configuration in its own process.
#   bash bench/gpu_throughput.sh SHAPE "recipe hf unsloth" [LAYERS] [STEPS]
# Needs .gpu_site.tgz (the carried packages, bench/README.md) in the working tree. Writes
# $OUT/train_throughput.json: the committed results with these runs' records replacing those of the same
# shape, config and batch_tokens; copy it over bench/results/train_throughput.json, then `make results`.
shape=$1; configs=$2; layers=$3; steps=${4:-40}  # 40 steps, 12 of them warm-up: compilation outlasts 4
mkdir -p /tmp/site && tar -xzf .gpu_site.tgz -C /tmp/site
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
cp bench/results/train_throughput.json "$OUT/"
dir=/tmp/tp-$shape
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python bench/train_throughput.py build --shape "$shape" --dir "$dir" --rows 4000 ${layers:+--layers $layers} \
  > "$OUT/build-$shape.log" 2>&1; tail -1 "$OUT/build-$shape.log"
df -h /tmp | tail -1
for config in $configs; do
  timeout "${PER_RUN_S:-420}" python bench/train_throughput.py run --config "$config" --dir "$dir" --steps "$steps" \
    --out "$OUT/train_throughput.json" > "$OUT/$shape-$config.log" 2>&1
  echo "$config rc=$?"; grep -v Warning "$OUT/$shape-$config.log" | tail -4
done
