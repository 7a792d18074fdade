"""The executor seam against real runtimes the tests start (tests/cluster.py): a single-node Slurm and a
Ray head node, each reached the way a user reaches theirs (SLURM_CONF / RAY_ADDRESS in the environment,
WEBTUNE_EXECUTOR naming the executor). Each writes the same bytes as the local executor.

Slurm needs root and Debian's slurm-wlm and munge (`make cluster-deps`, run by `make test`): without
them its tests skip, except in CI (CI=true), where they fail instead.
"""

import dataclasses
import os

import pytest

from tests.cluster import LOOPBACK_RAY, RayHead, SlurmCluster
from tests.webtune.executor_steps import outputs, pipeline, write_inputs
from tests.webtune.test_executors import every_task_done_once
from webtune import executors
from webtune.errors import UserError
from webtune.executors import ExecutorConfig, executor_config
from webtune.executors.local import LocalSettings

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FILES = ["000_00000.parquet", "000_00001.parquet", "000_00002.parquet"]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return write_inputs(tmp_path_factory.mktemp("inputs"))


@pytest.fixture(scope="module")
def local_bytes(inputs, tmp_path_factory):
    root = tmp_path_factory.mktemp("local")
    executors.run(pipeline(inputs, root / "out"), name="toy", tasks=3, logging_dir=root / "logs",
                  executor=ExecutorConfig("local", LocalSettings(workers=1)), progress=lambda line: None)
    return outputs(root / "out")


@pytest.fixture(scope="module")
def slurm():
    if reason := SlurmCluster.missing():
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the Slurm tests: {reason}")
        pytest.skip(reason)
    with SlurmCluster() as cluster:
        yield cluster


@pytest.fixture
def on_slurm(slurm, monkeypatch, tmp_path):
    """The user's path: SLURM_CONF names the cluster, WEBTUNE_EXECUTOR and executor.yaml pick Slurm."""
    monkeypatch.setenv("SLURM_CONF", str(slurm.conf))
    monkeypatch.setenv("WEBTUNE_EXECUTOR", "slurm")
    # the array tasks import tests.webtune.executor_steps (sbatch exports this environment)
    monkeypatch.setenv("PYTHONPATH", REPO)
    config = tmp_path / "executor.yaml"
    config.write_text("slurm:\n  time: '00:10:00'\n  mem_per_cpu_gb: 1\n  poll_seconds: 0.5\n")
    return executor_config(path=config)


def test_slurm_writes_the_local_bytes_and_returns_after_the_job_ended(inputs, local_bytes, slurm, on_slurm,
                                                                      tmp_path, capfd):
    lines = []
    executors.run(pipeline(inputs, tmp_path / "out"), name="toy", tasks=3,
                  logging_dir=tmp_path / "logs", executor=on_slurm, progress=lines.append)
    assert slurm.queue() == ""  # the array has ended: no task pending or running
    assert outputs(tmp_path / "out") == local_bytes
    assert sorted(local_bytes) == FILES
    assert lines[1].startswith("toy: Slurm job ") and "slurm_logs" in lines[1]
    assert every_task_done_once(lines[2:5])
    # each rank's log and stats land in logging_dir, the array's output beside them
    assert sorted(p.name for p in (tmp_path / "logs/logs").iterdir()) == [
        "task_00000.log", "task_00001.log", "task_00002.log"]
    assert len(list((tmp_path / "logs/slurm_logs").glob("*.out"))) == 3
    assert capfd.readouterr().out == ""


def test_a_failed_slurm_task_is_named_and_resumed_alone(inputs, local_bytes, slurm, on_slurm, tmp_path):
    with pytest.raises(UserError) as failed:
        executors.run(pipeline(inputs, tmp_path / "out", fail_rank=2), name="toy", tasks=3,
                      logging_dir=tmp_path / "logs", executor=on_slurm, progress=lambda line: None)
    assert str(failed.value) == (f"toy: 1 of 3 tasks failed (ranks [2]); see logs/task_00002.log in "
                                 f"{tmp_path / 'logs'}; a re-run resumes only those")
    assert slurm.queue() == ""  # no merge-stats job left waiting on the failed array
    lines = []
    executors.run(pipeline(inputs, tmp_path / "out"), name="toy", tasks=3,
                  logging_dir=tmp_path / "logs", executor=on_slurm, progress=lines.append)
    assert lines[0].startswith("toy: 1 of 3 tasks on slurm")
    assert outputs(tmp_path / "out") == local_bytes


def test_a_job_slurm_refuses_is_one_line_naming_the_settings(inputs, slurm, on_slurm, tmp_path, capfd):
    config = dataclasses.replace(on_slurm, settings=dataclasses.replace(on_slurm.settings, partition="gpu"))
    with pytest.raises(UserError) as refused:
        executors.run(pipeline(inputs, tmp_path / "out"), name="toy", tasks=3,
                      logging_dir=tmp_path / "logs", executor=config, progress=lambda line: None)
    assert str(refused.value) == ("toy: sbatch refused the job array (exit 1, its message is above): "
                                  "check slurm: in .webtune/executor.yaml")
    assert "invalid partition specified: gpu" in capfd.readouterr().err
    assert slurm.queue() == ""


def test_ray_at_ray_address_writes_the_local_bytes_and_resumes_a_failed_task(inputs, local_bytes, monkeypatch,
                                                                              tmp_path, capfd):
    for key, value in LOOPBACK_RAY.items():
        monkeypatch.setenv(key, value)
    # the head's workers import tests.webtune.executor_steps, as a cluster's import webtune
    with RayHead(env={"PYTHONPATH": REPO}) as head:
        monkeypatch.setenv("RAY_ADDRESS", head.address)
        monkeypatch.setenv("WEBTUNE_EXECUTOR", "ray")
        config = executor_config(path=tmp_path / "absent.yaml")
        assert config.settings.address == head.address
        with pytest.raises(UserError, match=r"^toy: 1 of 3 tasks failed \(ranks \[0\]\); see logs/task_0"):
            executors.run(pipeline(inputs, tmp_path / "out", fail_rank=0), name="toy", tasks=3,
                          logging_dir=tmp_path / "logs", executor=config, progress=lambda line: None)
        # Ray copies each task's log from its worker into logging_dir
        assert "RuntimeError: toy failure on rank 0" in (tmp_path / "logs/logs/task_00000.log").read_text()
        lines = []
        executors.run(pipeline(inputs, tmp_path / "out"), name="toy", tasks=3,
                      logging_dir=tmp_path / "logs", executor=config, progress=lines.append)
    assert lines[:2] == [f"toy: 1 of 3 tasks on ray, logs in {tmp_path / 'logs'}", "toy: task 0 done (3/3)"]
    assert outputs(tmp_path / "out") == local_bytes
    assert (tmp_path / "logs/logs/task_00001.log").read_text().count("Processing done for rank=1") == 1
    assert capfd.readouterr().out == ""
