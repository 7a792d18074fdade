"""Client-side request pacing for paid APIs: evenly spaced starts, shared pauses, and a 429 fuse.

    limiter = RateLimiter(limit=100, period_s=60)              # a trial account: 100 requests/min
    limiter.acquire()                                          # blocks until a request may start
    fuse = RateLimitFuse(max_429s=9, window_s=300)
    delay = fuse.record(retry_after_s=None, attempt=0, what=url)  # 2 s, then 4/8/16/32; raises when blown

Starts are spaced `period_s / limit` apart (plus SPACING_MARGIN), which puts at most `limit` starts in
any window of `period_s`, wherever the window falls, and never sends a burst. Why not aiolimiter (what
brightdata-sdk uses): it is a leaky bucket, which lets `limit` requests go at once and `limit` more as it
drains, so one window can see up to twice the limit. A sliding log of start times would keep the count,
but still lets `limit` requests leave together; measured at the emulator (bench/brightdata_rate.py),
such a burst arrived as 26 requests in one second at a limit of 20, because network jitter moves
arrivals across the window's edges. A provider counts arrivals.

All threads share one limiter: a 429 pauses everyone (`pause`), not just the worker that got it, since
the provider counts the account's requests, not the worker's.
"""

import collections
import threading
import time
from collections.abc import Callable

from webtune.errors import UserError

BACKOFF_429_S = (2.0, 4.0, 8.0, 16.0, 32.0)  # Bright Data's documented backoff when no Retry-After comes
MAX_RETRY_AFTER_S = 300.0  # a longer Retry-After is honoured for this long, then the request is retried
# Starts are spaced 2% wider than period/limit: arrivals jitter by milliseconds, and at exactly
# period/limit a late request and an early one could put limit + 1 arrivals in one window.
SPACING_MARGIN = 1.02


class RateLimitedError(UserError):
    """Too many 429s in the fuse's window: the run stops before the provider blocks the IP."""


class RateLimiter:
    """Starts at least `period_s / limit` (x SPACING_MARGIN) apart, across threads: so at most `limit` in
    any `period_s` window."""

    def __init__(self, limit: int, period_s: float, *, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep):
        if limit < 1 or not period_s > 0:
            raise ValueError(f"rate limit {limit} per {period_s} s: both must be positive")
        self.limit, self.period_s = limit, period_s
        self.interval_s = period_s / limit * SPACING_MARGIN
        self.clock, self.sleep = clock, sleep
        self.next_start = float("-inf")
        self.paused_until = float("-inf")
        self.lock = threading.Lock()

    def acquire(self) -> float:
        """Block until a request may start; return its start time (on `clock`).

        Waiters queue on the lock, so they start in arrival order; the one holding it sleeps until its
        slot (and past any pause).
        """
        with self.lock:
            while True:
                now = self.clock()
                wait = max(self.next_start, self.paused_until) - now
                if wait <= 0:
                    self.next_start = now + self.interval_s
                    return now
                self.sleep(wait)

    def pause(self, seconds: float) -> None:
        """No request starts for `seconds` from now (a later pause extends it, a shorter one does not)."""
        with self.lock:
            self.paused_until = max(self.paused_until, self.clock() + seconds)


class RateLimitFuse:
    """Counts 429s; each one gets a delay, and the run stops before `max_429s` land within `window_s`."""

    def __init__(self, max_429s: int, window_s: float, *, clock: Callable[[], float] = time.monotonic):
        self.max_429s, self.window_s, self.clock = max_429s, window_s, clock
        self.times: collections.deque[float] = collections.deque()
        self.lock = threading.Lock()

    def record(self, *, retry_after_s: float | None, attempt: int, what: str) -> float:
        """Count one 429 for `what` (its URL or endpoint); return how long to wait before retrying.

        The server's Retry-After wins (capped); otherwise the documented 2/4/8/16/32 s by `attempt`
        (the number of 429s this request has had before). Raises RateLimitedError once `max_429s` 429s
        fall within `window_s`: Bright Data blocks an IP at 25 within 5 minutes.
        """
        with self.lock:
            now = self.clock()
            self.times.append(now)
            while self.times and self.times[0] <= now - self.window_s:
                self.times.popleft()
            if len(self.times) >= self.max_429s:
                raise RateLimitedError(
                    f"{len(self.times)} rate-limit replies (HTTP 429) within {self.window_s:g} s, the last"
                    " for "
                    f"{what}: stopping before the provider blocks this IP (25 in 5 minutes). Everything "
                    "fetched so far is kept; lower the rate limit and run again"
                )
        if retry_after_s is not None:
            return min(retry_after_s, MAX_RETRY_AFTER_S)
        return BACKOFF_429_S[min(attempt, len(BACKOFF_429_S) - 1)]
