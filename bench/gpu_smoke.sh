#!/usr/bin/env bash
# GPU smoke run of the model half on a machine without network (the lent H100/H200): the train and
# evaluate tests, then the train and evaluate stages on the embedded default's data.
#
# The machine's image has torch + CUDA, transformers and peft, but not trl, datasets or dvclive, so
# their wheels travel in .gpu_wheels/ (git-ignored). Build it here, where PyPI is reachable:
#   pkgs="trl datasets dill multiprocess dvclive dvc dvc-render dvc-studio-client flatten-dict funcy
#         ruamel.yaml voluptuous pydot truststore transformers tokenizers huggingface_hub hf-xet httpx2
#         httpcore2 atpublic configobj diskcache dpath dulwich dvc-data dvc-http dvc-objects flufl.lock
#         orjson pygtrie scmrepo sqltrie wcwidth zc.lockfile pathspec platformdirs"
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux_2_28_x86_64 \
#     --platform manylinux2014_x86_64 --platform any -d .gpu_wheels $(for p in $pkgs; do
#     echo "$p==$(pip show $p | awk '/^Version/{print $2}')"; done)            # ~27 MB
# then run this with .gpu_wheels, data/format and models/base carried to the machine.
set -euo pipefail
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 GX_ANALYTICS_ENABLED=false
pip install -q --no-deps --target /tmp/site .gpu_wheels/*.whl 2>&1 | grep -v -i warn | tail -3 || true
python -c "import torch, transformers, trl, peft; print(torch.__version__, transformers.__version__, trl.__version__, peft.__version__, torch.cuda.get_device_name(0))"
python -m pytest tests/stages/test_train.py tests/stages/test_evaluate.py tests/webtune/training tests/webtune/models -q -p no:cacheprovider | tail -3
run=$(mktemp -d)
python -m stages.train --base models/base --train data/format/train.parquet --val data/format/val.parquet \
  --checkpoints "$run/checkpoints" --out "$run/adapter" --mask-report "$run/mask.md" --live-dir "$run/live" \
  --metrics "$run/train.json" 2>&1 | grep -E "^train: (step [0-9]+/[0-9]+  eval|[0-9]+ rows)"
python -m stages.evaluate --base models/base --adapter "$run/adapter" --test data/format/test.parquet \
  --samples "$run/samples.jsonl" --compare-plot "$run/compare.csv" --metrics "$run/evaluate.json" 2>&1 | grep "loss base"
cat "$run/train.json"
