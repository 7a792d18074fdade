"""Run a datatrove pipeline to completion on the configured executor: local processes, Slurm or Ray.

    from webtune import executors
    stats = executors.run(pipeline, name="dedup-signatures", tasks=params.tasks,
                          logging_dir=scratch / "logs" / "signatures")

Where tasks run, and how many at once, is no param (the same `tasks` give the same bytes on every
executor and any number of workers: datatrove shards inputs by task, never by worker):
`WEBTUNE_EXECUTOR` (local | slurm | ray) names the executor, else the git-ignored
`.webtune/executor.yaml` does, else local; that file also holds each executor's settings
(docs/executors.md), its parallelism among them (`workers`: tasks at once; `WEBTUNE_WORKERS` overrides
local's). `run` blocks until every task of the pipeline has ended, whatever
the executor, and skips tasks that datatrove's completion markers (`logging_dir/completions/NNNNN`)
say are done: a killed or failed stage resumes where it stopped when run again with the same
logging_dir. If any task failed, it raises one UserError naming the ranks and their log files.

Each executor is one module (webtune/executors/<name>.py, listed in webtune.registry.EXECUTORS) with
`SETTINGS`, the frozen dataclass of its section in executor.yaml, and
`run(pipeline, *, name, tasks, logging_dir, settings, progress)`, which returns once every
task has ended, completed or not.
"""

import contextlib
import dataclasses
import importlib
import json
import os
import threading
import time
import types
import typing
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import yaml
from datatrove.pipeline.base import PipelineStep
from datatrove.utils.stats import PipelineStats

from webtune import io
from webtune.errors import UserError
from webtune.registry import EXECUTORS

CONFIG = Path(".webtune/executor.yaml")  # git-ignored; relative to where dvc runs stages (the repo root)
ENV = "WEBTUNE_EXECUTOR"
WORKERS_ENV = "WEBTUNE_WORKERS"


@dataclasses.dataclass(frozen=True)
class ExecutorConfig:
    name: str = "local"
    settings: typing.Any = None  # the executor module's SETTINGS dataclass; None: its defaults


def executor_config(environ: Mapping[str, str] = os.environ, path: Path = CONFIG) -> ExecutorConfig:
    """The executor `environ[WEBTUNE_EXECUTOR]` names, else `path`'s `executor:`, else local, with its
    section of `path`, local's `workers` from `environ[WEBTUNE_WORKERS]` if set (an unknown executor, key
    or mistyped value is a one-line error naming it)."""
    raw = {}
    if path.exists():
        raw = yaml.safe_load(path.read_text()) or {}
        if not isinstance(raw, dict):
            raise UserError(f"{path}: expected a mapping (executor: and one section per executor)")
    unknown = sorted(set(raw) - {"executor", *EXECUTORS})
    if unknown:
        raise UserError(f"{path}: unknown key {unknown[0]!r} "
                        f"(expected 'executor' or one of {list(EXECUTORS)})")
    name = environ.get(ENV) or raw.get("executor") or "local"
    if name not in EXECUTORS:
        where = ENV if environ.get(ENV) else f"{path}: executor"
        raise UserError(f"{where}: {name!r} is not one of {list(EXECUTORS)}")
    # Every section is checked, not only the chosen one: a typo in slurm: shows on a local run too.
    settings = {key: _settings(key, raw.get(key) or {}, path) for key in EXECUTORS}
    if name == "ray" and environ.get("RAY_ADDRESS"):
        # Ray's own variable wins over the file, as WEBTUNE_EXECUTOR does
        settings["ray"] = dataclasses.replace(settings["ray"], address=environ["RAY_ADDRESS"])
    if (workers := _workers(environ)) is not None:
        # tests and benchmarks size the local pool without writing a file (no param: the bytes are the
        # same for any number of workers). Slurm's and Ray's `workers` stay the file's: a cluster's
        # limits are its own.
        settings["local"] = dataclasses.replace(settings["local"], workers=workers)
    return ExecutorConfig(name, settings[name])


def _workers(environ: Mapping[str, str]) -> int | None:
    value = environ.get(WORKERS_ENV)
    if not value:
        return None
    if not (value.isascii() and value.isdigit() and int(value) >= 1):
        raise UserError(f"{WORKERS_ENV}: {value!r} is not a positive integer")
    return int(value)


def run(pipeline: list[PipelineStep], *, name: str, tasks: int, logging_dir: Path,
        executor: ExecutorConfig | None = None, progress: Callable[[str], None] = io.stderr) -> PipelineStats:
    """Run `tasks` tasks of `pipeline` (as many at once as the executor's settings allow) until each
    has ended; return datatrove's stats merged over all `tasks` ranks,
    those completed by an earlier run included. Raises UserError if any rank is still incomplete."""
    executor = executor or executor_config()
    module = importlib.import_module(EXECUTORS[executor.name])
    settings = executor.settings if executor.settings is not None else module.SETTINGS()
    # Absolute: Slurm nodes and Ray workers do not start in this process's working directory.
    logging_dir = Path(logging_dir).resolve()
    todo = incomplete_ranks(logging_dir, tasks)
    if not todo:
        progress(f"{name}: all {tasks} tasks already complete in {logging_dir}")
        return merged_stats(logging_dir, tasks)
    progress(f"{name}: {len(todo)} of {tasks} tasks on {executor.name}, logs in {logging_dir}")
    start = time.perf_counter()
    with _reporting(logging_dir, tasks, name, progress):
        module.run(pipeline, name=name, tasks=tasks, logging_dir=logging_dir, settings=settings,
                   progress=progress)
    failed = incomplete_ranks(logging_dir, tasks)
    if failed:
        logs = _first([f"logs/task_{rank:05d}.log" for rank in failed], 3)
        raise UserError(f"{name}: {len(failed)} of {tasks} tasks failed (ranks [{_first(failed, 10)}]); "
                        f"see {logs} in {logging_dir}; a re-run resumes only those")
    progress(f"{name}: all {tasks} tasks complete, {len(todo)} run in {time.perf_counter() - start:.1f} s")
    return merged_stats(logging_dir, tasks)


def _first(items: list, n: int) -> str:
    """The first `n` items, comma-separated: an error line stays one readable line."""
    return ", ".join(map(str, items[:n])) + (", ..." if len(items) > n else "")


def incomplete_ranks(logging_dir: Path, tasks: int) -> list[int]:
    """Ranks in range(tasks) without datatrove's completion marker."""
    done = set(os.listdir(logging_dir / "completions")) if (logging_dir / "completions").is_dir() else set()
    return [rank for rank in range(tasks) if f"{rank:05d}" not in done]


def merged_stats(logging_dir: Path, tasks: int) -> PipelineStats:
    """Every rank's stats/NNNNN.json summed (what datatrove's merge_stats tool does), also written to
    logging_dir/stats.json. The local executor sums only the ranks it ran itself (datatrove #360)."""
    total = PipelineStats()
    for rank in range(tasks):
        total += PipelineStats.from_json(json.loads((logging_dir / "stats" / f"{rank:05d}.json").read_text()))
    io.write_text(total.to_json(), logging_dir / "stats.json")
    return total


@contextlib.contextmanager
def _reporting(logging_dir: Path, tasks: int, name: str, progress: Callable[[str], None],
               every: float = 0.5) -> Iterator[None]:
    """A line per task that completes, from its completion marker: the same on every executor, and the
    only task output on the terminal (each task's full log is in logs/task_NNNNN.log)."""
    seen = set(range(tasks)) - set(incomplete_ranks(logging_dir, tasks))
    stop = threading.Event()

    def report() -> None:
        for rank in sorted(set(range(tasks)) - set(incomplete_ranks(logging_dir, tasks)) - seen):
            seen.add(rank)
            progress(f"{name}: task {rank} done ({len(seen)}/{tasks})")

    def watch() -> None:
        while not stop.wait(every):
            report()

    watcher = threading.Thread(target=watch, name=f"{name}-progress", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        stop.set()
        watcher.join()
        report()


def _settings(key: str, section: dict, path: Path):
    """The executor module's SETTINGS built from its section of executor.yaml, checked key by key."""
    if not isinstance(section, dict):
        raise UserError(f"{path}: {key}: expected a mapping of settings")
    cls = importlib.import_module(EXECUTORS[key]).SETTINGS
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for field, value in section.items():
        if field not in hints:
            raise UserError(f"{path}: {key}.{field} is not a setting (one of {names})")
        if not _fits(value, hints[field]):
            raise UserError(f"{path}: {key}.{field}: {value!r} is not {_type_name(hints[field])}")
    try:
        return cls(**section)
    except ValueError as e:  # a range a settings class checks itself ("workers: 0 is below 1")
        raise UserError(f"{path}: {key}.{e}") from None


def _fits(value, hint) -> bool:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return any(_fits(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    kind = typing.get_origin(hint) or hint
    if kind is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def _type_name(hint) -> str:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(h) for h in typing.get_args(hint))
    return "null" if hint is type(None) else (typing.get_origin(hint) or hint).__name__
