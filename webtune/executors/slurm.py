"""Slurm: datatrove's SlurmPipelineExecutor submits one job array (a task per array index), and this
module waits until the array has left the queue, so that a DVC stage ends when its tasks have ended.

datatrove's `run()` returns right after `sbatch`. Waiting is polling, not `sbatch --wait`: datatrove
writes its sbatch arguments into the script, and there `--wait` would also hold its merge-stats job,
which depends `afterok` on the array and so, once a task fails, waits forever (DependencyNeverSatisfied):
that job is not submitted at all here (webtune.executors merges the stats), and squeue is asked every
`poll_seconds` which of our job ids are still queued or running. Success is read from datatrove's
completion markers afterwards, as on every executor (sacct needs accounting, which many clusters lack).

Each array task runs `launch_pickled_pipeline logging_dir/executor.pik` (datatrove's console script) on
a node: `venv`'s bin/ goes first on its PATH, and the job inherits the submitting environment
(`--export=ALL`), so the node must see the same paths (a shared filesystem) and import the same
pipeline steps.
"""

import dataclasses
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from datatrove.executor import SlurmPipelineExecutor
from datatrove.pipeline.base import PipelineStep
from datatrove.utils.logging import logger

from webtune.errors import UserError


@dataclasses.dataclass(frozen=True)
class SlurmSettings:
    partition: str | None = None  # None: the cluster's default partition
    time: str = "24:00:00"  # each array task's limit (sbatch --time); a task past it is killed, incomplete
    cpus_per_task: int = 1  # more CPUs per task only buy memory: a datatrove task is one process
    mem_per_cpu_gb: int = 2
    qos: str | None = None  # None: the account's default QOS
    sbatch_args: dict = dataclasses.field(default_factory=dict)  # more #SBATCH lines: {account: proj}
    venv: str = sys.prefix  # the Python environment the tasks run in: this one, on a shared filesystem
    workers: int = -1  # array tasks at once (sbatch --array=...%N); -1: as many as the cluster gives
    poll_seconds: float = 10.0  # how often squeue is asked whether the array has ended


SETTINGS = SlurmSettings


class _JobIds:
    """datatrove's job_id_retriever, recording every id it submits (more than one array when tasks
    exceed max_array_size) so that all of them are waited on, or cancelled."""

    def __init__(self):
        self.ids: list[str] = []

    def __call__(self, sbatch_output: str) -> str:
        self.ids.append(sbatch_output.split()[-1])  # "Submitted batch job 1234"
        return self.ids[-1]


class _Executor(SlurmPipelineExecutor):
    def launch_merge_stats(self) -> None:
        """Not submitted: it waits afterok on the array, forever once a task fails (module docstring)."""

    def get_sbatch_args(self, max_array: int = 1) -> dict:
        # datatrove writes `#SBATCH --partition=None` for an unset partition; leave unset ones out
        return {key: value for key, value in super().get_sbatch_args(max_array).items() if value is not None}


def run(pipeline: list[PipelineStep], *, name: str, tasks: int, logging_dir: Path, settings: SlurmSettings,
        progress: Callable[[str], None]) -> None:
    if missing := [cmd for cmd in ("sbatch", "squeue", "scancel") if shutil.which(cmd) is None]:
        raise UserError(f"the slurm executor needs {', '.join(missing)}: run dvc repro on a login node")
    job_ids = _JobIds()
    executor = _Executor(
        pipeline, tasks=tasks, time=settings.time, partition=settings.partition,
        cpus_per_task=settings.cpus_per_task, mem_per_cpu_gb=settings.mem_per_cpu_gb,
        workers=settings.workers, job_name=name, qos=settings.qos or "",
        env_command=f"export PATH={shlex.quote(str(Path(settings.venv) / 'bin'))}:$PATH",
        sbatch_args=dict(settings.sbatch_args), logging_dir=str(logging_dir), job_id_retriever=job_ids)
    # launch_job, not run(): run() takes SLURM_ARRAY_TASK_ID in the environment (a `dvc repro` inside an
    # array job) to mean "run that rank here" instead of submitting. Its "Launching..." lines are replaced
    # by the one below.
    logger.disable("datatrove.executor.slurm")
    try:
        executor.launch_job()
    except subprocess.CalledProcessError as e:
        # sbatch printed why (an unknown partition or account, a limit) on stderr, just above
        raise UserError(f"{name}: sbatch refused the job array (exit {e.returncode}, its message is above): "
                        "check slurm: in .webtune/executor.yaml") from e
    finally:
        logger.enable("datatrove.executor.slurm")
    if not job_ids.ids:
        return  # nothing was incomplete
    progress(f"{name}: Slurm job {', '.join(job_ids.ids)}; its output in {executor.slurm_logs_folder}")
    try:
        wait(job_ids.ids, settings.poll_seconds)
    except BaseException:
        # Interrupted (Ctrl-C on dvc repro): leave no array behind to write into the outputs of the next run.
        subprocess.run(["scancel", *job_ids.ids], capture_output=True)
        raise


def wait(job_ids: list[str], poll_seconds: float, patience: int = 30) -> None:
    """Return once none of `job_ids` is pending, running or completing. squeue forgets finished jobs
    after MinJobAge (then says "Invalid job id"): that counts as ended too. `patience` failed squeue
    calls in a row (a controller restarting) are tolerated, then it is an error."""
    failures = 0
    while True:
        queued = subprocess.run(["squeue", "--noheader", "--jobs", ",".join(job_ids), "--format", "%i"],
                                capture_output=True, text=True)
        if queued.returncode == 0 and not queued.stdout.strip():
            return
        if queued.returncode != 0:
            if "Invalid job id" in queued.stderr:
                return
            failures += 1
            if failures >= patience:
                raise UserError(f"squeue failed {failures} times waiting for job {','.join(job_ids)}: "
                                f"{' '.join(queued.stderr.split())}")
        else:
            failures = 0
        time.sleep(poll_seconds)
