"""The rate limiter and the 429 fuse on a fake clock: counts and waits are exact, nothing is waited for."""

import bisect

import pytest

from tests.webtune.sources.test_brightdata_unlocker import FakeTime
from webtune.sources.ratelimit import SPACING_MARGIN, RateLimitedError, RateLimiter, RateLimitFuse


def most_in_window(times, window):
    times = sorted(times)
    return max(bisect.bisect_left(times, t + window) - i for i, t in enumerate(times))


def test_starts_are_evenly_spaced_so_no_window_holds_more_than_the_limit():
    clock = FakeTime()
    limiter = RateLimiter(20, 1.0, clock=clock.clock, sleep=clock.sleep)
    starts = [limiter.acquire() for _ in range(100)]
    assert most_in_window(starts, 1.0) == 20
    assert starts[-1] - starts[0] == pytest.approx(99 * SPACING_MARGIN / 20)


def test_a_pause_holds_every_start_and_a_shorter_pause_does_not_shorten_it():
    clock = FakeTime()
    limiter = RateLimiter(100, 60.0, clock=clock.clock, sleep=clock.sleep)
    first = limiter.acquire()
    limiter.pause(30.0)
    limiter.pause(5.0)
    assert limiter.acquire() - first == pytest.approx(30.0)


def test_the_fuse_backs_off_2_4_8_16_32_unless_retry_after_says_otherwise():
    clock = FakeTime()
    fuse = RateLimitFuse(50, 300.0, clock=clock.clock)
    assert [fuse.record(retry_after_s=None, attempt=k, what="u") for k in range(6)] == [2, 4, 8, 16, 32, 32]
    assert fuse.record(retry_after_s=7.5, attempt=0, what="u") == 7.5
    assert fuse.record(retry_after_s=9999, attempt=0, what="u") == 300.0


def test_the_fuse_blows_at_its_count_within_the_window_only():
    clock = FakeTime()
    fuse = RateLimitFuse(3, 300.0, clock=clock.clock)
    fuse.record(retry_after_s=None, attempt=0, what="a")
    clock.sleep(301)  # the first one has left the window
    fuse.record(retry_after_s=None, attempt=0, what="b")
    fuse.record(retry_after_s=None, attempt=0, what="c")
    blown = r"^3 rate-limit replies \(HTTP 429\) within 300 s, the last for d:"
    with pytest.raises(RateLimitedError, match=blown):
        fuse.record(retry_after_s=None, attempt=0, what="d")
