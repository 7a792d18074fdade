"""The default executor: datatrove's LocalPipelineExecutor, tasks in this process (workers 1) or in a
pool of `workers` processes, each task in a fresh one. Its one setting, `local.workers` in
.webtune/executor.yaml (or WEBTUNE_WORKERS), defaults to the cores this process may use."""

import dataclasses
import os
from collections.abc import Callable
from copy import deepcopy
from pathlib import Path

import multiprocess
from datatrove.executor import LocalPipelineExecutor
from datatrove.pipeline.base import PipelineStep
from datatrove.utils.logging import logger
from datatrove.utils.stats import PipelineStats

# forkserver (datatrove's default), not fork (which webtune.parallel uses): a forked child inherits
# the parent's Rust thread pools in a broken state. After the parent called rensa's batch API
# (RMinHash.digests_from_token_sets, rayon), a fork-started worker calling it again hung (60 s timeout,
# rensa 0.5.0); under forkserver it returned. pyarrow survived fork (Arrow re-creates its pool). The
# price: a 2-task pool of a pipeline importing pyarrow, resiliparse and rensa started in 0.13-0.24 s
# with fork against 0.5-1.3 s with forkserver (1.2-2.5 s for the first pool of a process, which starts
# the server) on 2 busy EPYC cores: under a second a pipeline, against hangs. The server preloads the
# steps' modules so that each worker forks with them imported.
START_METHOD = "forkserver"


def cores() -> int:
    """The cores this process may run on (its affinity mask, which taskset and cpusets narrow), not
    the machine's count."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@dataclasses.dataclass(frozen=True)
class LocalSettings:
    # tasks at once, one process each: more than the cores only adds memory; 1 runs them in this process
    workers: int = dataclasses.field(default_factory=cores)

    def __post_init__(self):
        if self.workers < 1:
            raise ValueError(f"workers: {self.workers} is below 1")


SETTINGS = LocalSettings
# A pool worker exits after this many tasks. A long-lived worker keeps what its tasks allocated (validate's
# Great Expectations, batch after batch), so a stage's peak memory grew with its tasks per worker, hence
# with the corpus (bench/data_stages.py: validate +23% PSS from 20k to 100k pages); a capped worker's
# growth is bounded whatever the corpus. validate's passes on 40 shards, 2 workers (2 cores, load 7):
# each worker peaked at 160 MB PSS long-lived and 105 MB with one task each, the process tree at 735 MB
# and 585 MB. One task a process cost ~0.15 s a task (a fork of the forkserver and its steps' first-use
# set-up): 1.3 of clean's 14.5 s on 20k pages, whose passes have 4 + 16 + 1 + 4 tasks. 4 keeps the
# growth to a few tasks' worth and the forks to a quarter.
TASKS_PER_PROCESS = 4


class _Executor(LocalPipelineExecutor):
    def run(self) -> None:
        """datatrove's run, with a pool whose workers exit after TASKS_PER_PROCESS tasks
        (maxtasksperchild), which its run cannot be asked for. Left out: the Manager that hands out local
        ranks and counts completions (this executor logs neither), `depends`, and the stats sum (the seam
        reads every rank's stats file)."""
        self.save_executor_as_json()
        ranks = self.get_incomplete_ranks(range(self.tasks))
        if self.workers == 1:
            pipeline = self.pipeline
            for rank in ranks:
                self.pipeline = deepcopy(pipeline)  # as datatrove: no step state carried between ranks
                self._run_for_rank(rank)
            self.pipeline = pipeline
            return
        with multiprocess.get_context(self.start_method).Pool(self.workers,
                                                               maxtasksperchild=TASKS_PER_PROCESS) as pool:
            for _ in pool.imap_unordered(self._run_for_rank, ranks):  # chunksize 1: a task at a time
                pass

    def _run_for_rank(self, rank: int, local_rank: int = 0, node_rank: int = -1) -> PipelineStats:
        # datatrove echoes a task's INFO log (its pipeline, a line per file, a stats table) to stderr for
        # local_rank 0 and only its errors otherwise: every task here counts as "not first", and its full
        # log stays in logs/task_NNNNN.log. Its "N/M tasks completed" lines are silenced in the workers:
        # webtune.executors reports each task once, from the completion markers.
        logger.disable("datatrove.executor.local")
        try:
            return super()._run_for_rank(rank, local_rank + 1, node_rank)
        except Exception:
            # Logged in full in the task's log. The rank stays incomplete and the other tasks go on,
            # as on Slurm and Ray; the seam then names every failed rank at once.
            return PipelineStats()


def run(pipeline: list[PipelineStep], *, name: str, tasks: int, logging_dir: Path, settings: LocalSettings,
        progress: Callable[[str], None]) -> None:
    workers = min(settings.workers, tasks)
    if workers > 1:
        # effective only before this process's first pool starts the server; later pools reuse it
        multiprocess.get_context(START_METHOD).set_forkserver_preload(
            ["__main__", *sorted({type(step).__module__ for step in pipeline})])
    executor = _Executor(pipeline, tasks=tasks, workers=workers, logging_dir=str(logging_dir),
                         start_method=START_METHOD)
    # its skip and summary lines (a multi-line stats table) are the seam's to print
    logger.disable("datatrove.executor.local")
    try:
        executor.run()
    finally:
        logger.enable("datatrove.executor.local")
