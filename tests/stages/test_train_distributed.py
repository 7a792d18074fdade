"""train.hf.processes: 2 processes on the CPU (gloo), started by the stage itself, data parallel (DDP)
or sharded (train.hf.sharding fsdp).

Through `python -m stages.train`, as dvc runs it, on the session's tiny gpt-oss: 2 processes with 2
rows each give the adapter 1 process gives with 4 rows, DDP or FSDP, only rank 0 writes and reports, a
run killed with SIGKILL leaves no process behind and resumes to the same adapter, and bad input is one
line.
"""

import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml
from safetensors.torch import load_file

from tests.stages.test_train import write_rows
from tests.toys import TINY_LORA

REPO = Path(__file__).resolve().parents[2]
STEPS = 6


def params_file(path: Path, processes: int, batch_size: int, sharding: str = "none", **train) -> Path:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["train"] |= {"max_steps": STEPS, "batch_size": batch_size, "save_steps": 3, "eval_steps": STEPS,
                        "eval_rows": 0, "logging_steps": 1, "learning_rate": 0.005}
    params["train"]["lora"] |= {k: list(v) for k, v in TINY_LORA.items()}
    # fp32: bf16 autocast rounds differently in a batch of 2 and one of 4
    params["train"]["hf"] |= {"threads": 2, "processes": processes, "precision": "fp32", "sharding": sharding}
    params["train"]["hf"] |= {k: v for k, v in train.items() if k in params["train"]["hf"]}
    params["train"] |= {k: v for k, v in train.items() if k not in params["train"]["hf"]}
    path.write_text(yaml.safe_dump(params))
    return path


def command(folder: Path, base: Path, rows: Path, params: Path) -> list[str]:
    return [sys.executable, "-m", "stages.train", "--base", str(base), "--train", str(rows / "train.parquet"),
            "--val", str(rows / "val.parquet"), "--checkpoints", str(folder / "checkpoints"),
            "--out", str(folder / "adapter"), "--mask-report", str(folder / "mask.md"),
            "--live-dir", str(folder / "live"), "--metrics", str(folder / "metrics.json"),
            "--params", str(params)]


def adapter(folder: Path) -> dict:
    return load_file(folder / "adapter" / "adapter_model.safetensors")


@pytest.fixture(scope="module")
def rows(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("rows")
    write_rows(folder / "train.parquet", 32, seed=1)
    write_rows(folder / "val.parquet", 8, seed=2)
    return folder


@pytest.fixture(scope="module")
def runs(tiny_base, rows, tmp_path_factory) -> dict:
    """name -> (folder, stderr): one process with 4 rows a step, two with 2 each (DDP and FSDP)."""
    out = {}
    for name, processes, batch_size, sharding in (("one", 1, 4, "none"), ("two", 2, 2, "none"),
                                                  ("fsdp", 2, 2, "fsdp")):
        folder = tmp_path_factory.mktemp(name)
        params = params_file(folder / "params.yaml", processes, batch_size, sharding)
        temp = folder / "tmp"  # the run's temp dir: the launcher's leftovers would show here
        temp.mkdir()
        done = subprocess.run(command(folder, tiny_base, rows, params), cwd=REPO, capture_output=True,
                              text=True, timeout=300, env={**os.environ, "TMPDIR": str(temp)})
        assert done.returncode == 0, done.stderr[-3000:]
        out[name] = (folder, done.stderr)
    return out


@pytest.mark.parametrize("name", ["two", "fsdp"])
def test_two_processes_of_2_rows_train_the_adapter_of_one_process_of_4(runs, name):
    (one, _), (two, _) = runs["one"], runs[name]
    a, b = adapter(one), adapter(two)
    assert a.keys() == b.keys()
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst < 1e-5, worst  # measured: 1.1e-6 (float sums in another order), nothing like a lost sync
    metrics = [json.loads((f / "metrics.json").read_text()) for f in (one, two)]
    assert metrics[0]["steps"] == metrics[1]["steps"] == STEPS
    assert metrics[0]["train_loss"] == pytest.approx(metrics[1]["train_loss"], abs=1e-5)
    # val loss is a mean over eval batches, which two processes cut differently
    assert metrics[0]["val_loss"] == pytest.approx(metrics[1]["val_loss"], rel=1e-3)


@pytest.mark.parametrize(("name", "says"), [("two", ""), ("fsdp", ", fsdp sharded")])
def test_only_rank_0_writes_and_reports(runs, name, says):
    folder, stderr = runs[name]
    lines = stderr.splitlines()
    assert sum(line.startswith(f"train: {STEPS} steps done") for line in lines) == 1
    assert sum(line.startswith(f"train: step {STEPS}/{STEPS}  loss") for line in lines) == 1
    assert f"train: cpu, fp32, 1 threads, 2 processes{says}" in lines
    # no weight-loading bar: stderr is a pipe, a log (bars draw on a terminal only, webtune.quiet; there
    # only rank 0's, as the other's would break rank 0's lines apart: distributed.init)
    assert not any("Loading weights" in line for line in lines)
    assert sorted(p.name for p in (folder / "checkpoints").iterdir()) == ["run.json"]
    assert list((folder / "tmp").iterdir()) == []  # the launcher's log folder went with the run
    curve = (folder / "live" / "plots" / "metrics" / "train" / "loss.tsv").read_text().splitlines()
    assert [row.split("\t")[0] for row in curve[1:]] == [str(s) for s in range(1, STEPS + 1)]  # one writer
    assert (folder / "mask.md").read_text().startswith("# Train: supervision mask")
    assert "(backend `hf`, on CPU" in (folder / "adapter" / "README.md").read_text()


@pytest.mark.parametrize(("name", "sharding"), [("two", "none"), ("fsdp", "fsdp")])
def test_a_killed_two_process_run_leaves_no_process_and_resumes_to_the_same_adapter(
        runs, tiny_base, rows, tmp_path, name, sharding):
    params = params_file(tmp_path / "params.yaml", processes=2, batch_size=2, sharding=sharding)
    cmd = command(tmp_path, tiny_base, rows, params)
    run = subprocess.Popen(cmd, cwd=REPO, start_new_session=True, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    marker, t0 = tmp_path / "checkpoints" / "checkpoint-3" / "COMPLETE", time.monotonic()
    while not marker.exists() and run.poll() is None and time.monotonic() - t0 < 240:
        time.sleep(0.05)
    os.killpg(run.pid, signal.SIGKILL)  # what a killed `dvc repro` does to its stage
    run.wait()
    assert marker.exists()
    time.sleep(1)
    survivors = subprocess.run(["pgrep", "-f", str(tmp_path / "checkpoints")], capture_output=True, text=True)
    assert survivors.stdout.split() == []  # the training processes died with their launcher
    if sharding == "fsdp":  # the checkpoint holds what FSDP reloads: the whole model and optimizer state
        assert {"pytorch_model_fsdp.bin", "optimizer.bin"} <= {p.name for p in marker.parent.iterdir()}
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "train: resuming from checkpoint-3" in done.stderr.splitlines()
    assert json.loads((tmp_path / "metrics.json").read_text())["resumed_from_step"] == 3
    uninterrupted, resumed = adapter(runs[name][0]), adapter(tmp_path)
    assert all(uninterrupted[k].equal(resumed[k]) for k in uninterrupted)  # bit for bit


def test_under_an_outside_torchrun_rank_0_takes_the_lock_and_trains_the_same_adapter(runs, tiny_base, rows,
                                                                                    tmp_path):
    """`torchrun --nproc_per_node 2 -m stages.train ...`: the stage does not launch again, and rank 0
    (a child of torchrun's agent) holds the checkpoint lock while it trains."""
    params = params_file(tmp_path / "params.yaml", processes=2, batch_size=2)
    cmd = command(tmp_path, tiny_base, rows, params)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                *cmd[1:]]
    run = subprocess.Popen(torchrun, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    marker, t0 = tmp_path / "checkpoints" / "checkpoint-3" / "COMPLETE", time.monotonic()
    while not marker.exists() and run.poll() is None and time.monotonic() - t0 < 240:
        time.sleep(0.05)
    with open(tmp_path / "checkpoints.lock") as lock:  # held while it trains, by one of torchrun's children
        with pytest.raises(BlockingIOError):
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        holder = int(lock.read())
    assert holder != run.pid and psutil.Process(holder).parent().pid == run.pid
    _, stderr = run.communicate(timeout=300)
    assert run.returncode == 0, stderr[-3000:]
    assert sum(line.startswith(f"train: {STEPS} steps done") for line in stderr.splitlines()) == 1
    ours, stage_launched = adapter(tmp_path), adapter(runs["two"][0])
    assert all(ours[k].equal(stage_launched[k]) for k in ours)


def test_token_budget_micro_batches_on_2_processes_train_the_adapter_of_1_process_accumulating_2(
        tiny_base, rows, tmp_path):
    """train.hf.batch_tokens: process p reads micro-batches p, p + 2, ... of the plan; one process reads
    them all, two a step: the same rows every step, the same token-weighted gradient."""
    adapters, lines = [], []
    for name, processes, accumulate in (("one", 1, 2), ("two", 2, 1)):
        folder = tmp_path / name
        folder.mkdir()
        params = params_file(folder / "params.yaml", processes, 2, batch_tokens=512, grad_accum=accumulate)
        done = subprocess.run(command(folder, tiny_base, rows, params), cwd=REPO, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        adapters.append(adapter(folder))
        lines.append([line for line in done.stderr.splitlines() if line.startswith("train: micro-batches")])
    assert lines[0] == lines[1] and len(lines[0]) == 1  # the same plan, reported once
    a, b = adapters
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst < 1e-5, worst  # measured: 5.7e-7 (8 rows a micro-batch on average)


def test_bad_input_is_one_line_from_rank_0_and_one_from_the_launcher(tiny_base, rows, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    bad = tmp_path / "rows"
    bad.mkdir()
    pq.write_table(pa.table({"x": [1, 2]}), bad / "train.parquet")
    (bad / "val.parquet").write_bytes((rows / "val.parquet").read_bytes())
    params = params_file(tmp_path / "params.yaml", processes=2, batch_size=2)
    done = subprocess.run(command(tmp_path, tiny_base, bad, params), cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        f"train: {bad / 'train.parquet'}: missing columns pair_id, messages (was it written by the format "
        "stage?)",
        "train: 2 of 2 training processes stopped (ranks 0, 1); the error is above"]
    assert not (tmp_path / "adapter").exists()
