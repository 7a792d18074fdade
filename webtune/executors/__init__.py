"""Interim: runs a datatrove pipeline locally (replaced by the executors seam)."""

from pathlib import Path

from datatrove.executor.local import LocalPipelineExecutor

from webtune.errors import UserError


def executor_config():
    return None


def run(pipeline, *, name: str, tasks: int, workers: int, logging_dir: Path, executor=None) -> None:
    ex = LocalPipelineExecutor(pipeline, tasks=tasks, workers=min(workers, tasks),
                               logging_dir=str(logging_dir), start_method="fork")
    ex.run()
    if incomplete := ex.get_incomplete_ranks():
        raise UserError(f"{name}: tasks {incomplete} did not complete; logs in {logging_dir}/logs")
