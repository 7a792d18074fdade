"""Paid requests on a few threads, each result committed on the calling thread the moment it arrives.

    pool = Pool(fetch_page, commit, workers=4, stop=client.stop, tally=Tally(len(urls), ...))
    pool.run(urls)             # returns once every URL is committed; raises what stopped the run

Why commit on the calling thread: the ledger's SQLite connection belongs to the thread that opened it.
Why as each result arrives, not in list order (as `Executor.map` would hand them back): one slow page
would hold back the commits of every page after it, and a run killed meanwhile would pay for them
again. At most `workers` items are in flight, so nothing queues behind a stop.

Stopping: `work` raising anything (a refused token, the 429 fuse) sets `stop` at once, on its own
thread, so no other worker starts a request after a run-stopping reply; a worker that finds `stop` set
raises StopRequested instead of requesting. The calling thread then waits for the requests in flight,
commits those that finished (they are paid for), and raises the first real error. Ctrl-C does the same.
"""

import itertools
import sys
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Generic, TypeVar

from tqdm import tqdm

T = TypeVar("T")
R = TypeVar("R")


class StopRequested(Exception):
    """The run was stopping when this item came up: it was not requested."""


class Tally:
    """Progress of `total` results: a tqdm bar when stderr is a terminal, else a `progress` line per 10%
    (`line` formatted with done, total and failed)."""

    def __init__(self, total: int, *, desc: str, unit: str, line: str, progress: Callable[[str], None]):
        self.bar = tqdm(total=total, desc=desc, unit=unit, disable=None, file=sys.stderr)
        self.total, self.line, self.progress = total, line, progress
        self.every = max(1, total // 10)  # without a terminal (CI, dvc logs): a line per 10%
        self.done = self.failed = 0

    def add(self, ok: bool) -> None:
        self.done += 1
        self.failed += not ok
        self.bar.update()
        self.bar.set_postfix(failed=self.failed)
        if self.bar.disable and (self.done % self.every == 0 or self.done == self.total):
            self.progress(self.line.format(done=self.done, total=self.total, failed=self.failed))

    def close(self) -> None:
        self.bar.close()


class Pool(Generic[T, R]):
    """`work(item)` on `workers` threads; `commit(item, result) -> ok` on the calling thread."""

    def __init__(
        self,
        work: Callable[[T], R],
        commit: Callable[[T, R], bool],
        *,
        workers: int,
        stop: threading.Event,
        tally: Tally,
    ):
        self.work, self.commit, self.workers = work, commit, workers
        self.stop, self.tally = stop, tally

    def run(self, todo: Iterable[T]) -> None:
        queued = iter(todo)
        running: set[Future] = set()
        with ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="pool") as executor:
            try:
                while True:
                    if not self.stop.is_set():
                        for item in itertools.islice(queued, self.workers - len(running)):
                            running.add(executor.submit(self._work, item))
                    if not running:
                        return
                    finished, running = wait(running, return_when=FIRST_COMPLETED)
                    for future in finished:
                        if future.exception() is None:
                            self.tally.add(self.commit(*future.result()))
                    # The worker that stopped the run raised the reason; the others, StopRequested.
                    reasons = [f.exception() for f in finished if f.exception() is not None
                               and not isinstance(f.exception(), StopRequested)]
                    if reasons:
                        raise reasons[0]
            except BaseException:
                self.stop.set()  # workers finish their current request and start no other
                for future in running:
                    future.cancel()
                for future in running:  # waits for each; what finished before the stop is paid for: keep it
                    if not future.cancelled() and future.exception() is None:
                        self.commit(*future.result())
                raise
            finally:
                self.tally.close()

    def _work(self, item: T) -> tuple[T, R]:
        try:
            return item, self.work(item)
        except BaseException:
            self.stop.set()  # at once, on this thread: no other worker starts a request after this
            raise
