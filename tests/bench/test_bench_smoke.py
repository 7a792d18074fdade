"""Every benchmark's smoke mode runs and writes a record with its provenance and its numbers, so a bench
cannot rot between the rare runs that measure (bench/README.md). One test per bench script; the GPU
shell scripts get a syntax check, and the smoke of each Python bench they drive.

Each smoke is a subprocess of this interpreter (the venv's), mostly spent importing torch or dvc on one
core: they run two at a time (the machine's two cores) from the moment the module's first test asks, and
each test waits for its own.
"""

import concurrent.futures
import json
import math
import os
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "bench"

# bench script -> the command line of its smoke run (its record goes to --out)
SMOKES = {
    "data_stages": ["bench/data_stages.py", "--smoke"],
    "full_repro": ["bench/full_repro.py", "--smoke"],
    "seeds": ["bench/seeds.py", "--smoke"],
    "remote_s3": ["bench/remote_s3.py", "--smoke"],
    "brightdata_rate": ["bench/brightdata_rate.py", "--smoke"],
    "suite_time": ["bench/suite_time.py", "--smoke"],
    "cpu_train_speed": ["bench/cpu_train_speed.py", "--smoke"],
    "serve_latency": ["bench/serve_latency.py", "--smoke", "--merge"],
    "gguf_quality": ["bench/gguf_quality.py", "--smoke"],
    "train_throughput": ["bench/train_throughput.py", "smoke"],
    "train_multigpu": ["bench/train_multigpu.py", "--smoke"],
    "gpu_unsloth_smoke": ["bench/gpu_unsloth_smoke.py", "smoke"],
}
# the bench/*.py files that are not benchmarks: shared modules, and the renderer (tests/bench/test_report.py)
NOT_BENCHES = {"record", "goals", "corpus", "stage_run", "shapes", "render", "report", "sections_pipeline",
               "sections_serving", "sections_training"}
# GPU shell script -> the Python benches it drives
GPU_SCRIPTS = {
    "gpu_throughput.sh": {"train_throughput"},
    "gpu_fsdp.sh": {"train_throughput", "train_multigpu"},
    "gpu_default_loss.sh": {"gpu_unsloth_smoke"},
    "gpu_serve.sh": {"serve_latency"},
    "gpu_smoke.sh": set(),  # the train/evaluate tests and stages themselves: no bench script
}


def smoke_of(script: str):
    """Marks a test as the check of `script`'s smoke run (the fixture starts only the selected ones)."""
    def mark(test):
        test.smoke_script = script
        return test
    return mark


@pytest.fixture(scope="module")
def smoke(request, tmp_path_factory):
    """smoke(script) -> the records its smoke run wrote, parsed strictly (NaN refused)."""
    wanted = [item.function.smoke_script for item in request.session.items
              if getattr(item.function, "smoke_script", None) and item.module.__name__ == __name__]
    env = os.environ | {"PYTHONPATH": str(REPO), "GX_ANALYTICS_ENABLED": "false", "HF_HUB_OFFLINE": "1",
                        "TOKENIZERS_PARALLELISM": "false"}
    out_dir = tmp_path_factory.mktemp("smoke")

    def run(script: str) -> list[dict]:
        out = out_dir / f"{script}.json"
        proc = subprocess.run([sys.executable, *SMOKES[script], "--out", str(out)], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=400)
        assert proc.returncode == 0, f"{script} --smoke failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
        return json.loads(out.read_text(), parse_constant=_refuse)["records"]

    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        futures = {script: pool.submit(run, script) for script in dict.fromkeys(wanted)}
        yield lambda script: futures[script].result()
        for future in futures.values():
            future.cancel()


def _refuse(constant: str):
    raise AssertionError(f"a record holds {constant}: every number must be finite")


def _git_head() -> str | None:
    proc = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True)
    return proc.stdout.strip() if proc.returncode == 0 else None


def provenance_is_recorded(record: dict, bench: str, script: str) -> None:
    assert record["bench"] == bench
    assert record["smoke"] is True
    assert record["command"].startswith(f"python bench/{script}.py ")
    assert record["commit"] == _git_head()
    assert isinstance(record["dirty"], bool) if record["commit"] else record["dirty"] is None
    assert record["machine"]["cores"] == os.cpu_count()
    assert record["machine"]["cpu"]
    assert "gpu" in record["machine"]
    when = datetime.strptime(record["date"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    assert timedelta(0) <= datetime.now(UTC) - when < timedelta(minutes=15)


def only_finite_numbers(value) -> bool:
    if isinstance(value, dict):
        return all(only_finite_numbers(v) for v in value.values())
    if isinstance(value, list):
        return all(only_finite_numbers(v) for v in value)
    return not isinstance(value, float) or math.isfinite(value)


def one(records: list[dict], bench: str, script: str) -> dict:
    assert len(records) == 1
    provenance_is_recorded(records[0], bench, script)
    assert only_finite_numbers(records[0]["results"])
    return records[0]["results"]


@smoke_of("data_stages")
def test_data_stages_smoke_runs_the_three_stages_on_a_clean_generated_corpus(smoke):
    r = one(smoke("data_stages"), "data_stages", "data_stages")
    assert r["quality_sample"]["ok"] is True
    (run,) = r["runs"]
    assert (run["kind"], run["corpus"]["pages"]) == ("html", 300)
    assert set(run["stages"]) == {"clean", "validate", "format"}
    for stage in run["stages"].values():
        assert stage["exit"] == 0 and stage["wall_s"] > 0 and stage["mb_s_per_core"] > 0
    clean, validate, fmt = (run["stages"][s]["metrics"] for s in ("clean", "validate", "format"))
    assert clean["docs_in"] == 300 and validate["failed"] == 0
    assert fmt["rows"] + sum(fmt["dropped"].values()) == validate["rows"] == clean["pairs_out"]
    assert run["end_to_end"]["complete"] is True
    assert set(run["quality"]["docs_with_boilerplate"].values()) == {0}
    assert run["quality"]["docs_starting_with_h1"] == run["quality"]["docs"] == clean["docs_out"]


@smoke_of("full_repro")
def test_full_repro_smoke_times_a_toy_dags_full_and_no_op_repro(smoke):
    r = one(smoke("full_repro"), "full_repro", "full_repro")
    assert set(r["stage_s"]) == {"train", "evaluate"}
    assert r["full_repro_s"] >= sum(r["stage_s"].values()) > 0
    assert r["noop_repro_s"]["runs"] == 1 and r["noop_repro_s"]["median"] == r["noop_repro_s"]["max"] > 0
    assert r["train"] == {"steps": 2, "base_val_loss": 3.0, "val_loss": 2.0}
    assert r["evaluate"] == {"loss_ratio": 0.7}


@smoke_of("seeds")
def test_seeds_smoke_runs_one_experiment_per_seed_and_reports_the_spread(smoke):
    r = one(smoke("seeds"), "seeds", "seeds")
    # the toy's loss is 2 + (seed % 7) / 100 against a base of 3: each seed's experiment really ran
    assert r["seeds"] == [1, 2, 3]
    assert [r["per_seed"][s]["ratio"]["loss"] for s in ("1", "2", "3")] == [0.67, 0.673333, 0.676667]
    assert r["over_seeds"]["ratio"]["loss"] == {"mean": 0.673333, "sd": 0.003334, "n": 3}
    assert r["over_seeds"]["delta"]["loss"] == {"mean": -0.98, "sd": 0.01, "n": 3}
    assert r["over_seeds"]["verdicts"]["loss"] == {"adapter": 3, "neither": 0, "base": 0}


@smoke_of("remote_s3")
def test_remote_s3_smoke_pushes_and_pulls_a_toy_project_through_moto(smoke):
    r = one(smoke("remote_s3"), "remote_s3", "remote_s3")
    assert r["files"] == 4  # three files and the folder's .dir manifest
    assert r["runs"] == 1
    assert set(r["median_seconds"]) == {"push", "noop_push", "dvc_pull", "make_pull"}
    assert min(r["median_seconds"].values()) > 0


@smoke_of("brightdata_rate")
def test_brightdata_smoke_fetches_every_url_within_the_rate(smoke):
    r = one(smoke("brightdata_rate"), "brightdata_rate", "brightdata_rate")
    assert (r["urls"], r["rate_per_s"], r["fetched"], r["requests_seen_by_emulator"]) == (30, 20, 30, 30)
    assert r["max_starts_in_any_1s_client"] <= 20
    assert r["wall_s"] >= (30 - 1) / 20  # evenly spaced starts cannot finish sooner
    assert r["ideal_s"] == 1.46


@smoke_of("suite_time")
def test_suite_time_smoke_counts_a_toy_suites_outcomes(smoke):
    r = one(smoke("suite_time"), "test_suite", "suite_time")
    assert (r["passed"], r["failed"], r["skipped"], r["errors"], r["exit"]) == (2, 0, 1, 0, 0)
    assert r["seconds"] > 0


@smoke_of("cpu_train_speed")
def test_cpu_train_speed_smoke_trains_each_configuration_and_times_its_steps(smoke):
    r = one(smoke("cpu_train_speed"), "cpu_train_speed", "cpu_train_speed")
    assert r["base"] == "tiny-llama-shape"
    fp32, bf16 = r["runs"]
    assert (fp32["precision_asked"], fp32["threads"], fp32["gradient_checkpointing"], fp32["loss"]) == (
        "fp32", 1, False, "full_logits")
    assert (bf16["precision_asked"], bf16["gradient_checkpointing"], bf16["loss"]) == (
        "bf16", True, "trl_fused_lm_head")
    for run in r["runs"]:
        assert run["steps"] == 4 and run["tokens_per_s"] > 0
        assert len(run["step_s"]) == 3 and isinstance(run["window_stable"], bool)


@smoke_of("serve_latency")
def test_serve_latency_smoke_answers_one_client_then_every_request_batched_and_queued(smoke):
    r = one(smoke("serve_latency"), "serve_latency", "serve_latency")
    assert (r["device"], r["engine"], r["weights"], r["merged_adapter"], r["clients"], r["max_tokens"]) == (
        "cpu", "hf", "float32", True, 2, 4)
    assert r["single"]["requests"] == 2 and 0 < r["single"]["completion_tokens"] <= 8
    assert r["single"]["tokens_per_s"] > 0 and r["read_gb_s"] > 0 and r["bytes_per_token"] > 0
    assert r["bandwidth_share"] == round(r["single"]["tokens_per_s"] * r["bytes_per_token"] / 1e9
                                         / r["read_gb_s"], 3)
    for mode in ("batched", "queued"):
        assert r[mode]["requests"] == 4 and r[mode]["requests_per_s"] > 0
        assert 0 < r[mode]["mean_completion_tokens"] <= 4
        assert r[mode]["p95_s"] >= r[mode]["p50_s"] > 0


@smoke_of("gguf_quality")
def test_gguf_quality_smoke_scores_the_merged_model_and_its_q8_0_export(smoke):
    r = one(smoke("gguf_quality"), "gguf_quality", "gguf_quality")
    assert set(r["models"]) == {"merged", "q8_0"} and r["rows"] == 4
    merged, q8 = r["models"]["merged"], r["models"]["q8_0"]
    assert merged["answers_identical_to_merged"] == 1.0 and merged["file_bytes"] is None
    assert q8["file_bytes"] > 0 and 0 <= q8["answers_identical_to_merged"] <= 1
    assert q8["loss"] > 0 and abs(q8["loss"] - merged["loss"]) / merged["loss"] < 0.05


@smoke_of("train_throughput")
def test_train_throughput_smoke_counts_tokens_over_the_steps_after_warm_up(smoke):
    r = one(smoke("train_throughput"), "train_throughput", "train_throughput")
    assert (r["config"], r["shape"], r["steps"], r["warmup"], r["batch_tokens"]) == (
        "hf", "tiny-llama-shape", 8, 2, 0)
    assert r["timed_steps"] == len(r["step_s"]) == 5  # steps 3-7: the last step has no end mark
    assert r["micro_batches"] == 8
    assert 0 < r["useful_tokens_per_s"] <= r["all_tokens_per_s"]
    assert 0 <= r["padding_share"] < 1
    assert r["active_params"] == 139_264  # tiny-llama: 2 x (attention 12,288 + MLP 24,576) + 64 x 1,024
    assert isinstance(r["window_stable"], bool)
    assert r["first_third_mean_s"] == round(r["step_s"][0], 4)


@smoke_of("train_multigpu")
def test_train_multigpu_smoke_times_the_train_stage_per_step(smoke):
    r = one(smoke("train_multigpu"), "train_multigpu", "train_multigpu")
    assert (r["processes"], r["sharding"], r["steps"], r["warmup"]) == (1, "none", 8, 2)
    assert r["timed_steps"] == len(r["step_s"]) == 6
    assert r["tokens_per_s"] > 0 and r["speedup"] == 1.0
    assert r["train_loss"] > 0 and isinstance(r["window_stable"], bool)


@smoke_of("gpu_unsloth_smoke")
def test_gpu_unsloth_smoke_trains_probes_and_reloads_the_adapter_on_plain_peft(smoke):
    records = smoke("gpu_unsloth_smoke")
    for record in records:
        provenance_is_recorded(record, "unsloth_smoke", "gpu_unsloth_smoke")
        assert only_finite_numbers(record["results"])
    train, probe, reload = (r["results"] for r in records)
    assert (train["step"], train["run"], train["steps"], train["device"]) == ("train", "hf-0", 4, "cpu")
    assert (probe["step"], probe["run"], probe["cross"], probe["passes"]) == ("probe", "hf", 0.0, True)
    assert (reload["step"], reload["run"], reload["split"]) == ("reload", "hf-0", "val.parquet")
    # the saved adapter is the trained one: its loss recomputed on plain PEFT matches the trainer's
    assert reload["loss_plain_peft"] == pytest.approx(train["val_loss"], rel=0.01)


def test_every_bench_script_has_a_smoke_test():
    scripts = {p.stem for p in BENCH.glob("*.py")} - NOT_BENCHES
    assert scripts == set(SMOKES)
    tested = {getattr(f, "smoke_script", None) for f in globals().values() if callable(f)} - {None}
    assert tested == set(SMOKES)


@pytest.mark.parametrize("script", sorted(GPU_SCRIPTS))
def test_gpu_script_parses_and_drives_only_smoke_tested_benches(script):
    path = BENCH / script
    proc = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert set(re.findall(r"bench/(\w+)\.py", path.read_text())) == GPU_SCRIPTS[script]
    assert GPU_SCRIPTS[script] <= set(SMOKES)


def test_every_gpu_script_is_checked():
    assert {p.name for p in BENCH.glob("gpu_*.sh")} == set(GPU_SCRIPTS)
