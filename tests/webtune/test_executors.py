"""The executor seam on the local executor: byte-identical outputs for any worker count, a failed task
named in one line and resumed alone, a few tasks per pool process, and where the executor's name and
settings come from. Slurm and Ray against real runtimes: tests/webtune/test_executors_cluster.py."""

import collections
import dataclasses
import os

import pytest

from tests.webtune.executor_steps import RecordProcess, outputs, pipeline, write_inputs
from webtune import executors
from webtune.errors import UserError
from webtune.executors import ExecutorConfig, executor_config
from webtune.executors import local as local_executor
from webtune.executors.local import LocalSettings, cores
from webtune.executors.slurm import SlurmSettings


def every_task_done_once(lines: list[str]) -> bool:
    """One line per rank, counted 1/3, 2/3, 3/3 in the order the tasks finished (which the watcher sees
    in polls: tasks finishing in one poll are counted in rank order, others as they come)."""
    ranks = sorted(line.split(" done (")[0] for line in lines)
    counts = sorted(line.split(" done (")[1] for line in lines)
    return ranks == ["toy: task 0", "toy: task 1", "toy: task 2"] and counts == ["1/3)", "2/3)", "3/3)"]
FILES = ["000_00000.parquet", "000_00001.parquet", "000_00002.parquet"]  # ParquetWriter's ${rank}.parquet


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return write_inputs(tmp_path_factory.mktemp("inputs"))


def local(workers: int) -> ExecutorConfig:
    return ExecutorConfig("local", LocalSettings(workers=workers))


def run_local(inputs, root, workers, fail_rank=None, lines=None):
    return executors.run(pipeline(inputs, root / "out", fail_rank), name="toy", tasks=3,
                         logging_dir=root / "logs", executor=local(workers),
                         progress=(lines.append if lines is not None else lambda line: None))


def test_one_worker_and_two_workers_write_the_same_bytes(inputs, tmp_path, capfd):
    lines = []
    stats = run_local(inputs, tmp_path / "one", workers=1, lines=lines)
    run_local(inputs, tmp_path / "two", workers=2)
    one, two = outputs(tmp_path / "one" / "out"), outputs(tmp_path / "two" / "out")
    assert sorted(one) == FILES
    assert one == two
    # 3 files of 4 documents, one file per task
    assert [s.name for s in stats.stats] == [step.stats.name for step in pipeline(inputs, tmp_path)]
    assert stats.stats[1]["shouted"].total == 12
    assert lines[0].startswith("toy: 3 of 3 tasks on local, logs in ")
    assert every_task_done_once(lines[1:4])
    out, err = capfd.readouterr()
    assert out == ""  # a stage's stdout stays clean: datatrove logs to stderr, tasks' INFO only to files
    assert "Launching pipeline" not in err and "Stats" not in err


def test_a_failed_task_is_named_in_one_line_and_a_rerun_resumes_only_it(inputs, tmp_path):
    with pytest.raises(UserError) as failed:
        run_local(inputs, tmp_path, workers=2, fail_rank=1)
    message = str(failed.value)
    assert "\n" not in message
    assert message == ("toy: 1 of 3 tasks failed (ranks [1]); see logs/task_00001.log in "
                       f"{tmp_path / 'logs'}; a re-run resumes only those")
    assert "RuntimeError: toy failure on rank 1" in (tmp_path / "logs/logs/task_00001.log").read_text()
    done = {name: (tmp_path / "out" / name).stat().st_mtime_ns for name in (FILES[0], FILES[2])}

    lines = []
    stats = run_local(inputs, tmp_path, workers=2, lines=lines)  # fixed: the step no longer raises
    assert lines[0].startswith("toy: 1 of 3 tasks on local")
    assert lines[1] == "toy: task 1 done (3/3)"
    assert {name: (tmp_path / "out" / name).stat().st_mtime_ns for name in done} == done  # not re-run
    assert stats.stats[1]["shouted"].total == 12  # merged over all 3 ranks, the earlier run's 2 included
    fresh = tmp_path / "fresh"
    run_local(inputs, fresh, workers=1)
    assert outputs(tmp_path / "out") == outputs(fresh / "out")


def task_processes(workers: int, tasks: int, root) -> dict[str, str]:
    """rank -> the id of the process that ran it."""
    executors.run([RecordProcess(root / "pids")], name="toy", tasks=tasks, logging_dir=root / "logs",
                  executor=local(workers), progress=lambda line: None)
    return {p.name: p.read_text() for p in (root / "pids").iterdir()}


def test_a_pool_process_runs_a_few_tasks_then_a_fresh_one_and_one_worker_runs_them_here(tmp_path):
    # 12 tasks on 2 workers: long-lived workers would run 6 each (and keep what those allocated)
    pooled = task_processes(2, 12, tmp_path / "pool")
    assert sorted(pooled, key=int) == [str(r) for r in range(12)]
    per_process = collections.Counter(pooled.values())
    assert max(per_process.values()) <= local_executor.TASKS_PER_PROCESS and len(per_process) >= 3
    assert str(os.getpid()) not in per_process
    assert set(task_processes(1, 3, tmp_path / "here").values()) == {str(os.getpid())}


def test_a_complete_logging_dir_runs_nothing(inputs, tmp_path):
    run_local(inputs, tmp_path, workers=1)
    lines = []
    stats = run_local(inputs, tmp_path, workers=1, fail_rank=0, lines=lines)  # would raise if it ran
    assert lines == [f"toy: all 3 tasks already complete in {tmp_path / 'logs'}"]
    assert stats.stats[1]["shouted"].total == 12


def test_the_environment_variable_wins_over_the_file(tmp_path):
    config = tmp_path / "executor.yaml"
    config.write_text("executor: ray\nslurm:\n  partition: cpu\n  time: '01:00:00'\n"
                      "  sbatch_args: {account: webtune}\n")
    assert executor_config({}, config).name == "ray"
    chosen = executor_config({"WEBTUNE_EXECUTOR": "slurm"}, config)
    assert chosen == ExecutorConfig("slurm", SlurmSettings(partition="cpu", time="01:00:00",
                                                           sbatch_args={"account": "webtune"}))
    assert executor_config({}, tmp_path / "absent.yaml") == ExecutorConfig("local", LocalSettings())


def test_local_workers_default_to_the_cores_this_process_may_use_and_the_environment_wins(tmp_path):
    assert LocalSettings().workers == cores() == len(os.sched_getaffinity(0))
    config = tmp_path / "executor.yaml"
    config.write_text("local:\n  workers: 3\nslurm:\n  workers: 40\n")
    assert executor_config({}, config) == local(3)
    assert executor_config({"WEBTUNE_WORKERS": "5"}, config) == local(5)
    # the local pool's only: a cluster's limits are its own
    on_slurm = executor_config({"WEBTUNE_EXECUTOR": "slurm", "WEBTUNE_WORKERS": "8"}, config)
    assert on_slurm.settings == dataclasses.replace(SlurmSettings(), workers=40)


def test_ray_address_comes_from_the_environment_before_the_file(tmp_path):
    config = tmp_path / "executor.yaml"
    config.write_text("executor: ray\nray:\n  address: head:6379\n")
    assert executor_config({}, config).settings.address == "head:6379"
    assert executor_config({"RAY_ADDRESS": "10.0.0.7:6379"}, config).settings.address == "10.0.0.7:6379"


@pytest.mark.parametrize("text, environ, message", [
    ("", {"WEBTUNE_EXECUTOR": "dask"}, "WEBTUNE_EXECUTOR: 'dask' is not one of ['local', 'slurm', 'ray']"),
    ("executor: spark\n", {}, "{config}: executor: 'spark' is not one of ['local', 'slurm', 'ray']"),
    ("executer: slurm\n", {}, "{config}: unknown key 'executer' (expected 'executor' or one of "
                              "['local', 'slurm', 'ray'])"),
    ("slurm:\n  partiton: cpu\n", {}, "{config}: slurm.partiton is not a setting (one of ['partition', "),
    ("slurm:\n  cpus_per_task: two\n", {}, "{config}: slurm.cpus_per_task: 'two' is not int"),
    ("ray:\n  address: 6379\n", {}, "{config}: ray.address: 6379 is not str or null"),
    ("local:\n  workers: two\n", {}, "{config}: local.workers: 'two' is not int"),
    ("local:\n  workers: 0\n", {}, "{config}: local.workers: 0 is below 1"),
    ("", {"WEBTUNE_WORKERS": "two"}, "WEBTUNE_WORKERS: 'two' is not a positive integer"),
    ("", {"WEBTUNE_WORKERS": "0"}, "WEBTUNE_WORKERS: '0' is not a positive integer"),
    ("", {"WEBTUNE_WORKERS": "-2"}, "WEBTUNE_WORKERS: '-2' is not a positive integer"),
])
def test_an_unknown_executor_or_setting_is_named(tmp_path, text, environ, message):
    config = tmp_path / "executor.yaml"
    config.write_text(text)
    with pytest.raises(UserError) as bad:
        executor_config(environ, config)
    assert str(bad.value).startswith(message.format(config=config))
    assert "\n" not in str(bad.value)


def test_settings_keep_their_defaults_where_the_file_is_silent(tmp_path):
    config = tmp_path / "executor.yaml"
    config.write_text("executor: slurm\nslurm:\n  partition: cpu\n")
    assert executor_config({}, config).settings == dataclasses.replace(SlurmSettings(), partition="cpu")
