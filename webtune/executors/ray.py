"""Ray: datatrove's RayPipelineExecutor on the cluster at `address` (RAY_ADDRESS wins over the file),
or on a Ray runtime started in this process for the run when there is none.

Install the extra: `pip install 'webtune[ray]'`. datatrove's run() already blocks until every task
has ended; it retries a task whose worker died (up to 3 times), not one whose step raised. Every node
must see logging_dir and the pipeline's paths at the same place (a shared filesystem) and import the
same pipeline steps (the same environment); workers do not start in the driver's working directory.
"""

import dataclasses
import importlib.util
import os
from collections.abc import Callable
from pathlib import Path

from datatrove.executor import RayPipelineExecutor
from datatrove.pipeline.base import PipelineStep
from datatrove.utils.logging import logger

from webtune.errors import UserError


@dataclasses.dataclass(frozen=True)
class RaySettings:
    address: str | None = None  # "host:6379" or "auto"; None: a local runtime for the run's length
    cpus_per_task: int = 1  # Ray CPUs each task reserves: tasks at once = the cluster's CPUs / this
    mem_per_cpu_gb: float = 2  # Ray memory each task reserves, per CPU
    workers: int = -1  # tasks at once at most; -1: as many as the resources allow


SETTINGS = RaySettings


def run(pipeline: list[PipelineStep], *, name: str, tasks: int, logging_dir: Path, settings: RaySettings,
        progress: Callable[[str], None]) -> None:
    if importlib.util.find_spec("ray") is None:
        raise UserError("the ray executor needs Ray: pip install 'webtune[ray]'")
    import ray

    started_here = not ray.is_initialized()
    if started_here:
        # log_to_driver=False: tasks' output would reach this process's stdout; each task's log is
        # copied to logging_dir/logs instead. A local runtime gets the CPUs `workers` tasks reserve, else
        # Ray's count of this machine's. (ray.init reads RAY_ADDRESS itself when address is None)
        cluster = settings.address or os.environ.get("RAY_ADDRESS")
        cpus = {"num_cpus": settings.workers * settings.cpus_per_task} if settings.workers > 0 else {}
        local = {} if cluster else {**cpus, "include_dashboard": False}
        ray.init(address=settings.address, log_to_driver=False, **local)
    # Its driver lines (a warning that a local logging_dir must be shared, a stats table) are the seam's
    # and docs/executors.md's to say; tasks still log in full to logs/task_NNNNN.log.
    logger.disable("datatrove.executor.ray")
    try:
        RayPipelineExecutor(
            pipeline, tasks=tasks, workers=settings.workers, logging_dir=str(logging_dir),
            cpus_per_task=settings.cpus_per_task, mem_per_cpu_gb=settings.mem_per_cpu_gb).run()
    finally:
        logger.enable("datatrove.executor.ray")
        if started_here:
            ray.shutdown()
