"""Order-preserving map of a function over batches, in worker processes, with bounded memory.

clean and format process record batches independently and must emit them in input order (so outputs
and dedup decisions are deterministic). At most 2 batches per worker are in flight: memory is bounded by
the batch size, not by the corpus (Pool.imap would read the whole input ahead).
"""

import collections
import multiprocessing
from collections.abc import Callable, Iterable, Iterator


def ordered_map(fn: Callable, items: Iterable, workers: int, *args, initializer: Callable | None = None,
                initargs: tuple = ()) -> Iterator:
    """fn(item, *args) for each item, in order; in this process when workers <= 1.

    `initializer(*initargs)` runs once in each worker (or once here) before any item: per-process state
    such as a tokenizer is set up there instead of being pickled with every item.
    """
    if workers <= 1:
        if initializer is not None:
            initializer(*initargs)
        for item in items:
            yield fn(item, *args)
        return
    # fork: workers inherit loaded modules (torch & co.) instead of re-importing them.
    with multiprocessing.get_context("fork").Pool(workers, initializer=initializer,
                                                  initargs=initargs) as pool:
        pending = collections.deque()
        for item in items:
            pending.append(pool.apply_async(fn, (item, *args)))
            if len(pending) >= 2 * workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()
