"""The pool the unlocker fetches on: commits as results arrive, a stop that keeps what was paid for, and the
progress lines it reports without a terminal. Threads are real; each test orders them with events."""

import io
import sys
import threading

import pytest

from webtune.sources.pool import Pool, StopRequested, Tally

WAIT_S = 5.0  # a bound on every wait: a broken pool fails the test instead of hanging it


def tally(total, lines=None):
    return Tally(total, desc="test", unit="item", line="test: {done}/{total}, {failed} failed",
                 progress=(lines if lines is not None else []).append)


@pytest.fixture(autouse=True)
def no_terminal(monkeypatch):
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # as under dvc or CI: progress lines, no bar


def test_a_result_is_committed_when_it_arrives_not_in_list_order():
    committed, fast_done = [], threading.Event()

    def work(item):
        if item == "slow":  # finishes only once "fast" is committed: list order would wait forever
            return fast_done.wait(WAIT_S)
        return True

    def commit(item, result):
        committed.append((item, result))
        fast_done.set()
        return True

    Pool(work, commit, workers=2, stop=threading.Event(), tally=tally(2)).run(["slow", "fast"])
    assert committed == [("fast", True), ("slow", True)]


def test_a_failing_item_stops_the_run_keeps_what_finished_and_starts_nothing_more():
    stop, started, committed = threading.Event(), [], []
    lock = threading.Lock()

    def work(item):
        with lock:
            started.append(item)
        if item == "boom":
            raise ValueError("refused")
        if stop.wait(WAIT_S):  # in flight when the run stopped: it still finishes (and was paid for)
            return f"{item} page"
        raise AssertionError("the failing item did not stop the run")

    def commit(item, result):
        committed.append((item, result))
        return True

    with pytest.raises(ValueError, match="^refused$"):
        Pool(work, commit, workers=2, stop=stop, tally=tally(5)).run(["slow", "boom", "c", "d", "e"])
    assert sorted(started) == ["boom", "slow"] and committed == [("slow", "slow page")]


def test_a_stop_requested_is_not_the_reason_the_run_stopped():
    stop, reason_sent = threading.Event(), threading.Event()

    def work(item):
        if item == "quiet":  # sees the stop first and says so; the reason arrives after it
            stop.wait(WAIT_S)
            reason_sent.set()
            raise StopRequested(item)
        stop.set()
        reason_sent.wait(WAIT_S)
        raise RuntimeError("the fuse blew")

    with pytest.raises(RuntimeError, match="the fuse blew"):
        Pool(work, lambda item, result: True, workers=2, stop=stop, tally=tally(2)).run(["quiet", "loud"])


def test_without_a_terminal_progress_is_a_line_per_tenth_and_the_last():
    lines = []
    results = iter([True] * 12 + [False] * 3 + [True] * 10)  # committed on one thread: taken in order
    Pool(lambda item: item, lambda item, result: next(results), workers=3, stop=threading.Event(),
         tally=tally(25, lines)).run(range(25))
    assert lines == [f"test: {n}/25, {max(0, min(3, n - 12))} failed" for n in (2, 4, 6, 8, 10, 12, 14, 16,
                                                                              18, 20, 22, 24, 25)]
